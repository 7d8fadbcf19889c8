"""Procedural, seeded "image world" with ground truth (scenes, dishes, sketches, prompt images).

Public API::

    generate(kind, seed, split="train", size=224) -> Sample
    mixture(seed, n, split="train", kinds=KINDS, weights=None, size=224) -> Iterator[Sample]
    export(out_dir, n, split="train", seed=0, kinds=KINDS, weights=None, size=224, ...) -> dict
    render_prompt(prompt, seed=0, size=224) -> PIL.Image
    metrics: chair_i, qa_accuracy, ingredient_recall, structure_match, html_structure,
             prompt_similarity

Everything is deterministic given (kind, split, seed, size); no network or system fonts are used.
"""

from .core import KINDS, SPLITS, Sample, generate, mixture

__all__ = ["KINDS", "SPLITS", "Sample", "generate", "mixture"]
