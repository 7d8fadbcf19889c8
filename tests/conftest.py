"""Shared fixtures: one tiny random-config MiniGPT-4 per test session, and a folder for artefacts
(screenshots, logs) that tests leave for people to look at."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Set at import, before any fixture (session/module-scoped servers too) starts a subprocess:
# CLI subprocesses default to the fast tiny model, and nothing may reach a model hub.
os.environ["MINIGPT4_MODEL"] = "tiny"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("MINIGPT4_TEST_OUTPUT", ROOT / "test-output"))


@pytest.fixture(scope="session")
def tiny_model():
    """Tiny MiniGPT-4 (random weights, bundled SmolLM2 tokenizer); treat as read-only."""
    from minigpt4.config import get_config
    from minigpt4.model.minigpt4 import build_model
    model = build_model(get_config("tiny"), seed=0)
    model.eval()
    return model


@pytest.fixture
def artifacts(request) -> Path:
    """A per-test folder under test-output/ for screenshots and logs kept after the run."""
    d = ARTIFACTS / request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    # Nothing may reach a model hub: make any attempt fail fast instead of hanging.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    torch.manual_seed(0)


@pytest.fixture
def word_side_cfg():
    """A tiny config whose word readout reads a side of its own build. tiny's main side (56 px ViT + Q-Former, 8 x 32, CLIP normalisation) with a word side built otherwise: 84 px,
    patch 28, width 24, no Q-Former (9 tokens of width 24), ImageNet normalisation."""
    from minigpt4.config import VisionConfig, VisionSideConfig, get_config
    cfg = get_config("tiny")
    cfg.proj_words, cfg.word_layout, cfg.word_vision = ["cat", "dog"], "append", True
    cfg.word_side = VisionSideConfig(VisionConfig(image_size=84, patch_size=28, width=24, depth=1, heads=2, mlp_dim=48),
                                     None, 1, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return cfg
