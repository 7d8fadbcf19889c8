"""Checkpoints that survive being killed at any moment.

`output_dir/checkpoints/step_N/` holds
  trainable.safetensors  the trainable parameters only, by name (a few MB, not the 7B LLM)
  state.pt               optimizer, scheduler, RNG (torch/numpy/python), data position, counters
  meta.json              step and recipe, for people
It is written into a hidden temp folder and renamed into place (atomic on POSIX), then the
`latest` pointer file is replaced atomically. A run killed mid-write leaves only a temp folder,
which resume ignores, so the previous checkpoint is always whole.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from minigpt4.config import READOUT_KEYS
from minigpt4.utils import atomic_save_safetensors, atomic_write_json, atomic_write_text
from minigpt4.weights.common import PROJ_KEYS


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, trainable: dict[str, torch.Tensor], state: dict, meta: dict,
                    keep: int = 3) -> Path:
    ckpts = root / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    final = ckpts / f"step_{step}"
    tmp = ckpts / f".step_{step}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    file_meta = {"step": str(step)}
    if meta.get("lora"):  # the adapters' r/alpha travel with them (needed to merge or re-inject)
        file_meta["lora"] = json.dumps(meta["lora"], sort_keys=True)
    for key in READOUT_KEYS:  # the word readout's classes (in order) and slot layout
        if meta.get(key):
            file_meta[key] = meta[key] if isinstance(meta[key], str) else json.dumps(meta[key])
    atomic_save_safetensors(trainable, tmp / "trainable.safetensors", metadata=file_meta)
    torch.save(state, tmp / "state.pt")
    atomic_write_json(tmp / "meta.json", meta)
    _fsync_dir(tmp)
    if final.exists():  # re-running the same step after a resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(ckpts / "latest", final.name)
    _fsync_dir(ckpts)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(root: Path) -> list[Path]:
    """Whole checkpoints (temp folders of interrupted writes excluded), oldest first."""
    ckpts = root / "checkpoints"
    if not ckpts.exists():
        return []
    found = [p for p in ckpts.iterdir() if p.is_dir() and p.name.startswith("step_")
             and (p / "state.pt").exists() and (p / "trainable.safetensors").exists()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "checkpoints" / "latest"
    if pointer.exists():
        p = root / "checkpoints" / pointer.read_text().strip()
        if (p / "state.pt").exists():
            return p
    found = list_checkpoints(root)
    return found[-1] if found else None


def trainable_file(path: str | Path) -> Path:
    """The trainable.safetensors of a checkpoint folder, an output dir (its latest checkpoint) or a file."""
    p = Path(path)
    if p.is_dir():
        if (p / "trainable.safetensors").exists():
            p = p / "trainable.safetensors"
        else:
            ck = latest_checkpoint(p)
            if ck is None:
                raise FileNotFoundError(f"'{path}' holds no checkpoint; give a checkpoints/step_N folder, a "
                                        f"published stage folder (proj.safetensors) or a .safetensors file")
            p = ck / "trainable.safetensors"
    return p


def is_published_stage(path: str | Path) -> bool:
    """A published stage folder (checkpoints/default/stageN, written by `weights.default publish`)."""
    p = Path(path)
    return p.is_dir() and (p / "proj.safetensors").exists() and not (p / "trainable.safetensors").exists()


def trainable_files(path: str | Path) -> list[Path]:
    """Where a run's trainable weights are: one trainable.safetensors, or, for a published stage
    folder, its projection and adapters."""
    p = Path(path)
    if is_published_stage(p):
        return [f for f in (p / "proj.safetensors", p / "lora.safetensors") if f.exists()]
    return [trainable_file(p)]


def load_trainable(path: str | Path) -> dict[str, torch.Tensor]:
    """Trainable weights from a checkpoint folder, an output dir (its latest checkpoint), a published
    stage folder or a file."""
    from safetensors.torch import load_file
    tensors = {}
    for f in trainable_files(path):
        for k, v in load_file(str(f)).items():  # older published projections lack the proj. prefix
            tensors[f"proj.{k}" if f.name == "proj.safetensors" and not k.startswith(PROJ_KEYS) else k] = v
    return tensors


def lora_spec(path: str | Path) -> dict | None:
    """The LoRA settings (r, alpha, ...) saved with a checkpoint's adapters, or None."""
    from safetensors import safe_open
    for f in trainable_files(path):
        with safe_open(str(f), framework="pt") as st:
            if spec := (st.metadata() or {}).get("lora"):
                return json.loads(spec)
    return None


def load_state(ckpt: Path) -> dict:
    # Our own file, written by save_checkpoint; it holds numpy/python RNG tuples, hence weights_only=False.
    return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)


def read_meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "meta.json").read_text())
