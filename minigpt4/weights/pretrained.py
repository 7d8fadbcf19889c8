"""Our own format and the one entry point that loads any model.

A converted folder is self-describing:

    folder/
      config.json        {"format": "minigpt4", "format_version": 1, "config": MiniGPT4Config.to_dict(),
                          "external": {"eva": path, "blip2": path, "ckpt": path}}   (external optional)
      model.safetensors  visual_encoder.* ln_vision.* qformer.* proj.* (+ LoRA adapters), any subset
      llm/               LLM config.json + safetensors + tokenizer   (absent when the config references
                         the LLM instead: {"source": "gguf", "path": null} = bundled SmolLM2, or an
                         absolute Hugging Face path written by `convert --link-llm`)

Every non-LLM key must come from model.safetensors or an external checkpoint: loading is strict
and lists what is missing or unexpected before the (slow) LLM is read. The vision side is built
on the meta device and the weights are assigned, so no time goes into random initialisation.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from minigpt4.config import PRESETS, MiniGPT4Config, get_config
from minigpt4.weights.common import (PARTS, CheckpointError, check_layout, copy_into, expected_layout, part_of,
                                     short)

log = logging.getLogger(__name__)

FORMAT = "minigpt4"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
LLM_DIR = "llm"


# --- foreign checkpoints -> our state ---------------------------------------------------------
def convert_state(cfg: MiniGPT4Config, eva: str | None = None, blip2: str | None = None,
                  ckpt: str | None = None, step: Callable[[str], None] = lambda s: None
                  ) -> dict[str, torch.Tensor]:
    """Read the original checkpoints into our key names (strictly checked, see the per-format maps)."""
    from minigpt4.weights.eva import load_eva
    from minigpt4.weights.lavis import load_blip2
    from minigpt4.weights.minigpt4_ckpt import load_stage_ckpt
    state: dict[str, torch.Tensor] = {}
    if blip2:
        step("reading BLIP-2 Q-Former")
        state.update(load_blip2(blip2, cfg))
    if eva:
        step("reading EVA ViT")
        state.update(load_eva(eva, cfg))
    if ckpt:
        step("reading MiniGPT-4 projection")
        state.update(load_stage_ckpt(ckpt, cfg))
    if cfg.qformer is None and (eva or ckpt) and "ln_vision.weight" not in state:
        # The LLaMA-2 variant never loads BLIP-2, so its frozen ln_vision keeps LayerNorm's default
        # init (weight 1, bias 0) in the original; reproduce that rather than leave it random.
        w = cfg.vision.width
        state.update({"ln_vision.weight": torch.ones(w), "ln_vision.bias": torch.zeros(w)})
    return state


FLAG_FOR_PART = {"vision": "--eva (eva_vit_g.pth)", "ln_vision": "--blip2 (blip2_pretrained_flant5xxl.pth)",
                 "qformer": "--blip2 (blip2_pretrained_flant5xxl.pth)", "proj": "--ckpt (MiniGPT-4 stage checkpoint)"}


def unprovided_parts(cfg: MiniGPT4Config, eva=None, blip2=None, ckpt=None) -> list[str]:
    """Parts no given checkpoint can fill, known before reading any file (fail fast)."""
    given = ({"vision"} if eva else set()) | ({"ln_vision", "qformer"} if blip2 else set()) | \
            ({"proj"} if ckpt else set())
    if cfg.qformer is None and (eva or ckpt):
        given.add("ln_vision")  # default init, see convert_state
    needed = {"vision", "ln_vision", "proj"} | ({"qformer"} if cfg.qformer is not None else set())
    return sorted(needed - given)


def missing_parts(cfg: MiniGPT4Config, state: dict[str, torch.Tensor]) -> list[str]:
    layout = expected_layout(cfg)
    return sorted({part_of(k) for k in layout if k not in state})


def needs_weights(cfg: MiniGPT4Config) -> bool:
    """Presets of released models have no sensible random version: refuse to run them half-loaded."""
    return cfg.llm.source == "hf"


# --- assembling a model ----------------------------------------------------------------------
def assemble(cfg: MiniGPT4Config, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu", quantize: str | None = None, seed: int | None = 0):
    """LLM from cfg.llm + our parts from `state`. Parts absent from `state` stay randomly initialised
    (seeded); when all are present the vision side is built on meta and the weights assigned."""
    from minigpt4.model.llm import load_llm
    from minigpt4.model.minigpt4 import MiniGPT4
    if seed is not None:
        torch.manual_seed(seed)
    if quantize == "int8":  # ours, applied after the LLM is loaded in fp32 on the CPU (model/quantize.py)
        from minigpt4.model.quantize import int8_problem
        if (problem := int8_problem(device, dtype)) is not None:
            raise ValueError(problem)
    llm, tokenizer = load_llm(cfg.llm, dtype=dtype, quantize=None if quantize == "int8" else quantize,
                              device=str(device))
    base = {k: v for k, v in state.items() if part_of(k) is not None}
    lora = {k: v for k, v in state.items() if part_of(k) is None}
    complete = not missing_parts(cfg, base)
    wants_lora = "lora" in cfg.trainable
    build_cfg = MiniGPT4Config.from_dict(cfg.to_dict())
    build_cfg.trainable = [t for t in cfg.trainable if t != "lora"]  # LoRA is added after, on real memory
    if complete:
        with torch.device("meta"):
            model = MiniGPT4(build_cfg, llm, tokenizer)
        model.load_state_dict(base, strict=False, assign=True)
    else:
        model = MiniGPT4(build_cfg, llm, tokenizer)
        copy_into(model, base, "weights")
    model.cfg = cfg
    if wants_lora:
        model.set_trainable(cfg.trainable)
    if lora:
        copy_into(model, lora, "LoRA weights")
    if quantize in (None, "int8"):
        model.llm.to(device)
    model.place(device, dtype)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"weights missing for {short(left)}")
    if quantize == "int8":  # refuses LoRA-wrapped LLMs itself
        from minigpt4.model.quantize import quantize_llm_int8
        quantize_llm_int8(model.llm, tokenizer)
    model.eval()
    return model


# --- our folder format ----------------------------------------------------------------------
def _non_llm_state(model) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in model.state_dict().items() if part_of(k) is not None}
    state.update({k: v for k, v in model.state_dict().items() if k.startswith("llm.") and "lora_" in k})
    return state


def _finish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Atomic publish: the folder appears complete or not at all."""
    if out.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"'{out}' already exists; pass overwrite=True (--overwrite) or pick another --out")
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _tmp_dir(out: Path) -> Path:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_folder_config(folder: Path, cfg: MiniGPT4Config, external: dict[str, str] | None = None) -> None:
    from minigpt4.utils import atomic_write_json
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict()}
    if external:
        doc["external"] = external
    atomic_write_json(folder / "config.json", doc)


def save_pretrained(model, folder: str | Path, link_llm: bool = False, overwrite: bool = False) -> Path:
    """Write `model` as a converted folder. The LLM is stored inside (llm/) unless it is the default
    GGUF, or `link_llm` and it comes from a Hugging Face directory: then the folder references it.
    An LLM with LoRA adapters merged into it is always stored: the file it came from lacks them."""
    from minigpt4.utils import atomic_save_safetensors
    from minigpt4.weights.hf import save_llm
    if getattr(model.llm, "minigpt4_quantized", None):
        raise ValueError("this model's LLM was quantized at load time (--quantize int8) and cannot be saved; "
                         "save the fp32 model (load it without --quantize)")
    out = Path(folder)
    tmp = _tmp_dir(out)
    try:
        cfg = MiniGPT4Config.from_dict(model.cfg.to_dict())
        cfg.trainable = list(model.trainable)  # set_trainable may have changed it after building
        atomic_save_safetensors(_non_llm_state(model), tmp / WEIGHTS_FILE, metadata={"format": FORMAT})
        src = cfg.llm.source
        merged = getattr(model.llm, "minigpt4_adapters_merged", False)
        if not merged and ((src == "gguf" and cfg.llm.path is None) or (link_llm and src in ("hf", "gguf"))):
            if cfg.llm.path:
                cfg.llm.path = str(Path(cfg.llm.path).resolve())
        else:
            save_llm(model.llm, model.tokenizer, tmp / LLM_DIR)
            cfg.llm.source, cfg.llm.path, cfg.llm.tokenizer = "folder", LLM_DIR, None
        write_folder_config(tmp, cfg)
        _finish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_folder_config(folder: Path) -> tuple[MiniGPT4Config, dict]:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"'{folder}' is not a converted minigpt4 folder (no config.json); make one with "
                              f"`minigpt4 convert` or save_pretrained(model, folder)")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-run `minigpt4 convert`") from None
    if doc.get("format") != FORMAT or "config" not in doc:
        raise CheckpointError(f"{path} is not a minigpt4 model config (format={doc.get('format')!r}); point "
                              f"at a folder written by `minigpt4 convert`")
    if int(doc.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{folder} uses format version {doc['format_version']}, newer than this "
                              f"minigpt4 reads ({FORMAT_VERSION}); upgrade the minigpt4 package")
    try:
        cfg = MiniGPT4Config.from_dict(doc["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}; fix the config or re-run `minigpt4 convert`") from None
    # Paths inside the folder are stored relative to it.
    if cfg.llm.source in ("folder", "hf", "gguf") and cfg.llm.path and not Path(cfg.llm.path).is_absolute():
        cfg.llm.path = str(folder / cfg.llm.path)
    if cfg.llm.tokenizer and not Path(cfg.llm.tokenizer).is_absolute() and (folder / cfg.llm.tokenizer).exists():
        cfg.llm.tokenizer = str(folder / cfg.llm.tokenizer)
    return cfg, doc


def folder_state(folder: Path, cfg: MiniGPT4Config, doc: dict) -> dict[str, torch.Tensor]:
    """All non-LLM weights of a folder (own safetensors + external originals), strictly checked."""
    from safetensors.torch import load_file
    ext = {k: (str(folder / v) if not Path(v).is_absolute() else v) for k, v in doc.get("external", {}).items()}
    unknown_ext = sorted(set(ext) - {"eva", "blip2", "ckpt"})
    if unknown_ext:
        raise CheckpointError(f"{folder}/config.json: unknown external source(s) {unknown_ext}; use eva, blip2, ckpt")
    state = convert_state(cfg, ext.get("eva"), ext.get("blip2"), ext.get("ckpt"))
    wfile = folder / WEIGHTS_FILE
    if wfile.is_file():
        try:
            own = load_file(wfile)
        except Exception as e:  # safetensors raises its own error types for damaged headers/data
            raise CheckpointError(f"{wfile} is damaged ({e}); re-run `minigpt4 convert`") from None
        state.update(own)
    layout = expected_layout(cfg)
    base = {k: v for k, v in state.items() if not (k.startswith("llm.") and "lora_" in k)}
    check_layout(base, layout, f"model folder '{folder}'",
                 hint=f"the folder must hold every weight of its config (parts {list(PARTS)}); re-run "
                      f"`minigpt4 convert` with all checkpoints, or fix config.json")
    return state


def from_pretrained(folder: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32",
                    quantize: str | None = None, llm: str | None = None):
    """Load a folder written by `convert` / `save_pretrained`; `llm` swaps in another LLM (HF folder
    or .gguf) of the same hidden size, e.g. when a linked LLM has moved."""
    from minigpt4.utils import parse_dtype, resolve_device
    folder = Path(folder)
    t0 = time.perf_counter()
    cfg, doc = read_folder_config(folder)
    if llm:
        cfg.llm.source, cfg.llm.path, cfg.llm.tokenizer = _llm_source_for(llm), str(llm), None
    state = folder_state(folder, cfg, doc)  # fail on bad weights before reading the LLM
    model = assemble(cfg, state, parse_dtype(dtype), resolve_device(device), quantize, seed=None)
    log.info("loaded %s in %.2f s", folder, time.perf_counter() - t0)
    return model


# --- the one entry point -----------------------------------------------------------------------
def _llm_source_for(path: str) -> str:
    p = Path(path)
    if p.suffix == ".gguf":
        return "gguf"
    if p.is_dir() and (p / "config.json").is_file():
        return "hf"
    raise CheckpointError(f"--llm '{path}' is neither a .gguf file nor a Hugging Face model folder with "
                          f"config.json; point it at one of those")


def preset_config(name: str, llm: str | None = None) -> MiniGPT4Config:
    cfg = get_config(name)
    if llm:
        cfg.llm.source, cfg.llm.path = _llm_source_for(llm), str(llm)
    return cfg


def load_model(spec: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32",
               quantize: str | None = None, llm: str | None = None, eva: str | None = None,
               blip2: str | None = None, ckpt: str | None = None, seed: int | None = 0):
    """Load a model from a preset name or a converted folder.

    - a folder (written by `minigpt4 convert` / save_pretrained): everything comes from it;
    - "tiny", "tiny-llama2", "small": random parts unless checkpoints are given (tests, training
      from scratch); `llm=` swaps in another LLM;
    - "vicuna-7b", "vicuna-13b", "llama2-7b": need `llm=` (Hugging Face folder) plus the original
      checkpoints `eva=`, `blip2=` (not for llama2-7b) and `ckpt=`.
    """
    from minigpt4.utils import parse_dtype, resolve_device
    spec_s = str(spec)
    if "@" in spec_s and not Path(spec_s).exists():
        base, run = spec_s.rsplit("@", 1)  # default@stage0@RUN: the run on a pinned base
        if not (base == "default" and not os.sep in run and run.startswith("stage")):
            # MODEL@RUN: a model plus the trainable weights of a training run (its latest checkpoint,
            # a checkpoint, a .safetensors file or a published stage folder such as checkpoints/default/stage2)
            # A run of the default model carries its own projection (and adapters): load it on a vision
            # side only, never on a published stage whose adapters are already merged.
            if base == "default":  # on the vision side the run was trained on
                from minigpt4.weights.default import trained_on
                base = f"default@{trained_on(run)}"
            # int8 comes after the run's weights: LoRA adapters are folded into fp32 weights first
            model = load_model(base, device, dtype, None if quantize == "int8" else quantize, llm, eva, blip2,
                               ckpt, seed)
            return quantize_after_merge(apply_published_settings(apply_trainable(model, run), run), quantize)
    if spec_s == "default" or spec_s.startswith("default@"):  # the weights this project trained (weights/default.py)
        from minigpt4.weights.default import default_config, default_lora, load_default_state, parse_spec
        stage = parse_spec(spec_s)
        cfg = default_config(preset_config("small", llm), stage=stage)
        state = load_default_state(stage=stage)
        lora = default_lora(stage=stage)
        if lora is None:
            return assemble(cfg, state, parse_dtype(dtype), resolve_device(device), quantize, seed)
        # Adapters are folded into the fp32 LLM before any int8 quantization sees its weights.
        if quantize not in (None, "int8"):
            raise ValueError(f"{spec_s} carries LoRA adapters, which are merged into the LLM's fp32 weights: "
                             f"use --quantize int8 or none, not {quantize}")
        model = assemble(cfg, state, parse_dtype(dtype), resolve_device(device), None, seed)
        merge_adapters(model, *lora, f"default model {spec_s}")
        return quantize_after_merge(model, quantize)
    if spec_s not in PRESETS:
        p = Path(spec_s)
        if p.is_dir():
            return from_pretrained(p, device, dtype, quantize, llm=llm)
        if p.exists() or os.sep in spec_s or spec_s.startswith("."):
            raise CheckpointError(f"model '{spec_s}' is not a converted model folder; pass a folder made by "
                                  f"`minigpt4 convert`, or a preset: {', '.join(PRESETS)}")
        raise CheckpointError(f"unknown model '{spec_s}': not a preset ({', '.join(PRESETS)}) and no such "
                              f"folder; check the name or path")
    cfg = preset_config(spec_s, llm)
    if needs_weights(cfg) and (missing := unprovided_parts(cfg, eva, blip2, ckpt)):
        flags = sorted({FLAG_FOR_PART[p] for p in missing})
        raise CheckpointError(f"preset '{spec_s}' is a released model and needs its weights for {missing}: "
                              f"pass {', '.join(flags)}, or convert once with `minigpt4 convert` and load "
                              f"the folder")
    state = convert_state(cfg, eva, blip2, ckpt)  # fail on bad checkpoints before reading the LLM
    missing = missing_parts(cfg, state)
    if missing and needs_weights(cfg):
        flags = sorted({FLAG_FOR_PART[p] for p in missing})
        raise CheckpointError(f"preset '{spec_s}' is a released model and needs its weights for {missing}: "
                              f"pass {', '.join(flags)}, or convert once with `minigpt4 convert` and load "
                              f"the folder")
    if missing and (state or cfg.llm.source != "random"):
        log.warning("no weights given for %s of preset %s: randomly initialised (train it, or load a "
                    "converted/trained model folder)", missing, spec_s)
    return assemble(cfg, state, parse_dtype(dtype), resolve_device(device), quantize, seed)


def apply_trainable(model, run: str | Path):
    """Load a training run's trainable weights (run dir -> latest checkpoint, a checkpoint folder or
    a .safetensors file) into `model`; every key must exist in the model with the same shape."""
    from minigpt4.train.checkpoint import load_trainable, lora_spec
    try:
        tensors = load_trainable(run)
    except FileNotFoundError as e:
        raise CheckpointError(f"{e} (model spec MODEL@RUN wants a training run folder)") from None
    lora = {k: v for k, v in tensors.items() if "lora_" in k}
    if model.word_proj is None and any(k.startswith("word_proj.") for k in tensors):
        raise CheckpointError(f"{run} carries a word readout (word_proj.*) but the model it is loaded onto has none: "
                              f"load it onto the base it records, e.g. `default@{run}` or default@stage0-dual@{run}")
    copy_into(model, {k: v for k, v in tensors.items() if k not in lora},
              f"training run {run} (load it onto the model it was trained from)")
    if lora:
        merge_adapters(model, lora, lora_spec(run), f"training run {run}")
    return model


def apply_published_settings(model, run: str | Path):
    """A published stage folder's readout settings (publish --abstain / --ground / --always) on `model`, so that
    `default@VISION@FOLDER` answers as the folder would once shipped (the base's settings otherwise: session 31
    evaluated a candidate so without noticing). Runs and checkpoints carry none: the model is returned as it was."""
    from minigpt4.train.checkpoint import is_published_stage
    from minigpt4.weights.default import proj_metadata, readout_config
    if model.word_proj is None or not is_published_stage(run):
        return model
    try:  # the folder's readout settings, read as any projection file's are
        published = readout_config(proj_metadata(Path(run) / "proj.safetensors"))
        model.set_word_abstain(published.word_abstain)
        model.set_word_ground_sure(published.word_ground_sure)
        model.set_word_always(published.word_always)
    except ValueError as e:
        raise CheckpointError(f"{run}: {e}") from None
    model.cfg.word_ground = published.word_ground
    return model


def quantize_after_merge(model, quantize: str | None):
    """int8 (CPU) on a model whose LoRA adapters were merged after loading; other modes were applied
    at load time."""
    if quantize == "int8":
        from minigpt4.model.quantize import int8_problem, quantize_llm_int8
        if (problem := int8_problem(model.device, next(model.llm.parameters()).dtype)) is not None:
            raise ValueError(problem)
        quantize_llm_int8(model.llm, model.tokenizer)
        model.eval()
    return model


def merge_adapters(model, lora: dict, spec: dict | None, what: str) -> None:
    """Fold LoRA adapters into the LLM for inference, with a CheckpointError that names `what`."""
    from minigpt4.model.lora import merge_lora
    if spec is None:
        raise CheckpointError(f"{what} has LoRA adapters but no LoRA settings (r, alpha) saved with them; "
                              f"re-save it with this version of minigpt4 train")
    try:
        merge_lora(model, lora, spec)
    except ValueError as e:
        raise CheckpointError(f"{what}: {e}") from None


# --- convert -------------------------------------------------------------------------------------
def convert(preset: str, out: str | Path, eva: str | None = None, blip2: str | None = None,
            ckpt: str | None = None, llm: str | None = None, link_llm: bool = False,
            link_checkpoints: bool = False, overwrite: bool = False, seed: int = 0,
            progress: bool = True) -> Path:
    """Original checkpoints -> one self-describing folder, written atomically (out.tmp then rename).

    `link_llm` references the LLM instead of copying it; `link_checkpoints` keeps only the trained
    projection in the folder and references eva/blip2 by absolute path (small folders)."""
    from tqdm import tqdm

    from minigpt4.utils import atomic_save_safetensors
    from minigpt4.weights.hf import copy_hf_dir, save_llm
    cfg = preset_config(preset, llm)
    out = Path(out)
    if out.exists() and not overwrite:  # fail before the slow reads
        raise FileExistsError(f"'{out}' already exists; pass overwrite=True (--overwrite) or pick another --out")
    # Everything must be in the folder (or linked): check before the slow reads.
    if not (blip2 and cfg.qformer is not None and not eva) and (missing := unprovided_parts(cfg, eva, blip2, ckpt)):
        flags = sorted({FLAG_FOR_PART[p] for p in missing})
        raise CheckpointError(f"convert --preset {preset}: no weights for {missing}; pass {', '.join(flags)}")
    if cfg.llm.source == "hf" and not cfg.llm.path:
        raise CheckpointError(f"preset '{preset}' needs the LLM's Hugging Face folder: pass --llm PATH "
                              f"(add --link-llm to reference it instead of copying it)")
    bar = tqdm(total=3 + sum(bool(x) for x in (eva, blip2, ckpt)), desc="convert", unit="step",
               disable=not progress)

    def step(msg: str) -> None:
        bar.set_postfix_str(msg)
        bar.update(1)

    state = convert_state(cfg, eva, blip2, ckpt, step)
    missing = missing_parts(cfg, state)
    if missing:  # e.g. a BLIP-2 file without the visual_encoder.* that stood in for --eva
        flags = sorted({FLAG_FOR_PART[p] for p in missing})
        raise CheckpointError(f"convert --preset {preset}: no weights for {missing}; pass {', '.join(flags)}")
    external = {}
    if link_checkpoints:  # the originals are re-read at load time; only the trained projection is stored
        external = {k: str(Path(v).resolve()) for k, v in (("eva", eva), ("blip2", blip2)) if v}
        state = {k: v for k, v in state.items() if part_of(k) == "proj"}
    tmp = _tmp_dir(out)
    try:
        step("writing model.safetensors")
        atomic_save_safetensors(state, tmp / WEIGHTS_FILE, metadata={"format": FORMAT})
        step(f"LLM ({cfg.llm.source})")
        src = cfg.llm.source
        if src == "random":
            from minigpt4.model.llm import build_random_llm, load_tokenizer
            torch.manual_seed(seed)  # the same LLM that load_model(preset, seed=seed) builds
            save_llm(build_random_llm(cfg.llm.arch), load_tokenizer(cfg.llm.tokenizer), tmp / LLM_DIR)
            cfg.llm.source, cfg.llm.path, cfg.llm.tokenizer = "folder", LLM_DIR, None
        elif link_llm or (src == "gguf" and cfg.llm.path is None):
            if cfg.llm.path:
                cfg.llm.path = str(Path(cfg.llm.path).resolve())
        elif src == "hf" and copy_hf_dir(Path(cfg.llm.path), tmp / LLM_DIR):
            cfg.llm.path, cfg.llm.tokenizer = LLM_DIR, None
        else:  # .bin-only HF folder or a GGUF file: load once, store as safetensors
            from minigpt4.model.llm import load_llm
            model_llm, tok = load_llm(cfg.llm)
            save_llm(model_llm, tok, tmp / LLM_DIR)
            cfg.llm.source, cfg.llm.path, cfg.llm.tokenizer = "folder", LLM_DIR, None
        write_folder_config(tmp, cfg, external)
        step("done")
        _finish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return out


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())

