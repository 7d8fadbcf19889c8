"""`minigpt4 info`: what a model is, without loading its weights (meta-device parameter counts,
safetensors headers, file sizes), so it is instant even for a 13B folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from minigpt4.config import PRESETS, MiniGPT4Config
from minigpt4.train.checkpoint import is_published_stage
from minigpt4.weights.common import CheckpointError, part_of, skeleton
from minigpt4.weights.pretrained import WEIGHTS_FILE, folder_size, preset_config, read_folder_config


def _llm_params(cfg: MiniGPT4Config) -> int | None:
    from minigpt4.weights.hf import count_params_from_arch, count_params_from_config
    src, path = cfg.llm.source, cfg.llm.path
    if src == "random":
        return count_params_from_arch(cfg.llm.arch)
    if src in ("hf", "folder") and path:
        return count_params_from_config(Path(path))
    if src == "gguf":
        from minigpt4.model.llm import default_gguf_path, gguf_cache_path
        try:
            cached = gguf_cache_path(Path(path or default_gguf_path()))
        except (FileNotFoundError, OSError):
            return None
        return count_params_from_config(cached)  # known once the GGUF was dequantised and cached
    return None


def _stored_dtype(folder: Path) -> str | None:
    f = folder / WEIGHTS_FILE
    if not f.is_file():
        return None
    from safetensors import safe_open
    with safe_open(str(f), "pt") as sf:
        dtypes = sorted({str(sf.get_slice(k).get_dtype()) for k in sf.keys()})
    return "/".join(dtypes)


def model_info(spec: str) -> dict[str, Any]:
    folder, adapters, adapter_params = None, None, 0
    if spec in PRESETS:
        cfg = preset_config(spec)
    elif spec == "default" or (spec.startswith("default@") and spec.count("@") == 1):  # this project's own model
        from minigpt4.weights.default import default_config, default_parts, parse_spec
        cfg = default_config(preset_config("small"), stage=parse_spec(spec))
        cfg.name = spec
        adapters, adapter_params = _adapters(default_parts(stage=parse_spec(spec))["lora"])
    elif spec.startswith("default@") and spec.count("@") == 2 and is_published_stage(spec.rsplit("@", 1)[1]):
        # default@VISION@FOLDER: a published stage folder (publish --out) on its vision side, as load_model builds it
        from minigpt4.weights.default import default_config, parse_spec, proj_metadata
        base, run = spec.rsplit("@", 1)
        cfg = default_config(preset_config("small"), stage=parse_spec(base))
        cfg.apply_readout_meta(proj_metadata(Path(run) / "proj.safetensors"))  # its readout and settings
        cfg.name = spec
        lora = Path(run) / "lora.safetensors"
        adapters, adapter_params = _adapters(lora if lora.exists() else None)
    else:
        folder = Path(spec)
        if not folder.is_dir():
            raise CheckpointError(f"unknown model '{spec}': not a preset ({', '.join(PRESETS)}) and no such folder")
        cfg, _ = read_folder_config(folder)
    counts: dict[str, int] = {}
    for k, v in skeleton(cfg).state_dict().items():
        part = {"ln_vision": "vision"}.get(part_of(k), part_of(k))
        counts[part] = counts.get(part, 0) + v.numel()
    llm = _llm_params(cfg)
    trained = list(cfg.trainable) + (["lora"] if adapters and "lora" not in cfg.trainable else [])
    trainable = set(trained)
    parts = {name: {"params": n, "trainable": n if name in trainable else 0} for name, n in counts.items()}
    parts["llm"] = {"params": llm, "trainable": adapter_params or (0 if "lora" not in trainable else None)}
    known = [p["params"] for p in parts.values()]
    info = {
        "name": cfg.name, "folder": str(folder) if folder else None,
        "vision": _vision_line(cfg.vision),
        "bridge": (f"Q-Former {cfg.qformer.layers} layers x {cfg.qformer.hidden}, {cfg.qformer.num_query_tokens} "
                   f"queries" if cfg.qformer else f"concatenate {cfg.concat_tokens} encoder tokens" if cfg.concat_tokens > 1
                   else "none: encoder tokens straight to the projection"),
        "projection": f"{cfg.proj_in_features} -> {cfg.llm.hidden_size}",
        "words": _words_line(cfg),
        "llm": {"source": cfg.llm.source, "path": cfg.llm.path, "hidden_size": cfg.llm.hidden_size},
        "adapters": adapters, "answers": _answers_line(cfg),
        "image_tokens": cfg.num_image_tokens, "template": cfg.template,
        "trainable": trained,
        "dtype": (_stored_dtype(folder) if folder else None) or "float32 (built at load time)",
        "parameters": parts,
        "total_params": sum(known) if all(k is not None for k in known) else None,
        "trainable_params": sum(p["trainable"] or 0 for p in parts.values()),
        "folder_bytes": folder_size(folder) if folder else None,
    }
    return info


def _adapters(path: Path | None) -> tuple[str | None, int]:
    """(description, parameters) of the LoRA adapters a default-model stage ships, read without loading them."""
    from math import prod

    from safetensors import safe_open

    from minigpt4.train.checkpoint import lora_spec
    if path is None:
        return None, 0
    with safe_open(str(path), framework="pt") as f:
        n = sum(prod(f.get_slice(k).get_shape()) for k in f.keys())
    spec = lora_spec(path) or {}
    return (f"LoRA r {spec.get('r')}, alpha {spec.get('alpha')} on {', '.join(spec.get('target_modules', []))} "
            f"({_fmt(n)} params, merged into the LLM at load time)"), n


def _answers_line(cfg) -> str | None:
    """What a word readout's model does by default: abstention and grounded answers (chat --abstain/--grounded)."""
    if not cfg.proj_words:
        return None
    parts = [f"a region name below {cfg.word_abstain:g} reads {cfg.word_unknown!r}" if cfg.word_abstain else
             "every region name as read",
             ("grounded: object words the readout did not read"
              + (f" (or read below {cfg.word_ground_sure:g})" if cfg.word_ground_sure else "")
              + " are written 'thing'") if cfg.word_ground else "not grounded"]
    if cfg.word_always:
        parts.append(f"a {' and '.join(cfg.word_always)} word on every object")
    return "; ".join(parts)


def _words_line(cfg) -> str | None:
    """The word readout, if any: how many names, which vision side it reads, how its tokens reach the LLM."""
    if not cfg.proj_words:
        return None
    side = cfg.word_side_config
    reads = (f"its own side: {_vision_line(side.vision)}" + (f" + Q-Former, {side.num_queries} queries"
             if side.qformer else "")) if cfg.word_vision else "the main side's features"
    spelled = ("its first token" if cfg.word_name_tokens == 1 else f"up to {cfg.word_name_tokens} tokens")
    line = (f"{len(cfg.proj_words)} names, one per token from {reads}, each name in {spelled}; "
            f"{cfg.num_word_queries} tokens ({cfg.word_layout})")
    if cfg.word_attributes:
        line += ", each name after its " + ", ".join(f"{a} ({len(w)} words)" for a, w in cfg.word_attributes.items())
        if cfg.word_attribute_hidden:
            line += f" (each from {cfg.word_attribute_hidden} hidden units)"
    if cfg.word_labels:
        line += f", each after its label ({cfg.word_labels[0]!r} ... {cfg.word_labels[-1]!r})"
    for g in cfg.image_phrases:
        line += (f"; before them {g['text'][0]!r} and {g['slots']} of {len(g['words'])} phrases "
                 f"({', '.join(g['words'][:3])}, ...)")
    return line


def _vision_line(v) -> str:
    if v.arch == "efficientnet_lite0":
        return (f"EfficientNet-Lite0 (ImageNet) {v.image_size}px, {v.token_grid}x{v.token_grid} region tokens of "
                f"width {v.width}")
    return f"EVA ViT {v.image_size}px patch {v.patch_size}, width {v.width}, depth {v.depth}, heads {v.heads}"


def _fmt(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_info(info: dict[str, Any]) -> str:
    lines = [f"model        {info['name']}" + (f"  ({info['folder']})" if info["folder"] else "  (preset)"),
             f"vision       {info['vision']}", f"bridge       {info['bridge']}",
             f"projection   {info['projection']}",
             *([f"word readout {info['words']}"] if info.get("words") else []),
             *([f"answers      {info['answers']}"] if info.get("answers") else []),
             *([f"adapters     {info['adapters']}"] if info.get("adapters") else []),
             f"llm          {info['llm']['source']} {info['llm']['path'] or ''} (hidden {info['llm']['hidden_size']})",
             f"image tokens {info['image_tokens']}", f"template     {info['template']}",
             f"dtype        {info['dtype']}", f"trainable    {', '.join(info['trainable'])}",
             "parameters   part      total      trainable"]
    for name, p in info["parameters"].items():
        lines.append(f"             {name:<9} {_fmt(p['params']):>9}  {_fmt(p['trainable']):>9}")
    lines.append(f"             {'all':<9} {_fmt(info['total_params']):>9}  {_fmt(info['trainable_params']):>9}")
    if info["folder_bytes"] is not None:
        lines.append(f"folder size  {info['folder_bytes'] / 1e6:.1f} MB")
    return "\n".join(lines)


def print_info(spec: str, as_json: bool = False) -> None:
    info = model_info(spec)
    print(json.dumps(info, indent=2) if as_json else format_info(info))
