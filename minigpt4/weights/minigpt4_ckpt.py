"""MiniGPT-4 stage-1/stage-2 checkpoints (`pretrained_minigpt4_7b.pth`, `prerained_minigpt4_7b.pth`,
`pretrained_minigpt4_llama2_7b.pth`, our own training checkpoints saved the same way):
`{"model": {"llama_proj.weight", "llama_proj.bias"}, "optimizer": ..., "epoch": ...}` -> `proj.*`.

The projection is the only trained part, so its shape tells which model the checkpoint is for:
768 -> 4096 Vicuna-7B, 768 -> 5120 Vicuna-13B, 5632 -> 4096 LLaMA-2-7B (4 concatenated ViT tokens).
A mismatch names the preset that fits.
"""
from __future__ import annotations

import torch

from minigpt4.config import PRESETS, MiniGPT4Config, get_config
from minigpt4.weights.common import CheckpointError, load_pickle, short, tensors_only

KEY_MAP = {"llama_proj.weight": "proj.weight", "llama_proj.bias": "proj.bias"}
# The original saver drops frozen *parameters* but keeps buffers, so a stage checkpoint may also
# carry these non-learned buffers; they are recomputed by our modules and safe to ignore.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")


def presets_for(in_features: int, out_features: int) -> list[str]:
    return [name for name in PRESETS
            if (c := get_config(name)).proj_in_features == in_features and c.llm.hidden_size == out_features]


def map_stage_ckpt(state: dict[str, torch.Tensor], cfg: MiniGPT4Config, source: str = "MiniGPT-4 checkpoint"
                   ) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    unexpected = sorted(set(state) - set(KEY_MAP))
    missing = sorted(set(KEY_MAP) - set(state))
    if unexpected or missing:
        lora = any("lora_" in k for k in unexpected)
        raise CheckpointError(
            f"{source} is not a MiniGPT-4 projection checkpoint: missing keys {missing}, unexpected keys "
            f"{short(unexpected)}" + ("; it holds LoRA weights (a MiniGPT-v2 checkpoint?), which this "
                                     "loader does not read" if lora else "") +
            "; pass the stage-1/stage-2 checkpoint whose 'model' holds llama_proj.weight and llama_proj.bias")
    w, b = state["llama_proj.weight"], state["llama_proj.bias"]
    if w.ndim != 2 or b.shape != (w.shape[0],):
        raise CheckpointError(f"{source}: llama_proj.weight is {list(w.shape)} and llama_proj.bias is "
                              f"{list(b.shape)}; not a Linear layer - the file is damaged or not MiniGPT-4's")
    out_f, in_f = w.shape
    want_in, want_out = cfg.proj_in_features, cfg.llm.hidden_size
    if (in_f, out_f) != (want_in, want_out):
        fits = presets_for(in_f, out_f)
        fix = (f"this checkpoint is for {' or '.join(fits)}, use --preset {fits[0]}" if fits else
               "no preset has this shape; make a config whose projection matches")
        raise CheckpointError(f"{source}: llama_proj is {in_f}->{out_f} but the model's projection "
                              f"(preset '{cfg.name}') is {want_in}->{want_out}: {fix}")
    return {KEY_MAP[k]: v for k, v in state.items()}


def load_stage_ckpt(path: str, cfg: MiniGPT4Config) -> dict[str, torch.Tensor]:
    ckpt = load_pickle(path, "MiniGPT-4")
    if not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"MiniGPT-4 checkpoint '{path}' has no 'model' dict (keys: {short(ckpt)}); "
                              f"pass a stage-1/stage-2 checkpoint such as pretrained_minigpt4_7b.pth")
    return map_stage_ckpt(tensors_only(ckpt["model"], path, "MiniGPT-4"), cfg, f"MiniGPT-4 checkpoint '{path}'")
