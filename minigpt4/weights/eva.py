"""`eva_vit_g.pth` (the bare EVA ViT-g/14 state dict used by BLIP-2 / MiniGPT-4) -> `visual_encoder.*`.

Our ViT keeps the original parameter names, so the map is the identity under a prefix. What the
file may hold beyond that is listed explicitly: LAVIS builds the ViT without its final norm and
classifier head (`use_mean_pooling=False`, those lines are commented out) and loads with
strict=False, so `norm.*`, `fc_norm.*` and `head.*` are known to be unused. Anything else
unknown is an error. `pos_embed` is resized (bicubic, as LAVIS' `interpolate_pos_embed`) when
the config's image size differs from the checkpoint's (e.g. 448 px for MiniGPT-v2).
"""
from __future__ import annotations

import logging
import re

import torch

from minigpt4.config import MiniGPT4Config
from minigpt4.model.vision import interpolate_pos_embed
from minigpt4.weights.common import check_layout, expected_layout, load_pickle, tensors_only

log = logging.getLogger(__name__)

PREFIX = "visual_encoder."
# Known to be in EVA checkpoints but not used by BLIP-2's ViT (no final norm, no classifier).
IGNORED_PREFIXES = ("norm.", "fc_norm.", "head.")
# Our key (without PREFIX) <- original key, per block and for the stem. Identity by design; written
# out so the map is explicit and a renamed module in our ViT breaks this table, not silently a load.
STEM_KEYS = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
BLOCK_KEYS = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.q_bias", "attn.v_bias",
              "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
              "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]


def key_map(depth: int) -> dict[str, str]:
    """original key -> our key."""
    m = {k: PREFIX + k for k in STEM_KEYS}
    for i in range(depth):
        m.update({f"blocks.{i}.{k}": f"{PREFIX}blocks.{i}.{k}" for k in BLOCK_KEYS})
    return m


def describe(state: dict[str, torch.Tensor]) -> str:
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    w = state.get("patch_embed.proj.weight")
    if w is None:
        return f"{depth} blocks"
    return f"width {w.shape[0]}, patch {w.shape[-1]}, {depth} blocks"


def map_eva(state: dict[str, torch.Tensor], cfg: MiniGPT4Config, source: str = "EVA ViT checkpoint"
            ) -> dict[str, torch.Tensor]:
    """Original EVA ViT state dict -> our `visual_encoder.*` keys, strictly checked."""
    kmap = key_map(cfg.vision.depth)
    out, unknown = {}, []
    for k, v in state.items():
        if k in kmap:
            out[kmap[k]] = v
        elif k.startswith(IGNORED_PREFIXES):
            continue
        elif re.match(r"blocks\.\d+\.", k) and k.split(".", 2)[2] in BLOCK_KEYS:
            out[PREFIX + k] = v  # a block beyond the config's depth: reported as unexpected below
        else:
            unknown.append(k)
    pe = out.get(PREFIX + "pos_embed")
    want = cfg.vision.num_patches + 1
    if pe is not None and pe.shape[1] != want and pe.shape[-1] == cfg.vision.width:
        log.info("interpolating pos_embed from %d to %d tokens", pe.shape[1], want)
        out[PREFIX + "pos_embed"] = interpolate_pos_embed(pe, cfg.vision.num_patches)
    out.update({PREFIX + k: state[k] for k in unknown})  # listed as unexpected by the check
    v = cfg.vision
    check_layout(out, expected_layout(cfg, ["vision"]), source,
                 hint=f"the checkpoint is a ViT with {describe(state)}; the config '{cfg.name}' wants width "
                      f"{v.width}, patch {v.patch_size}, {v.depth} blocks - use the preset made for this "
                      f"checkpoint (vicuna-7b, vicuna-13b, llama2-7b use EVA ViT-g: 1408 wide, 39 blocks)")
    return out


def load_eva(path: str, cfg: MiniGPT4Config) -> dict[str, torch.Tensor]:
    state = load_pickle(path, "EVA ViT")
    if set(state) == {"model"} or set(state) == {"state_dict"}:
        state = next(iter(state.values()))  # tolerate one wrapping level
    return map_eva(tensors_only(state, path, "EVA ViT"), cfg, f"EVA ViT checkpoint '{path}'")
