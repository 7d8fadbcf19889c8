"""The world's nine regions (the 3x3 grid a region readout reads) and kinds the readout cannot name.

A region readout (MiniGPT4Config.proj_words with a grid vision side) names the object group in each region. Every
test scene holds a kind held out of training: the readout says "thing" there, and a model trained with names randomly
dropped to "thing" while its answers still named the object learned to guess a name for every "thing" (session 27:
118 of the 127 objects a candidate invented on 120 test images stood on a "thing" region). `unname_answers` makes
the drop and the answer agree: it picks kinds of an image to be unnamed, rewrites the answers' mentions of them to
"thing(s)" and records the regions, which the model then reads as the unknown word (TrainConfig.word_dropout_to).
"""
from __future__ import annotations

import random
import re
from functools import lru_cache

from .textgen import NUMBER_WORDS, POSITION_NAMES
from .vocab import _mention_regex, _pluralize, is_object_use, mention_table, objects

# a count > 1, or a single thing, before a word (up to two adjectives between): "two small sheep", "a sheep"
MANY = re.compile(r"\b([2-9]|\d\d+|" + "|".join(NUMBER_WORDS[2:]) + r")\s+([a-z]+\s+){0,2}$")
ONE = re.compile(r"\b(a|an|one|1)\s+([a-z]+\s+){0,2}$")
UNNAMED_KEY = "unnamed"  # a LLaVA record's field: region indices (0-8, reading order) read as the unknown word


def region_groups(truth: dict) -> list[dict | None]:
    """The object group in each of the world's nine regions (reading order), None where empty. A scene places one
    group per region; a dish scatters its drawn-as-emoji ingredients, so a region holds the ingredient with the most
    pieces whose centre falls in it, counted there (no size or colour: the world gives ingredients neither)."""
    if truth.get("kind") == "dish":
        size, cells = truth["size"], [dict() for _ in POSITION_NAMES]
        for ing in truth["ingredients"]:
            for x0, y0, x1, y1 in ing.get("bboxes", []):
                col, row = (min(2, int(3 * (v0 + v1) / 2 / size)) for v0, v1 in ((x0, x1), (y0, y1)))
                here = cells[3 * max(row, 0) + max(col, 0)]
                here[ing["name"]] = here.get(ing["name"], 0) + 1
        return [{"name": max(c, key=c.get), "count": max(c.values())} if c else None for c in cells]
    at = {o["position"]: o for o in truth.get("objects", []) if o.get("position")}
    return [at.get(p) for p in POSITION_NAMES]


@lru_cache(maxsize=None)
def _number_forms() -> tuple[frozenset[str], frozenset[str]]:
    """Object surface forms that name one (names, synonyms, "head of broccoli") and that name many; "sheep" is both."""
    from .textgen import COUNTED
    one = {f.lower() for o in objects() for f in (o.name, *o.synonyms)}
    many = {o.plural.lower() for o in objects()} | {_pluralize(f.lower()) for o in objects() for f in o.synonyms}
    return frozenset(one | {a for a, _ in COUNTED.values()}), frozenset(many | {b for _, b in COUNTED.values()})


def _is_plural(form: str, before: str) -> bool:
    if MANY.search(before):
        return True
    if ONE.search(before):
        return False
    one, many = _number_forms()
    return form in many and (form not in one or form.endswith("s"))  # "sheep" one, "blueberries" many


def unname_text(text: str, names: set[str], word: str = "thing") -> str:
    """`text` with every mention of `names` (singular, plural, synonyms; not inside quotes) as `word` or its plural;
    "an" before it becomes "a", a capital stays."""
    if not names:
        return text
    table = mention_table()
    masked = re.sub(r'"[^"]*"', lambda m: " " * len(m.group()), text.lower())  # same length: spans line up
    out, last = [], 0
    for m in _mention_regex().finditer(masked):
        if not table[m.group(1)] & names or not is_object_use(masked, m.start(1), m.end(1)):
            continue
        new = _pluralize(word) if _is_plural(m.group(1), masked[:m.start()]) else word  # "two sheep": "two things"
        if text[m.start()].isupper():
            new = new[0].upper() + new[1:]
        before = re.sub(r"\b([Aa])n(\s+)$", r"\1\2", text[last:m.start()])
        out += [before, new]
        last = m.end()
    return "".join(out + [text[last:]])


UNNAME_TASKS = ("describe", "alt-text", "qa")  # what the eval scores objects in; a recipe may guess from its dish


def unname_answers(answers: list[str], truth: dict, rng: random.Random, share: float,
                   word: str = "thing", always: frozenset[str] = frozenset()) -> tuple[list[str], list[int]]:
    """Each emoji kind of the image unnamed with probability `share`, and the kinds in `always` in every image (stand-ins
    for held-out kinds: a name the readout never reads): `answers` with `word` for them, and the regions
    (reading order) that show them. Shapes and signs keep their names: held-out kinds are emoji; a dish's ingredient
    that no region is mostly of keeps its name (no region would read it)."""
    groups = region_groups(truth)
    emoji = {o["name"] for o in truth.get("objects", []) if o.get("type") == "object"}
    emoji |= {i["name"] for i in truth.get("ingredients", [])}
    kinds = sorted({g["name"] for g in groups if g and g["name"] in emoji})
    gone = {k for k in kinds if rng.random() < share or k in always}
    return [unname_text(a, gone, word) for a in answers], [i for i, g in enumerate(groups) if g and g["name"] in gone]


# Nouns that no world kind is called and no name holds (the tests check the world's mention table): a question about
# an unnamed kind asked with one of these cannot be answered from what the kind looks like, only from its "thing".
STAND_INS = tuple("""kettle pillow stapler mirror helmet blanket anchor pitcher saddle shovel spatula stool
suitcase teapot thimble toaster tripod vase whistle wheelbarrow windmill yoyo zipper harp funnel goblet hammock ladle
mitten needle pebble rake ribbon seesaw spoon thermos turban tuba bagpipe bench birdcage bookcase cabinet
carpet chandelier cushion dagger doormat dumbbell easel faucet fence flask garland gong hairbrush jug kayak lampshade
locket mailbox mop napkin oar ornament parasol pendant pinwheel quilt robe satchel sickle skillet slipper
stethoscope stopwatch tambourine tiara towel tray trowel tumbler ukulele valve vest wagon walrus whisk wreath
xylophone""".split())
YES_NO = ("yes", "no")


def stand_in_questions(turns: list[dict], kinds: list[str], rng: random.Random, share: float) -> list[dict]:
    """`turns` where each of `kinds` (unnamed in the record), with probability `share`, is asked about by a stand-in
    noun (STAND_INS) instead of its name, and its yes/no questions are gone (whether a never-seen noun is in the
    picture is not known from a "thing"). Why: asked by its own name, an unnamed kind of the training world is still
    found by what its region looks like; a held-out kind is not, and the trained model answered "Where is the waffle?"
    as for an absent object ("bottom right") while answering "Where is the thing?" right (session 31; 200 steps of
    the stage-2 mix with half the unnamed kinds asked this way did not change that: MODEL_CARD "Session 31")."""
    roles = [t.get("from") for t in turns]
    if len(turns) % 2 or roles != ["human", "gpt"] * (len(turns) // 2):
        return turns  # only question-answer pairs are rewritten
    for kind in kinds:
        if rng.random() >= share:
            continue
        noun, kept, image = rng.choice(STAND_INS), [], ""
        for i in range(0, len(turns) - 1, 2):
            ask, reply = turns[i], turns[i + 1]
            if "<image>" in ask["value"]:
                image = "<image>\n"
            text = ask["value"].replace("<image>\n", "").replace("<image>", "")
            asked = unname_text(text, {kind}, noun)
            if asked != text:
                if reply["value"].strip().lower().rstrip(".") in YES_NO:
                    continue  # a yes/no question about the stand-in: dropped with its answer
                if noun[0] in "aeiou":
                    asked = re.sub(rf"\b([Aa]) (?={noun})", r"\1n ", asked)
            kept += [dict(ask, value=(image if not kept else "") + asked), reply]
        if kept:  # a record of nothing but yes/no questions about the kind stays as it was
            turns = kept
    return turns


def unname_record(record: dict, truth: dict, rng: random.Random, share: float, word: str = "thing",
                  always: frozenset[str] = frozenset(), stand_in: float = 0.0) -> dict:
    """A LLaVA record unnamed (unname_answers): its answers (gpt turns) say `word`, its questions keep the name (as a
    user asks about a held-out kind by name) or, with probability `stand_in` per unnamed kind, a stand-in noun
    (stand_in_questions), record["unnamed"] lists the regions."""
    turns = record.get("conversations", [])
    mine = [i for i, t in enumerate(turns) if t.get("from") in ("gpt", "assistant")]
    answers, regions = unname_answers([turns[i]["value"] for i in mine], truth, rng, share, word, always)
    turns = list(turns)
    for i, a in zip(mine, answers):
        turns[i] = dict(turns[i], value=a)
    if stand_in > 0 and regions:
        groups = region_groups(truth)
        turns = stand_in_questions(turns, sorted({groups[r]["name"] for r in regions}),
                                   random.Random(f"stand-in:{record.get('id')}"), stand_in)  # unnaming draws unchanged
    return dict(record, conversations=turns, **{UNNAMED_KEY: regions})


def _truth_by_id(truth_path: str) -> dict[str, dict]:
    import json
    return {row["image_id"]: row["truth"] for row in map(json.loads, open(truth_path, encoding="utf-8"))}


def _missing(where: str, key, truth_path: str) -> ValueError:
    return ValueError(f"{where}: {key!r} is not an image of {truth_path}: give the data.jsonl of the export these "
                      f"records were made from")


def unname_file(records_path: str, truth_path: str, out: str, share: float, seed: int = 0,
                word: str = "thing", tasks: tuple[str, ...] = UNNAME_TASKS,
                always: frozenset[str] = frozenset(), stand_in: float = 0.0) -> dict:
    """`records_path` with kinds unnamed, each record joined by its id to its image's truth in a world export's
    data.jsonl (a record with none there is refused). A LLaVA JSONL (instructions, drills): the records of `tasks`
    (the others are copied without the field, so TrainConfig.word_dropout still drops their words at random), image
    paths rewritten relative to `out`. A cc_sbu_align folder (`minigpt4 curate export`'s descriptions): every caption,
    `out` a folder with its filter_cap.json and a link to the images. `always`: kinds unnamed in every image.
    `stand_in`: the share of unnamed kinds whose questions ask by a stand-in noun (stand_in_questions; qa records)."""
    import json
    import os

    from minigpt4.utils import atomic_write_json, atomic_write_text
    truth, rng = _truth_by_id(truth_path), random.Random(seed)
    counts = {"records": 0, "with_unnamed": 0, "unnamed_regions": 0}

    def count(regions):
        counts["records"] += 1
        counts["with_unnamed"] += bool(regions)
        counts["unnamed_regions"] += len(regions or ())

    if os.path.isdir(records_path):
        anns = json.load(open(os.path.join(records_path, "filter_cap.json"), encoding="utf-8"))["annotations"]
        for ann in anns:
            if ann.get("image_id") not in truth:
                raise _missing(os.path.join(records_path, "filter_cap.json"), ann.get("image_id"), truth_path)
            (ann["caption"],), ann[UNNAMED_KEY] = unname_answers([ann["caption"]], truth[ann["image_id"]], rng,
                                                                 share, word, always)
            count(ann[UNNAMED_KEY])
        os.makedirs(out, exist_ok=True)
        link = os.path.join(out, "image")
        if not os.path.lexists(link):
            os.symlink(os.path.relpath(os.path.join(os.path.abspath(records_path), "image"), os.path.abspath(out)),
                       link)
        atomic_write_json(os.path.join(out, "filter_cap.json"), {"annotations": anns})
        return counts
    src, dst = os.path.dirname(os.path.abspath(records_path)), os.path.dirname(os.path.abspath(out))
    lines = []
    for n, line in enumerate(open(records_path, encoding="utf-8"), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("id") not in truth:
            raise _missing(f"{records_path}:{n}", rec.get("id"), truth_path)
        if rec.get("task") in tasks:
            rec = unname_record(rec, truth[rec["id"]], rng, share, word, always,
                                stand_in if rec.get("task") == "qa" else 0.0)
        if isinstance(rec.get("image"), str) and src != dst:
            rec["image"] = os.path.relpath(os.path.join(src, rec["image"]), dst)
        count(rec.get(UNNAMED_KEY))
        lines.append(json.dumps(rec, ensure_ascii=False))
    atomic_write_text(out, "\n".join(lines) + "\n")
    return counts
