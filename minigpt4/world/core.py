"""Sample dataclass, ``generate`` and ``mixture``."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterator

from PIL import Image

KINDS = ("scene", "dish", "sketch", "prompt")
SPLITS = ("train", "val", "test", "heldout")


@dataclass
class Sample:
    """One world image with its ground truth and texts.

    ``truth`` is JSON-serialisable. ``qa`` is a list of {"question", "answer", "type", "target"};
    types: presence, count, color, position, size, text (scenes); dish, ingredient (dishes);
    element (sketches); object, style, background (prompts).
    """

    kind: str
    seed: int
    split: str
    image: Image.Image
    truth: dict
    caption: str
    description: str
    qa: list = field(default_factory=list)
    alt_text: str = ""
    recipe: str | None = None
    html: str | None = None
    prompt: str | None = None

    @property
    def image_id(self) -> str:
        return f"{self.kind}_{self.split}_{self.seed}"

    def texts(self) -> dict:
        """Every text as a JSON-serialisable dict (no image)."""
        return {"image_id": self.image_id, "kind": self.kind, "seed": self.seed, "split": self.split,
                "caption": self.caption, "description": self.description, "qa": self.qa,
                "alt_text": self.alt_text, "recipe": self.recipe, "html": self.html,
                "prompt": self.prompt, "truth": self.truth}


def rng_for(kind: str, split: str, seed: int, salt: str = "") -> random.Random:
    """Independent deterministic stream per (kind, split, seed): splits never share samples."""
    return random.Random(f"minigpt4-world:{kind}:{split}:{seed}:{salt}")


def generate(kind: str, seed: int, split: str = "train", size: int = 224) -> Sample:
    """Render one sample of ``kind`` ("scene", "dish", "sketch", "prompt").

    ``split``: "train" and "val" use only train object kinds (disjoint seed streams);
    "test" uses all kinds and every scene/dish has at least one held-out kind;
    "heldout" uses held-out object kinds only (where the kind has objects)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    seed = int(seed)
    if kind == "scene":
        from . import scene as m
    elif kind == "dish":
        from . import dish as m
    elif kind == "sketch":
        from . import sketch as m
    else:
        from . import prompt as m
    return m.sample(seed, split, size)


def mixture(seed: int, n: int | None, split: str = "train", kinds=KINDS, weights=None,
            size: int = 224) -> Iterator[Sample]:
    """Yield ``n`` samples (forever if n is None) mixing ``kinds`` with ``weights``.

    Deterministic: sample i uses kind chosen from a seeded stream and per-kind seed
    ``seed * 1_000_003 + i`` so different mixture seeds give different samples."""
    kinds = tuple(kinds)
    weights = list(weights) if weights is not None else [1.0] * len(kinds)
    if len(weights) != len(kinds):
        raise ValueError("weights must match kinds")
    r = random.Random(f"minigpt4-world-mixture:{split}:{seed}")
    i = 0
    while n is None or i < n:
        k = r.choices(kinds, weights=weights)[0]
        yield generate(k, seed * 1_000_003 + i, split, size)
        i += 1
