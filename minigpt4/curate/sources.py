"""Where the images to describe come from: a folder, a JSONL list, or webdataset tar shards.

Each source yields `(image_id, source_ref)`; `source_ref` is a small JSON-able dict that is
stored with the item, so a resumed run (or the review page) can find the image again without
re-reading the whole source. `read_image_bytes(ref)` turns it back into the file's bytes.
"""
from __future__ import annotations

import glob
import hashlib
import json
import re
import tarfile
from pathlib import Path
from typing import Any, Iterator

from minigpt4.utils import read_jsonl as utils_read_jsonl

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
JSONL_IMAGE_KEYS = ("image", "image_path", "path", "file", "filename")
JSONL_ID_KEYS = ("image_id", "id", "key", "__key__")


def safe_id(name: str) -> str:
    """An image_id usable as a file name (`image/{image_id}.jpg` in cc_sbu_align)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return s or hashlib.sha1(name.encode()).hexdigest()[:12]


def expand_braces(pattern: str) -> list[str]:
    """webdataset-style `shard-{000..012}.tar` -> the 13 names (zero padding kept)."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo)
    out = []
    for n in range(int(lo), int(hi) + 1):
        out.extend(expand_braces(pattern[: m.start()] + str(n).zfill(width) + pattern[m.end():]))
    return out


def _unique(image_id: str, seen: set[str], salt: str) -> str:
    if image_id in seen:
        image_id = f"{image_id}_{hashlib.sha1(salt.encode()).hexdigest()[:8]}"
    seen.add(image_id)
    return image_id


def iter_folder(root: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ValueError(f"folder '{root}' holds no images ({', '.join(IMAGE_EXTS)}); point --images at "
                         "a folder of images, a .jsonl list or webdataset .tar shards")
    seen: set[str] = set()
    for p in files:
        rel = p.relative_to(root)
        yield _unique(safe_id(str(rel.with_suffix("")).replace("/", "_")), seen, str(rel)), \
            {"kind": "file", "path": str(p.resolve())}


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) per non-empty line; a broken line fails naming file:line."""
    return utils_read_jsonl(path, 'each line must be an object like {"image": "path/to/img.jpg"}')


def iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Lines like {"image": "imgs/1.jpg", "image_id": "1"}; relative paths are relative to the file."""
    seen: set[str] = set()
    for lineno, rec in read_jsonl(path):
        key = next((k for k in JSONL_IMAGE_KEYS if isinstance(rec, dict) and k in rec), None)
        if key is None:
            raise ValueError(f"{path}:{lineno} names no image; give it one of the keys {JSONL_IMAGE_KEYS}")
        img = Path(rec[key])
        if not img.is_absolute():
            img = path.parent / img
        raw_id = next((str(rec[k]) for k in JSONL_ID_KEYS if k in rec), img.stem)
        yield _unique(safe_id(raw_id), seen, f"{lineno}"), {"kind": "file", "path": str(img.resolve())}


def iter_shards(paths: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """webdataset tar shards: members grouped by key (basename up to the first dot); the first
    image member of each key is the image. Read with the standard library, no extra package."""
    seen: set[str] = set()
    for shard in paths:
        if not Path(shard).is_file():
            raise FileNotFoundError(f"shard '{shard}' does not exist; check the --images pattern")
        try:
            with tarfile.open(shard) as tar:
                keyed: dict[str, tarfile.TarInfo] = {}
                for m in tar:
                    if not m.isfile():
                        continue
                    d, base = m.name.rsplit("/", 1) if "/" in m.name else ("", m.name)
                    key, _, ext = base.partition(".")
                    if "." + ext.lower().rsplit(".", 1)[-1] in IMAGE_EXTS:
                        keyed.setdefault(f"{d}/{key}" if d else key, m)
        except tarfile.TarError as e:
            raise ValueError(f"shard '{shard}' is not a readable tar file ({e}); webdataset shards are "
                             "plain .tar files") from None
        for key, member in keyed.items():
            # Byte offset and size: reading one image later is one seek, not a scan of the shard.
            yield _unique(safe_id(key.replace("/", "_")), seen, f"{shard}#{member.name}"), \
                {"kind": "tar", "path": str(Path(shard).resolve()), "member": member.name,
                 "offset": member.offset_data, "size": member.size}


def iter_source(spec: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Dispatch on what --images names: a folder, a .jsonl file, or tar shard(s)/patterns."""
    p = Path(spec)
    if p.is_dir():
        return iter_folder(p)
    if p.suffix == ".jsonl" or p.suffix == ".json":
        if not p.is_file():
            raise FileNotFoundError(f"image list '{spec}' does not exist")
        return iter_jsonl(p)
    if ".tar" in spec:
        names = [n for pat in expand_braces(spec) for n in (sorted(glob.glob(pat)) or [pat])]
        return iter_shards(names)
    raise ValueError(f"--images '{spec}' is not a folder, a .jsonl list, or .tar shards "
                     "(e.g. 'shards/cc-{000..009}.tar')")


def read_image_bytes(ref: dict[str, Any]) -> bytes:
    """The bytes of the image a source ref points at (raises OSError/KeyError when it is gone)."""
    if ref["kind"] == "file":
        return Path(ref["path"]).read_bytes()
    if ref["kind"] == "tar":
        if ref.get("offset") is not None and not ref["path"].endswith((".gz", ".bz2", ".xz")):
            with open(ref["path"], "rb") as f:
                f.seek(ref["offset"])
                return f.read(ref["size"])
        with tarfile.open(ref["path"]) as tar:
            f = tar.extractfile(ref["member"])
            if f is None:
                raise KeyError(f"{ref['member']} is not a file in {ref['path']}")
            return f.read()
    raise ValueError(f"unknown source kind {ref['kind']!r}")
