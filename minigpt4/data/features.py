"""Frozen-feature cache: when the vision side (ViT, ln_vision, Q-Former) is frozen, its output
for an image never changes, so it is computed once and training reads it from disk.

Layout under `root/<fingerprint>/`:
  shard_00000.npy ...  (rows, num_image_tokens, feature_dim) arrays, read memory-mapped
  index.sqlite         sha256(image bytes) -> (shard, row), or the reason the image is bad
  meta.json            what the fingerprint covers
The fingerprint hashes the frozen weights and the preprocessing (size, mean, std, resize), so
changing the encoder or the preprocessing selects a fresh cache instead of stale features.
Images are keyed by content, so the same image in two datasets is encoded once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

from minigpt4.data.image import ImageError, load_image
from minigpt4.utils import atomic_write_json

PREPROCESS_VERSION = "resize-bicubic-v1"  # bump when data.image.preprocess changes behaviour


def vision_fingerprint(model) -> str:
    h = hashlib.sha256()
    cfg = model.cfg
    record = {"size": cfg.input_size, "mean": list(cfg.image_mean), "std": list(cfg.image_std),
              "concat": cfg.concat_tokens, "pre": PREPROCESS_VERSION}
    if cfg.word_vision and cfg.word_side is not None:  # the word side resizes and renormalises for itself
        record["word_side"] = dataclasses.asdict(cfg.word_side)
    h.update(json.dumps(record).encode())
    modules = {"visual_encoder": model.visual_encoder, "ln_vision": model.ln_vision}
    if model.qformer is not None:
        modules["qformer"] = model.qformer
    if getattr(model, "word_vision", None) is not None:  # its outputs are cached beside the main side's
        modules["word_vision"] = model.word_vision
    for mname, mod in modules.items():
        for name, t in sorted(mod.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{mname}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


class FeatureCache:
    def __init__(self, root: str | Path, fingerprint: str, shard_rows: int = 4096, dtype: str = "float32"):
        self.dir = Path(root) / fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fingerprint, self.shard_rows, self.dtype = fingerprint, shard_rows, np.dtype(dtype)
        self.db = sqlite3.connect(self.dir / "index.sqlite", timeout=60)
        self.db.execute("CREATE TABLE IF NOT EXISTS feats (sha TEXT PRIMARY KEY, shard INT, row INT, error TEXT)")
        self.db.commit()
        self._shards: dict[int, np.ndarray] = {}

    @classmethod
    def for_model(cls, root, model, **kw) -> "FeatureCache":
        return cls(root, vision_fingerprint(model), **kw)

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM feats").fetchone()[0]

    # --- lookup ------------------------------------------------------------------------------
    def _shard(self, i: int) -> np.ndarray:
        if i not in self._shards:
            self._shards[i] = np.load(self.dir / f"shard_{i:05d}.npy", mmap_mode="r")
        return self._shards[i]

    def lookup(self, sha: str) -> np.ndarray | None:
        """Features of the image with this content hash; None if not cached; ImageError if the
        image was found bad when the cache was built."""
        row = self.db.execute("SELECT shard, row, error FROM feats WHERE sha=?", (sha,)).fetchone()
        if row is None:
            return None
        if row[2] is not None:
            raise ImageError(row[2])
        return self._shard(row[0])[row[1]]

    def rows(self, n: int) -> np.ndarray:
        """Up to n cached feature rows in build order (statistics of the frozen features)."""
        out, i, have = [], 0, 0
        while have < n and (self.dir / f"shard_{i:05d}.npy").exists():
            part = np.asarray(self._shard(i)[: n - have])
            out.append(part)
            have, i = have + len(part), i + 1
        return np.concatenate(out) if out else np.zeros((0,), dtype=self.dtype)

    # --- build -------------------------------------------------------------------------------
    def _next_shard(self) -> int:
        row = self.db.execute("SELECT MAX(shard) FROM feats").fetchone()
        return 0 if row[0] is None else row[0] + 1

    @torch.no_grad()
    def build(self, model, image_readers: Iterable, batch_size: int = 32, total: int | None = None,
              progress: bool = True) -> dict:
        """Encode every image not cached yet. `image_readers` yields callables returning bytes
        (ImageError for unreadable files). Returns counts: new, cached, bad."""
        stats = {"new": 0, "cached": 0, "bad": 0}
        shard_id, rows, buf, shas, pending = self._next_shard(), 0, None, [], []
        seen: set[str] = set()

        def encode(pending):
            nonlocal buf, rows, shard_id
            pixels = model.preprocess([im for _, im in pending])
            feats = model.vision_features(pixels).float().cpu().numpy().astype(self.dtype)
            for (sha, _), f in zip(pending, feats):
                if buf is None:
                    buf = np.zeros((self.shard_rows, *f.shape), dtype=self.dtype)
                buf[rows] = f
                shas.append((sha, rows))
                rows += 1
                if rows == self.shard_rows:
                    flush()

        def flush():
            nonlocal buf, rows, shard_id
            if not shas:
                return
            # Write the shard atomically, then index it: a crash never indexes a missing shard.
            tmp = self.dir / f".shard_{shard_id:05d}.tmp.npy"
            np.save(tmp, buf[:rows])
            tmp.replace(self.dir / f"shard_{shard_id:05d}.npy")
            self.db.executemany("INSERT OR REPLACE INTO feats VALUES (?, ?, ?, NULL)",
                                [(s, shard_id, r) for s, r in shas])
            self.db.commit()
            shas.clear()
            buf, rows, shard_id = None, 0, shard_id + 1

        for read in tqdm(image_readers, total=total, desc="feature cache", unit="img", disable=not progress):
            try:
                data = read()
            except ImageError as e:
                stats["bad"] += 1  # unreadable file: no content to key on; the trainer skips it
                continue
            sha = hashlib.sha256(data).hexdigest()
            if sha in seen or self.db.execute("SELECT 1 FROM feats WHERE sha=?", (sha,)).fetchone():
                stats["cached"] += 1
                continue
            seen.add(sha)
            try:
                pending.append((sha, load_image(data)))
            except ImageError as e:
                self.db.execute("INSERT OR REPLACE INTO feats VALUES (?, NULL, NULL, ?)", (sha, str(e)))
                stats["bad"] += 1
                continue
            stats["new"] += 1
            if len(pending) == batch_size:
                encode(pending)
                pending = []
        if pending:
            encode(pending)
        flush()
        self.db.commit()
        atomic_write_json(self.dir / "meta.json", {"fingerprint": self.fingerprint, "images": len(self),
                                                   "feature_dtype": str(self.dtype)})
        return stats
