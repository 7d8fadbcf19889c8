"""Export of the stage-0 vision side, and loading it into a `MiniGPT4`.

The export folder (committed as checkpoints/default/stage0/):
  vision.safetensors - visual_encoder.*, ln_vision.*, qformer.* in MiniGPT4 key names, stored
                       fp16 (half the git history per commit); loaded into fp32 and computed there
  heads.safetensors  - the stage-0-only text tower and heads (only for a warm restart)
  stage0.json        - preset, step, images seen, last probe, config, compact vocab
  proj.safetensors   - only when stage 0 trained the query_word map (model.query_word_loss): that map in the
                       projection's key names, so `default@stage0-NAME` reads the image through it (the frozen
                       LLM reading names zero-shot) and stage 1 can start from it
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from minigpt4.utils import atomic_write_json

VISION_FILE = "vision.safetensors"


def stored(t: torch.Tensor) -> torch.Tensor:
    """fp16 for float weights (what the export holds); everything else as is. Stage 1 trains on
    these rounded weights, so what ships and what the projection learned on are the same."""
    return t.half() if t.is_floating_point() else t


def export(run, out_dir: Path, probe_metrics: dict | None = None) -> None:
    """The small committed copy: `vision.safetensors` (the frozen vision side in MiniGPT4 key
    names, fp16), `heads.safetensors` (stage-0-only text tower and heads, for a warm restart),
    `stage0.json` (step, vocab, config, last probe)."""
    from minigpt4.utils import atomic_save_safetensors
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vision = {k: stored(v) for k, v in run.model.vision_state_dict().items()}
    heads = {k: stored(v) for k, v in run.model.state_dict().items() if k not in vision}
    meta = {"preset": run.cfg.model, "step": str(run.step)}
    atomic_save_safetensors(vision, out_dir / VISION_FILE, metadata=meta)
    atomic_save_safetensors(heads, out_dir / "heads.safetensors", metadata=meta)
    if hasattr(run.model, "query_word"):
        proj = {f"proj.{k}": v.detach().float().contiguous() for k, v in run.model.query_word.state_dict().items()}
        atomic_save_safetensors(proj, out_dir / "proj.safetensors", metadata=meta)
    atomic_write_json(out_dir / "stage0.json", {
        "preset": run.cfg.model, "step": run.step, "images": run.images, "probe": probe_metrics,
        "vision_config": run.preset.to_dict()["vision"], "qformer_config": run.preset.to_dict()["qformer"],
        "config": run.cfg.to_dict(), "vocab": run.vocab.state()})


def load_vision(model, path: str | Path, strict: bool = True) -> dict:
    """Load an exported vision side (folder or vision.safetensors) into a `MiniGPT4` and return
    the export's stage0.json (or {}). `strict`: every visual_encoder/ln_vision/qformer key of the
    model must be in the file with the same shape, and nothing else may be."""
    from safetensors.torch import load_file
    path = Path(path)
    file = path / VISION_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"no stage-0 export at '{file}'; run `minigpt4 pretrain-vision "
                                f"recipes/default/stage0.yaml` (it writes export_dir) or pass the right folder")
    weights = load_file(file)
    prefixes = ("visual_encoder.", "ln_vision.", "qformer.")
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    shapes = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(weights)) if weights[k].shape != own[k].shape]
    if strict and (missing or extra or shapes):
        raise ValueError(f"stage-0 export '{file}' does not match this model's vision side "
                         f"(missing {missing[:5]}, unexpected {extra[:5]}, shape mismatches {shapes[:3]}); "
                         f"export and model must come from the same preset sizes")
    with torch.no_grad():
        for k, v in weights.items():
            if k in own and v.shape == own[k].shape:
                own[k].copy_(v.to(own[k].dtype))
    meta = path / "stage0.json" if path.is_dir() else file.with_name("stage0.json")
    return json.loads(meta.read_text()) if meta.exists() else {}
