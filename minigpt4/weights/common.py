"""Shared pieces of the weight loaders: safe pickle loading, the expected key/shape layout of our
non-LLM parts, and one strict check that lists every missing, unexpected or mis-shaped key.

Each foreign format (`eva.py`, `lavis.py`, `minigpt4_ckpt.py`) only maps names; validation and
copying happen here, so every format fails the same clear way.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from minigpt4.config import MiniGPT4Config

# Our parameter groups outside the LLM, by key prefix (names as in minigpt4.model.minigpt4.MiniGPT4).
PARTS = {"vision": ("visual_encoder.",), "ln_vision": ("ln_vision.",), "qformer": ("qformer.",),
         "proj": ("proj.", "word_proj."), "word_vision": ("word_vision.",)}
PROJ_KEYS = PARTS["proj"]  # what a published proj.safetensors holds (older files: bare weight/bias)


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: names the keys, the file and the fix."""


def part_of(key: str) -> str | None:
    for part, prefixes in PARTS.items():
        if key.startswith(prefixes):
            return part
    return None


def load_pickle(path: str | Path, what: str) -> dict:
    """`torch.load(weights_only=True)` with errors that say what the file should have been."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} checkpoint '{path}' not found; check the path")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{what} checkpoint '{path}' holds more than plain weights, so it was not loaded "
            f"(only weights_only=True pickles are trusted: {str(e).splitlines()[0]}). Re-save it as a "
            f"plain state dict: torch.save({{k: v for k, v in sd.items()}}, path) from a trusted "
            f"Python session") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{what} checkpoint '{path}' is not a readable torch checkpoint ({e}); "
                              f"re-download it (the file may be truncated)") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what} checkpoint '{path}' holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def tensors_only(state: Mapping, path: str | Path, what: str) -> dict[str, torch.Tensor]:
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{what} checkpoint '{path}' is not a flat state dict: keys {short(bad)} are "
                              f"not tensors")
    return dict(state)


def short(keys: Iterable[str], n: int = 12) -> str:
    keys = sorted(keys)
    head = ", ".join(keys[:n])
    return f"[{head}{f', ... ({len(keys) - n} more)' if len(keys) > n else ''}]"


# --- the layout we load into ------------------------------------------------------------------
def skeleton(cfg: MiniGPT4Config) -> nn.Module:
    """The non-LLM part of the model on the meta device: key names and shapes, no memory."""
    from minigpt4.model.minigpt4 import attribute_head, build_vision_side
    with torch.device("meta"):
        m = nn.Module()
        build_vision_side(m, cfg.main_side)
        m.proj = nn.Linear(cfg.proj_in_features, cfg.llm.hidden_size)
        if cfg.proj_words:  # the word readout's classifier (its word table is rebuilt from the LLM, not stored)
            m.word_proj = nn.Module()
            m.word_proj.classify = nn.Linear(cfg.word_features, len(cfg.proj_words) + 1)
            m.word_proj.attributes = nn.ModuleDict({a: attribute_head(cfg.word_features, len(words) + 1,
                                                                      cfg.word_attribute_hidden)
                                                    for a, words in cfg.word_attributes.items()})
            m.word_proj.phrases = nn.ModuleDict({g["name"]: nn.Linear(cfg.num_word_queries * cfg.word_features,
                                                                      g["slots"] * (len(g["words"]) + 1))
                                                 for g in cfg.image_phrases})
        if cfg.word_vision:  # the readout's own frozen vision side (MiniGPT4.word_vision)
            from minigpt4.model.minigpt4 import WordVision
            m.word_vision = WordVision(cfg)
    return m


def expected_layout(cfg: MiniGPT4Config, parts: Iterable[str] | None = None) -> dict[str, torch.Size]:
    parts = set(PARTS if parts is None else parts)
    return {k: v.shape for k, v in skeleton(cfg).state_dict().items() if part_of(k) in parts}


def check_layout(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], source: str,
                 hint: str = "") -> None:
    """Raise one CheckpointError listing all missing, unexpected and mis-shaped keys."""
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    wrong = {k: (tuple(state[k].shape), tuple(expected[k])) for k in set(state) & set(expected)
             if tuple(state[k].shape) != tuple(expected[k])}
    if not (missing or unexpected or wrong):
        return
    lines = [f"{source} does not match the model config:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {short(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {short(unexpected)}")
    if wrong:
        shown = sorted(wrong)[:8]
        lines.append(f"  wrong shapes ({len(wrong)}): " +
                     "; ".join(f"{k} is {list(wrong[k][0])}, model wants {list(wrong[k][1])}" for k in shown))
    lines.append("  fix: " + (hint or "use the preset that matches this checkpoint (--preset), or the "
                              "checkpoint that matches the preset"))
    raise CheckpointError("\n".join(lines))


@torch.no_grad()
def copy_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy `state` (already in our key names) into `model`, keeping each parameter's dtype/device.
    Every key must exist with the right shape; keys not given stay as they are."""
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise CheckpointError(f"{source}: keys {short(unknown)} do not exist in the model")
    wrong = [f"{k} is {list(v.shape)}, model wants {list(own[k].shape)}" for k, v in state.items()
             if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise CheckpointError(f"{source}: wrong shapes {wrong[:8]}; use the preset that matches the weights")
    for k, v in state.items():
        own[k].copy_(v.to(own[k].dtype))
