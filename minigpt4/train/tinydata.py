"""Tiny real datasets in every supported format, for the tiny recipes, tests and benchmarks.

Images are coloured shapes on coloured backgrounds with a caption that says what is drawn
("A Red circle on a blue background."), so a model can actually learn something from them.
`make_tiny_datasets(root)` writes:
  shards/tiny-000000.tar ...   webdataset shards (jpg + txt), the stage-1 format
  folder/captions.jsonl + images
  cc_sbu_align/filter_cap.json + image/{id}.jpg
  llava/conversations.json + images (multi-turn; some samples with two images)
Optionally `bad=N` corrupt images are mixed in (truncated JPEGs, text files named .jpg, a missing
file) to exercise skipping.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (240, 220, 40),
          "purple": (150, 60, 190), "orange": (250, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")


def tiny_image(i: int, size: int = 56) -> tuple[Image.Image, str]:
    rnd = random.Random(i)
    fg, bg = rnd.sample(sorted(COLORS), 2)
    shape = rnd.choice(SHAPES)
    img = Image.new("RGB", (size, size), COLORS[bg])
    d = ImageDraw.Draw(img)
    m = rnd.randint(4, size // 4)
    box = (m, m, size - m, size - m)
    if shape == "circle":
        d.ellipse(box, fill=COLORS[fg])
    elif shape == "square":
        d.rectangle(box, fill=COLORS[fg])
    else:
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=COLORS[fg])
    return img, f"A {fg.capitalize()} {shape} on a {bg} background."


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


BAD_IMAGES = [b"", b"this is not an image", None]  # None: truncated JPEG


def _bad_bytes(k: int) -> bytes:
    b = BAD_IMAGES[k % len(BAD_IMAGES)]
    return jpeg(tiny_image(999 + k)[0])[:60] if b is None else b


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_shards(out: Path, n: int, per_shard: int = 8, bad: int = 0, start: int = 0, size: int = 56) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    bad_at = set(range(3, n, max(1, n // bad))[:bad]) if bad else set()
    paths = []
    for s in range(0, n, per_shard):
        path = out / f"tiny-{s // per_shard:06d}.tar"
        with tarfile.open(path, "w") as tf:
            for i in range(s, min(n, s + per_shard)):
                img, cap = tiny_image(start + i, size)
                _add(tf, f"{i:06d}.jpg", _bad_bytes(i) if i in bad_at else jpeg(img))
                _add(tf, f"{i:06d}.txt", cap.encode())
        paths.append(path)
    return paths


def write_folder(out: Path, n: int, bad: int = 0, start: int = 1000) -> Path:
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        img, cap = tiny_image(start + i)
        name = f"images/{i:05d}.jpg"
        if i < bad:
            data = _bad_bytes(i)
            if data is not None and i % 3 != 2:
                (out / name).write_bytes(data)
        else:
            (out / name).write_bytes(jpeg(img))
        lines.append(json.dumps({"image": name, "caption": cap}))
    (out / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return out / "captions.jsonl"


def write_cc_sbu_align(out: Path, n: int, start: int = 2000) -> Path:
    (out / "image").mkdir(parents=True, exist_ok=True)
    anns = []
    for i in range(n):
        img, cap = tiny_image(start + i)
        (out / "image" / f"{i}.jpg").write_bytes(jpeg(img))
        shape = cap.split()[2]
        anns.append({"image_id": str(i), "caption": f"The image shows {cap[2:].lower()} The {shape} "
                                                   f"is in the middle and fills most of the picture."})
    (out / "filter_cap.json").write_text(json.dumps({"annotations": anns}, indent=1))
    return out


def write_llava(out: Path, n: int, start: int = 3000) -> Path:
    (out / "images").mkdir(parents=True, exist_ok=True)
    convs = []
    for i in range(n):
        img, cap = tiny_image(start + i)
        (out / "images" / f"{i}.jpg").write_bytes(jpeg(img))
        images = [f"images/{i}.jpg"]
        turns = [{"from": "human", "value": "<image>\nWhat is in the picture?"},
                 {"from": "gpt", "value": cap},
                 {"from": "human", "value": "What colour is the background?"},
                 {"from": "gpt", "value": cap.rstrip(".").split()[-2] + "."}]
        if i % 3 == 0:  # a two-image conversation
            img2, cap2 = tiny_image(start + 500 + i)
            (out / "images" / f"{i}b.jpg").write_bytes(jpeg(img2))
            images.append(f"images/{i}b.jpg")
            turns += [{"from": "human", "value": "<image>\nAnd this one?"}, {"from": "gpt", "value": cap2}]
        convs.append({"id": f"conv{i}", "image": images if len(images) > 1 else images[0], "conversations": turns})
    (out / "conversations.json").write_text(json.dumps(convs, indent=1))
    return out / "conversations.json"


def make_tiny_datasets(root: str | Path, n: int = 32, bad: int = 0) -> dict[str, Path]:
    root = Path(root)
    return {"shards": write_shards(root / "shards", n, bad=bad)[0].parent,
            "folder": write_folder(root / "folder", n, bad=bad),
            "cc_sbu_align": write_cc_sbu_align(root / "cc_sbu_align", n),
            "llava": write_llava(root / "llava", max(4, n // 4))}


if __name__ == "__main__":  # python -m minigpt4.train.tinydata OUT_DIR
    import sys
    print(make_tiny_datasets(sys.argv[1] if len(sys.argv) > 1 else "recipes/data/tiny"))
