"""Training recipes: a `TrainConfig` dataclass read from YAML, checked before any work starts.

Every field is typed; an unknown, missing or mistyped field fails at load time with a message
that names the field and its line in the recipe. Data paths in a recipe are relative to the
recipe file, so recipes work from any directory; `key=value` overrides from the command line
(`data.0.path=/x output_dir=/y optim.lr=1e-4`) are applied on top, relative to the working dir.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A problem in a recipe; the message names the field (and file:line when known)."""


@dataclass
class DataConfig:
    """One data source. `weight` sets its share of the mix (the original's sample_ratio)."""
    type: str                      # webdataset | folder | cc_sbu_align | llava
    path: str                      # shards dir/glob/brace range, JSONL (or its folder), dataset folder, JSON
    name: str | None = None        # defaults to "<type><index>"
    weight: float = 1.0
    clean: bool | None = None      # caption cleaning (lower-case, <= max_words); None: on in stage 1 only
    image_folder: str | None = None  # llava: where image paths point (default: the JSON's folder)
    tasks: list[str] | None = None   # llava: only conversations whose "task" is one of these (world exports
                                     # tag each: qa, describe, alt-text, recipe, prompt, website)


@dataclass
class OptimConfig:
    """AdamW; linear warmup from warmup_lr to lr over warmup_steps, then cosine to min_lr."""
    lr: float = 1e-4
    min_lr: float = 8e-5
    warmup_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float | None = None  # max global grad norm; None: no clipping (the original)


@dataclass
class TrainConfig:
    model: str                               # preset name ("tiny", "vicuna-7b", ...) or a model folder
    data: list[DataConfig]
    output_dir: str
    stage: int = 1                           # 1: caption pretraining layout; 2: instruction layout
    weights: dict[str, str] = field(default_factory=dict)  # released presets: llm, eva, blip2, ckpt paths
    init: str | list[str] | None = None      # start from these trainable weights (checkpoint dirs, .safetensors or
                                             # a published stage folder; a list loads each in turn, e.g. a
                                             # projection, then adapters)
    trainable: list[str] = field(default_factory=lambda: ["proj"])  # proj, words, qformer, vision, lora
    proj_conditioning: bool = False          # fit the projection on standardised cached features, starting at
                                             # text-token norm; checkpoints store the plain Linear (conditioning.py)
    lora: dict[str, Any] | None = None       # r, alpha, dropout, target_modules (default: r 64, alpha 16, q/v)
    word_dropout: float = 0.0                # each readout word -> "none" or a random name with this probability
                                             # (WordReadout.drop_words: how unseen kinds look to the readout)
    word_dropout_to: str = ""                # instead: a dropped name becomes this readout word (e.g. the fit's
                                             # --unknown "thing"), on regions that show something; records
                                             # with "unnamed" regions (python -m minigpt4.world unname) read it
                                             # there and never at random: their answers say "thing" too
    max_txt_len: int = 32                    # caption/answer tokens kept (original: 32 stage 1, 160 stage 2)
    max_len: int = 2048                      # conversation tokens kept (llava)
    loss_average: str = "token"              # token: mean over answer tokens (the original) | sample: each
                                             # sample's mean, then the mean over samples (short answers count)
    max_words: int = 50                      # caption cleaning keeps this many words
    instructions: str | None = None          # stage-2 instruction file, one per line (default: original list)
    batch_size: int = 4                      # GLOBAL samples per optimizer step (all processes, all micro-batches)
    micro_batch_size: int | None = None      # samples per process per forward; None: batch_size / world
    optim: OptimConfig = field(default_factory=OptimConfig)
    max_steps: int | None = None             # or iters_per_epoch x max_epoch (the original's way)
    iters_per_epoch: int | None = None
    max_epoch: int | None = None
    amp: str | None = None                   # bf16 | fp16 | None
    seed: int = 42
    device: str = "auto"
    distributed: str = "ddp"                 # ddp | fsdp (FSDP shards the frozen LLM over GPUs)
    feature_cache: str | bool = "auto"              # auto: on when the vision side is frozen | on | off
    cache_dir: str | None = None             # default: <output_dir>/feature_cache
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True

    @property
    def init_paths(self) -> list[str]:
        return [] if self.init is None else [self.init] if isinstance(self.init, str) else list(self.init)

    @property
    def total_steps(self) -> int:
        return self.max_steps if self.max_steps is not None else self.iters_per_epoch * self.max_epoch

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {"stage": (1, 2), "amp": ("bf16", "fp16", None), "loss_average": ("token", "sample"),
           "distributed": ("ddp", "fsdp"), "feature_cache": ("auto", "on", "off", True, False),
           "data.type": ("webdataset", "folder", "cc_sbu_align", "llava")}
PATH_FIELDS = ("path", "image_folder")  # inside data entries; plus top-level init / instructions


# --- YAML with line numbers ----------------------------------------------------------------
def _lines(node, prefix="") -> dict[str, int]:
    out = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            out[key] = k.start_mark.line + 1
            out.update(_lines(v, key + "."))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[f"{prefix}{i}"] = v.start_mark.line + 1
            out.update(_lines(v, f"{prefix}{i}."))
    return out


class _Ctx:
    def __init__(self, file: str | None, lines: dict[str, int]):
        self.file, self.lines = file, lines

    def error(self, where: str, msg: str) -> ConfigError:
        loc = ""
        if self.file:
            line = self.lines.get(where) or self.lines.get(where.rsplit(".", 1)[0])
            loc = f" ({self.file}:{line})" if line else f" ({self.file})"
        return ConfigError(f"config field '{where}'{loc}: {msg}")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, where: str, ctx: _Ctx):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for a in inner[:-1]:
            try:
                return _coerce(value, a, where, ctx)
            except ConfigError:
                pass
        return _coerce(value, inner[-1], where, ctx)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, ctx)
    if origin is list:
        if not isinstance(value, list):
            raise ctx.error(where, f"expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{where}.{i}", ctx) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ctx.error(where, f"expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-4" as a string; accept it as the number it means
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ctx.error(where, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(klass, d, where: str, ctx: _Ctx):
    prefix = f"{where}." if where else ""
    if not isinstance(d, dict):
        raise ctx.error(where or klass.__name__, f"expected a mapping of {klass.__name__} fields, got {d!r}")
    hints = typing.get_type_hints(klass)
    fields = {f.name: f for f in dataclasses.fields(klass)}
    for key in d:
        if key not in fields:
            close = [n for n in fields if n.startswith(str(key)[:3])]
            hint = f"; did you mean {close}?" if close else ""
            raise ctx.error(f"{prefix}{key}", f"unknown field{hint} (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ctx.error(f"{prefix}{name}", f"missing required field ({klass.__name__}.{name})")
            continue
        kwargs[name] = _coerce(d[name], hints[name], f"{prefix}{name}", ctx)
        choice_key = f"data.type" if klass is DataConfig and name == "type" else f"{prefix}{name}"
        if choice_key in CHOICES and kwargs[name] not in CHOICES[choice_key]:
            raise ctx.error(f"{prefix}{name}", f"{kwargs[name]!r} is not one of {list(CHOICES[choice_key])}")
    return klass(**kwargs)


# --- overrides and paths -------------------------------------------------------------------
def apply_override(d: dict, item: str) -> None:
    """`a.b.0.c=value` -> d["a"]["b"][0]["c"] = yaml(value)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like field=value (e.g. output_dir=/tmp/run)")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None
    parts = key.strip().split(".")
    node = d
    for i, p in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(f"override '{key}': '{'.'.join(parts[:i + 1])}' is not an index of the list")
            node = node[int(p)]
        else:
            if p not in node or node[p] is None:
                node[p] = [] if nxt.isdigit() else {}
            node = node[p]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) > len(node):
            raise ConfigError(f"override '{key}': '{last}' is not an index of the list")
        if int(last) == len(node):
            node.append(value)
        else:
            node[int(last)] = value
    else:
        node[last] = value


def _resolve(path: str | None, base: Path) -> str | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_absolute() and "{" not in str(path):
        p = base / p
    elif not p.is_absolute():
        p = Path(str(base / path))
    return str(p)


def _resolve_paths(d: dict, base: Path) -> None:
    for entry in d.get("data") or []:
        if isinstance(entry, dict):
            for k in PATH_FIELDS:
                if isinstance(entry.get(k), str):
                    entry[k] = _resolve(entry[k], base)
    for k in ("init", "instructions"):
        if isinstance(d.get(k), str):
            d[k] = _resolve(d[k], base)
        elif isinstance(d.get(k), list):
            d[k] = [_resolve(v, base) if isinstance(v, str) else v for v in d[k]]
    for k, v in (d.get("weights") or {}).items() if isinstance(d.get("weights"), dict) else ():
        if isinstance(v, str):
            d["weights"][k] = _resolve(v, base)
    model = d.get("model")
    if isinstance(model, str) and (model.startswith(".") or "/" in model) and not Path(model).is_absolute():
        d["model"] = _resolve(model, base)


def load_config(source: str | Path | dict, overrides: list[str] = ()) -> TrainConfig:
    """Read a recipe (YAML file or dict), apply `key=value` overrides, check every field."""
    file, lines = None, {}
    if isinstance(source, dict):
        d = dict(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"recipe '{source}' does not exist; pass a YAML file such as recipes/tiny_stage1.yaml")
        text = path.read_text()
        try:
            d = yaml.safe_load(text) or {}
            lines = _lines(yaml.compose(text))
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe {path} is not valid YAML: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"recipe {path} must be a mapping of fields (model:, data:, ...)")
        _resolve_paths(d, path.resolve().parent)
        file = str(path)
    for item in overrides:
        apply_override(d, item)
    cwd = Path.cwd()
    _resolve_paths(d, cwd)  # override paths are relative to where the command runs
    ctx = _Ctx(file, lines)
    cfg = _build(TrainConfig, d, "", ctx)
    _check(cfg, ctx)
    return cfg


def _check(cfg: TrainConfig, ctx: _Ctx) -> None:
    """Cross-field checks: everything that would otherwise fail an hour into a run."""
    if cfg.max_steps is None and (cfg.iters_per_epoch is None or cfg.max_epoch is None):
        raise ctx.error("max_steps", "set max_steps, or iters_per_epoch and max_epoch")
    if cfg.total_steps <= 0:
        raise ctx.error("max_steps", f"must be > 0, got {cfg.total_steps}")
    if not 0.0 <= cfg.word_dropout < 1.0:
        raise ctx.error("word_dropout", f"is a probability in [0, 1), got {cfg.word_dropout}")
    if cfg.word_dropout_to and not cfg.word_dropout:
        raise ctx.error("word_dropout_to", "set word_dropout too (how often a name is dropped)")
    for name in ("batch_size", "checkpoint_every", "log_every", "max_txt_len", "max_len", "keep_checkpoints"):
        if getattr(cfg, name) <= 0:
            raise ctx.error(name, f"must be > 0, got {getattr(cfg, name)}")
    if cfg.micro_batch_size is not None and cfg.micro_batch_size <= 0:
        raise ctx.error("micro_batch_size", f"must be > 0, got {cfg.micro_batch_size}")
    if not cfg.data:
        raise ctx.error("data", "list at least one data source")
    names = set()
    for i, dc in enumerate(cfg.data):
        dc.name = dc.name or f"{dc.type}{i}"
        if dc.name in names:
            raise ctx.error(f"data.{i}.name", f"duplicate source name '{dc.name}'")
        names.add(dc.name)
        if dc.weight <= 0:
            raise ctx.error(f"data.{i}.weight", f"must be > 0, got {dc.weight}")
        if "{" not in dc.path and "*" not in dc.path and not Path(dc.path).exists():
            raise ctx.error(f"data.{i}.path", f"'{dc.path}' does not exist (relative paths in a recipe are "
                                              f"relative to the recipe file; override with data.{i}.path=...)")
    from minigpt4.model.minigpt4 import TRAINABLE_GROUPS
    bad = sorted(set(cfg.trainable) - set(TRAINABLE_GROUPS))
    if bad or not cfg.trainable:
        raise ctx.error("trainable", f"{bad or 'empty'}: choose from {list(TRAINABLE_GROUPS)}")
    o = cfg.optim
    if not (o.lr > 0 and o.min_lr >= 0 and o.warmup_lr >= 0):
        raise ctx.error("optim.lr", "learning rates must be >= 0 (lr > 0)")
    if o.warmup_steps < 0:
        raise ctx.error("optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    if isinstance(cfg.feature_cache, bool):  # YAML reads on/off as booleans
        cfg.feature_cache = "on" if cfg.feature_cache else "off"
    frozen_vision = not ({"vision", "qformer"} & set(cfg.trainable))
    if cfg.feature_cache == "on" and not frozen_vision:
        raise ctx.error("feature_cache", f"'on' needs a frozen vision side, but trainable={cfg.trainable}; "
                                         f"use auto or off")
    if cfg.instructions is not None and not Path(cfg.instructions).exists():
        raise ctx.error("instructions", f"file '{cfg.instructions}' does not exist")
    unknown = sorted(set(cfg.weights) - {"llm", "eva", "blip2", "ckpt"})
    if unknown:
        raise ctx.error(f"weights.{unknown[0]}", "unknown weight file; use llm, eva, blip2, ckpt")
    for k, v in cfg.weights.items():
        if v is not None and not Path(v).exists():
            raise ctx.error(f"weights.{k}", f"'{v}' does not exist")
    if cfg.model in ("vicuna-7b", "vicuna-13b", "llama2-7b"):
        need = ["llm", "eva"] + (["blip2"] if cfg.model != "llama2-7b" else [])
        missing = [k for k in need if not cfg.weights.get(k)]
        if missing:
            raise ctx.error(f"weights.{missing[0]}", f"preset '{cfg.model}' needs the released weight files "
                                                    f"{need}; set them, e.g. weights.{missing[0]}=/path/to/file")
    for path in cfg.init_paths:
        if not Path(path).exists():
            raise ctx.error("init", f"'{path}' does not exist; give a checkpoint folder or a .safetensors file")
