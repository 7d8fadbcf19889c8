"""Streaming reader for webdataset tar shards (the format the original stage 1 used for LAION,
CC and SBU), written on the standard `tarfile` module so no extra package is needed.

A shard holds samples as consecutive tar members sharing a key: `000123.jpg` + `000123.txt`
(or `.json` with a "caption"/"text" field). Members are grouped by key as the tar is walked;
image bytes are read only when a sample is actually used, so a rank can walk past the samples
of other ranks without decoding them, and nothing but the current sample is held in memory.
"""
from __future__ import annotations

import glob
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")
TEXT_EXTS = ("txt", "caption", "json")


@dataclass
class ShardSample:
    key: str
    shard: str
    read_image: Callable[[], bytes] | None  # None: the sample has no image member
    caption: str | None


def expand_shards(spec: str | Path | list, base: Path | None = None) -> list[Path]:
    """Shard list from a directory, a glob, brace ranges (`cc-{000..009}.tar`), or a list of these."""
    if isinstance(spec, (list, tuple)):
        return [p for s in spec for p in expand_shards(s, base)]
    text = str(spec)
    m = re.search(r"\{(\d+)\.\.(\d+)\}", text)
    if m:
        lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
        return [p for i in range(lo, hi + 1)
                for p in expand_shards(text[: m.start()] + str(i).zfill(width) + text[m.end():], base)]
    path = Path(text)
    if base is not None and not path.is_absolute():
        path = base / path
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
    elif any(ch in text for ch in "*?["):
        shards = sorted(Path(p) for p in glob.glob(str(path)))
    else:
        shards = [path]
    missing = [str(p) for p in shards if not p.exists()]
    if missing:
        raise FileNotFoundError(f"webdataset shard(s) not found: {missing[:3]}; check the data path")
    if not shards:
        raise FileNotFoundError(f"no .tar shards matched '{text}'; check the data path")
    return shards


def _split_key(name: str) -> tuple[str, str]:
    # webdataset convention: the key is everything before the FIRST dot of the basename.
    directory, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{directory}/{key}" if directory else key), ext.lower()


def _caption(raw: bytes, ext: str) -> str | None:
    text = raw.decode("utf-8", errors="replace")
    if ext == "json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return None
        return obj.get("caption") or obj.get("text") if isinstance(obj, dict) else None
    return text


def _read_member(tf: tarfile.TarFile, info: tarfile.TarInfo, path: Path) -> bytes:
    try:
        return tf.extractfile(info).read()
    except (OSError, tarfile.TarError, EOFError) as e:
        from minigpt4.data.image import ImageError  # a bad sample, skipped and counted by the trainer
        raise ImageError(f"'{info.name}' in shard '{path}' cannot be read ({e}); the shard is damaged") from None


def iter_shard(path: Path) -> Iterator[ShardSample]:
    """Samples of one shard in tar order. A truncated shard ends early instead of crashing."""
    tf = tarfile.open(path, "r")  # seekable: extractfile() works after the walk moved on

    def flush(key, members):
        image = next((members[e] for e in IMAGE_EXTS if e in members), None)
        text = next(((members[e], e) for e in TEXT_EXTS if e in members), None)
        caption = _caption(tf.extractfile(text[0]).read(), text[1]) if text else None
        reader = (lambda info=image: _read_member(tf, info, path)) if image is not None else None
        return ShardSample(key=key, shard=str(path), read_image=reader, caption=caption)

    key, members = None, {}
    try:
        for info in tf:
            if not info.isfile():
                continue
            k, ext = _split_key(info.name)
            if k != key and members:
                yield flush(key, members)
                members = {}
            key = k
            members[ext] = info
    except (tarfile.ReadError, EOFError, OSError):
        pass  # truncated shard: keep what was read, the rest is lost (counted as fewer samples)
    if members:
        yield flush(key, members)
