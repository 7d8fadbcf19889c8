"""CLI: ``python -m minigpt4.world export --out DIR --n 100 --split train --seed 0``
``python -m minigpt4.world drill DIR/data.jsonl --out DIR/qa-attr.jsonl`` (attribute-question
drills from an export), ``python -m minigpt4.world unname DIR/instructions.jsonl --truth DIR/data.jsonl --out F``
(answers that say "thing" where a region readout will) and ``python -m minigpt4.world sheet --kind scene --out sheet.png`` (a contact sheet)."""

from __future__ import annotations

import argparse
import sys

from .core import KINDS, SPLITS, generate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigpt4.world", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write a dataset folder (images + JSONL + cc_sbu_align)")
    e.add_argument("--out", required=True)
    e.add_argument("--n", type=int, default=100)
    e.add_argument("--split", default="train", choices=SPLITS)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--size", type=int, default=224)
    e.add_argument("--kinds", default=",".join(KINDS), help="comma list of " + ",".join(KINDS))
    e.add_argument("--weights", default=None, help="comma list of floats, one per kind")
    e.add_argument("--format", default="png", choices=["png", "jpg"])
    e.add_argument("--caption-field", default="description",
                   choices=["caption", "description", "alt_text", "recipe", "html", "prompt"])
    d = sub.add_parser("drill", help="question drills (qa.jsonl-style) from an export's data.jsonl, "
                                     "only some question types")
    d.add_argument("data", help="data.jsonl of an export")
    d.add_argument("--out", required=True, help="the JSONL to write (e.g. next to data.jsonl)")
    d.add_argument("--types", default="presence,object,color,count,position,size",
                   help="comma list of question types to keep (default: the eval's attribute types and size: "
                        "without size drills a model answers 'Is the fox small, medium or large?' with 'yes')")
    d.add_argument("--kinds", default="scene", help="comma list of image kinds (default: scene)")
    d.add_argument("--max-questions", type=int, default=12)
    u = sub.add_parser("unname", help="unname some kinds of each record: its answers say 'thing' where the "
                                      "readout will read 'thing' (train data for a region readout)")
    u.add_argument("records", help="LLaVA JSONL of an export (instructions.jsonl, qa-attr.jsonl), or a cc_sbu_align "
                                   "folder of its images' descriptions (minigpt4 curate export); --out a folder then")
    u.add_argument("--truth", required=True, help="the export's data.jsonl (each image's truth)")
    u.add_argument("--out", required=True)
    u.add_argument("--share", type=float, default=0.3, help="probability that a kind of an image is unnamed")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--word", default="thing", help="the readout's unknown word (TrainConfig.word_dropout_to)")
    u.add_argument("--tasks", default="describe,alt-text,qa", help="comma list of the record tasks to unname in")
    u.add_argument("--always", default="", help="comma list of kinds unnamed in every image (stand-ins for held-out "
                                                 "kinds, whose names the readout never reads)")
    u.add_argument("--stand-in", type=float, default=0.0,
                   help="probability that an unnamed kind's questions (qa records) ask by a noun no world kind is "
                        "called, its yes/no questions dropped: teaches that a name the readout cannot read is the "
                        "picture's 'thing' (a held-out kind asked by name)")
    s = sub.add_parser("sheet", help="save a 4x4 contact sheet of one kind")
    s.add_argument("--kind", default="scene", choices=KINDS)
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--split", default="train", choices=SPLITS)
    a = ap.parse_args(argv)
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()]  # a comma list flag
    if a.cmd == "export":
        from .export import export
        kinds = split(a.kinds)
        weights = [float(w) for w in a.weights.split(",")] if a.weights else None
        r = export(a.out, a.n, a.split, a.seed, kinds, weights, a.size, a.format, a.caption_field, progress=True)
        print(f"wrote {r['n']} samples: {r['jsonl']}, {r['filter_cap']} and {r['instructions']}")
    elif a.cmd == "drill":
        from .export import drills
        n = drills(a.data, a.out, split(a.types), split(a.kinds), a.max_questions)
        print(f"wrote {n} drills: {a.out}")
    elif a.cmd == "unname":
        from .regions import unname_file
        for flag, v in (("--share", a.share), ("--stand-in", a.stand_in)):
            if not 0 <= v <= 1:
                ap.error(f"{flag} is a probability in [0, 1], not {v}")
        from .vocab import by_name
        always = frozenset(split(a.always))
        if always - set(by_name()):
            ap.error(f"--always: not object kinds of the world: {', '.join(sorted(always - set(by_name())))} "
                     f"(names as in an export's truth, e.g. 'money bag')")
        c = unname_file(a.records, a.truth, a.out, a.share, a.seed, a.word, tuple(split(a.tasks)), always,
                        a.stand_in)
        print(f"wrote {a.out}: {c['records']} records, {c['with_unnamed']} with {c['unnamed_regions']} unnamed regions")
    else:
        from PIL import Image
        sheet = Image.new("RGB", (224 * 4, 224 * 4))
        for i in range(16):
            sheet.paste(generate(a.kind, a.seed + i, a.split).image, ((i % 4) * 224, (i // 4) * 224))
        sheet.save(a.out)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
