"""Procedural, seeded "image world" with ground truth (scenes, dishes, sketches, prompt images).

Public API::

    generate(kind, seed, split="train", size=224) -> Sample      # kind in KINDS, split in SPLITS
    mixture(seed, n, split="train", kinds=KINDS, weights=None, size=224) -> Iterator[Sample]
    export(out_dir, n, split="train", seed=0, kinds=KINDS, weights=None, size=224, ...) -> dict
    render_prompt(prompt, seed=0, size=224) -> PIL.Image.Image
    metrics: chair_i, qa_accuracy, ingredient_recall, structure_match, html_structure,
             prompt_similarity, object_recall
    vocabulary: object_kinds(split), heldout_names()

Splits: "train"/"val" use train object kinds only (disjoint seed streams); "test" uses all kinds
with at least one held-out kind per scene/dish/prompt; "heldout" uses held-out kinds only.
Everything is deterministic given (kind, split, seed, size); no network or system fonts are used
(emoji glyphs come from the bundled atlas rendered from Noto Color Emoji, OFL-1.1).
CLI: ``python -m minigpt4.world export --out DIR --n 100 --split train --seed 0``.
"""

from .core import KINDS, SPLITS, Sample, generate, mixture
from .export import export
from .metrics import (chair_i, html_structure, ingredient_recall, object_recall, prompt_similarity,
                      qa_accuracy, structure_match)
from .prompt import parse_prompt, render_prompt
from .vocab import heldout_names, object_kinds

__all__ = ["KINDS", "SPLITS", "Sample", "generate", "mixture", "export", "render_prompt", "parse_prompt",
           "chair_i", "qa_accuracy", "ingredient_recall", "structure_match", "html_structure",
           "prompt_similarity", "object_recall", "object_kinds", "heldout_names"]
