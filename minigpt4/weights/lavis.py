"""BLIP-2 checkpoint (`blip2_pretrained_flant5xxl.pth`, weights under `ckpt["model"]`) ->
`ln_vision.*` + `qformer.*`.

Only the Q-Former's query path is used by MiniGPT-4. The text half that the file also holds is
ignored by an explicit list (`IGNORED`); anything else unknown or missing is an error. A full
LAVIS checkpoint that also carries `visual_encoder.*` is accepted: those keys go through the EVA
map.
"""
from __future__ import annotations

import re

import torch

from minigpt4.config import MiniGPT4Config
from minigpt4.weights.common import CheckpointError, check_layout, expected_layout, load_pickle, tensors_only

BERT = "Qformer.bert."
# original (after `Qformer.bert.encoder.layer.N.`) -> ours (after `qformer.layers.N.`)
ATTN = {"self.query": "query", "self.key": "key", "self.value": "value",
        "output.dense": "dense", "output.LayerNorm": "norm"}
LAYER_MAP = {**{f"attention.{o}": f"self_attn.{n}" for o, n in ATTN.items()},
             **{f"crossattention.{o}": f"cross_attn.{n}" for o, n in ATTN.items()},
             "intermediate_query.dense": "ffn.fc1", "output_query.dense": "ffn.fc2",
             "output_query.LayerNorm": "ffn.norm"}
TOP_MAP = {"query_tokens": "qformer.query_tokens",
           "ln_vision.weight": "ln_vision.weight", "ln_vision.bias": "ln_vision.bias",
           f"{BERT}embeddings.LayerNorm.weight": "qformer.embed_norm.weight",
           f"{BERT}embeddings.LayerNorm.bias": "qformer.embed_norm.bias"}
# In the file, unused by MiniGPT-4: BERT's text embeddings and text FFN, the LM head, and BLIP-2's
# contrastive/matching heads.
IGNORED = [re.compile(p) for p in (
    r"Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\.", r"Qformer\.bert\.embeddings\.position_ids$",
    r"Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.", r"Qformer\.cls\.",
    r"vision_proj\.", r"text_proj\.", r"itm_head\.", r"temp$")]
LAYER_RE = re.compile(r"Qformer\.bert\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")


def map_key(k: str) -> str | None:
    """Our name for an original key, or None if it is not a known used key."""
    if k in TOP_MAP:
        return TOP_MAP[k]
    m = LAYER_RE.match(k)
    if m and m.group(2) in LAYER_MAP:
        return f"qformer.layers.{m.group(1)}.{LAYER_MAP[m.group(2)]}.{m.group(3)}"
    return None


def is_ignored(k: str) -> bool:
    return any(p.match(k) for p in IGNORED)


def map_blip2(state: dict[str, torch.Tensor], cfg: MiniGPT4Config, source: str = "BLIP-2 checkpoint"
              ) -> dict[str, torch.Tensor]:
    """BLIP-2 `ckpt["model"]` -> our `ln_vision.*`, `qformer.*` (and `visual_encoder.*` if present)."""
    if cfg.qformer is None:
        raise CheckpointError(f"{source}: the preset '{cfg.name}' has no Q-Former (LLaMA-2 variant: ViT "
                              f"tokens are concatenated), so a BLIP-2 checkpoint does not apply; drop --blip2")
    out, unknown, vision = {}, [], {}
    for k, v in state.items():
        ours = map_key(k)
        if ours is not None:
            out[ours] = v
        elif k.startswith("visual_encoder."):
            vision[k[len("visual_encoder."):]] = v
        elif not is_ignored(k):
            unknown.append(k)
    out.update({k: state[k] for k in unknown})  # reported as unexpected by the check below
    q = cfg.qformer
    n_layers = 1 + max((int(m.group(1)) for k in state if (m := LAYER_RE.match(k))), default=-1)
    check_layout(out, expected_layout(cfg, ["ln_vision", "qformer"]), source,
                 hint=f"the checkpoint's Q-Former has {n_layers} layers; the config '{cfg.name}' wants "
                      f"{q.layers} layers, hidden {q.hidden}, {q.num_query_tokens} queries, cross-attention "
                      f"every {q.cross_attention_freq} layers from a {cfg.vision.width}-wide ViT - use the "
                      f"preset made for this checkpoint (vicuna-7b/13b use BLIP-2's: 12 layers, 768, 32)")
    if vision:
        from minigpt4.weights.eva import map_eva
        out.update(map_eva(vision, cfg, f"{source} (visual_encoder.*)"))
    return out


def load_blip2(path: str, cfg: MiniGPT4Config) -> dict[str, torch.Tensor]:
    ckpt = load_pickle(path, "BLIP-2")
    state = ckpt.get("model", ckpt) if isinstance(ckpt.get("model"), dict) else ckpt
    return map_blip2(tensors_only(state, path, "BLIP-2"), cfg, f"BLIP-2 checkpoint '{path}'")
