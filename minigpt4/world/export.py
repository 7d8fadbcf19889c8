"""Write a dataset folder: images + JSONL with every text, and a cc_sbu_align-style copy."""

from __future__ import annotations

import io
import json
import os

from minigpt4.utils import atomic_write_bytes, read_jsonl

from .core import KINDS, mixture
from .instruct import conversation, qa_drill


def export(out_dir: str, n: int, split: str = "train", seed: int = 0, kinds=KINDS, weights=None,
           size: int = 224, image_format: str = "png", caption_field: str = "description",
           progress: bool = False) -> dict:
    """Generate ``n`` samples and write:

    - ``{out_dir}/images/{image_id}.{png|jpg}`` and ``{out_dir}/data.jsonl`` (one JSON object per
      image: image path, caption, description, qa, alt_text, recipe, html, prompt, truth);
    - ``{out_dir}/cc_sbu_align/image/{image_id}.jpg`` + ``filter_cap.json`` =
      {"annotations": [{"image_id", "caption"}]} with ``caption_field`` as the caption
      (the stage-2 dataset layout of the original MiniGPT-4);
    - ``{out_dir}/instructions.jsonl``: one LLaVA conversation per image for the product's tasks
      (`minigpt4.world.instruct`: questions, description, alt text, recipe, HTML, prompt);
    - ``{out_dir}/qa.jsonl``: one multi-turn conversation per image with up to 12 of its questions.

    Every file is written atomically. Returns {"n", "jsonl", "filter_cap", "instructions", "qa"}."""
    ext = {"png": "png", "jpg": "jpg", "jpeg": "jpg"}[image_format.lower()]
    img_dir = os.path.join(out_dir, "images")
    cc_dir = os.path.join(out_dir, "cc_sbu_align", "image")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(cc_dir, exist_ok=True)
    it = mixture(seed, n, split, kinds, weights, size)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, total=n, desc=f"world export ({split})", unit="img")
    lines, anns, convs, drills = [], [], [], []
    for s in it:
        buf = io.BytesIO()
        rel = f"images/{s.image_id}.{ext}"
        if ext == "png":
            s.image.save(buf, format="PNG")
        else:
            s.image.save(buf, format="JPEG", quality=92)
        atomic_write_bytes(os.path.join(out_dir, rel), buf.getvalue())
        jb = io.BytesIO()
        s.image.save(jb, format="JPEG", quality=92)
        atomic_write_bytes(os.path.join(cc_dir, f"{s.image_id}.jpg"), jb.getvalue())
        rec = s.texts()
        rec["image"] = rel
        lines.append(json.dumps(rec, ensure_ascii=False, sort_keys=True))
        cap = getattr(s, caption_field) or s.description
        anns.append({"image_id": s.image_id, "caption": cap})
        convs.append(json.dumps(conversation(s, rel, seed), ensure_ascii=False))
        drill = qa_drill(s.image_id, rec["qa"], rel, seed)
        if drill:
            drills.append(json.dumps(drill, ensure_ascii=False))
    jsonl = write_jsonl(os.path.join(out_dir, "data.jsonl"), lines)
    fc = os.path.join(out_dir, "cc_sbu_align", "filter_cap.json")
    atomic_write_bytes(fc, json.dumps({"annotations": anns}, ensure_ascii=False, indent=1).encode("utf-8"))
    return {"n": len(lines), "jsonl": jsonl, "filter_cap": fc,
            "instructions": write_jsonl(os.path.join(out_dir, "instructions.jsonl"), convs),
            "qa": write_jsonl(os.path.join(out_dir, "qa.jsonl"), drills)}


def write_jsonl(path: str, rows: list[str]) -> str:
    """Already-serialised JSON lines, written atomically; returns the path."""
    atomic_write_bytes(path, ("\n".join(rows) + "\n").encode("utf-8"))
    return path


def drills(data_jsonl: str, out: str, types=None, kinds=None, max_questions: int = 12) -> int:
    """Question drills from an existing export, without rendering again: one `qa_drill` per image
    of `kinds` in `data_jsonl` (its images stay where they are: paths are made relative to `out`'s
    folder), keeping only question `types`; each record's own seed orders its questions, so the
    file is reproducible. Written atomically; returns the number of drills."""
    base, dest = os.path.dirname(os.path.abspath(data_jsonl)), os.path.dirname(os.path.abspath(out))
    rows = []
    for _, rec in read_jsonl(data_jsonl, "pass the data.jsonl that `python -m minigpt4.world export` wrote"):
        if kinds and rec.get("kind") not in kinds:
            continue
        image = os.path.relpath(os.path.join(base, rec["image"]), dest)
        drill = qa_drill(rec["image_id"], rec.get("qa") or [], image, rec["seed"], max_questions,
                         set(types) if types else None)
        if drill:
            rows.append(json.dumps(drill, ensure_ascii=False))
    if not rows:
        raise ValueError(f"no image in {data_jsonl} has questions of types {sorted(types or [])} "
                         f"(kinds {sorted(kinds or []) or 'all'}); check --types and --kinds")
    write_jsonl(out, rows)
    return len(rows)
