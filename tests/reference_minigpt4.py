"""An independent, deliberately plain implementation of the ORIGINAL MiniGPT-4 image path, written
from the reference facts (docs: shared/reference/minigpt4-reference.md, LAVIS eva_vit.py /
Qformer.py), working directly on the ORIGINAL state-dict keys. It imports nothing from minigpt4:
tests compare our loaders + model against it, so a wrong key map, a swapped bias or a missing
cross-attention shows up as a numeric difference.

Also here: builders of random checkpoints in the original key layout and shapes, including the
keys the original files carry but MiniGPT-4 never uses.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# --- forward pass over original keys ------------------------------------------------------------


def _ln(x, sd, prefix, eps):
    return F.layer_norm(x, (x.shape[-1],), sd[prefix + "weight"], sd[prefix + "bias"], eps)


def _linear(x, sd, prefix):
    return x @ sd[prefix + "weight"].t() + sd[prefix + "bias"]


def _depth(sd, pattern_prefix):
    n = 0
    while any(k.startswith(f"{pattern_prefix}{n}.") for k in sd):
        n += 1
    return n


def eva_vit(pixels, sd, heads, eps=1e-6):
    """EVA ViT-g as LAVIS runs it: patch conv, CLS, abs pos, pre-norm blocks, no final norm."""
    w = sd["patch_embed.proj.weight"]
    x = F.conv2d(pixels, w, sd["patch_embed.proj.bias"], stride=w.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    B, _, C = x.shape
    x = torch.cat([sd["cls_token"].expand(B, 1, C), x], dim=1) + sd["pos_embed"]
    N = x.shape[1]
    d = C // heads
    for i in range(_depth(sd, "blocks.")):
        p = f"blocks.{i}."
        h = _ln(x, sd, p + "norm1.", eps)
        # qkv Linear has no bias; LAVIS builds it as cat(q_bias, zeros, v_bias): k gets no bias.
        qkv_bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros_like(sd[p + "attn.v_bias"]), sd[p + "attn.v_bias"]])
        qkv = (h @ sd[p + "attn.qkv.weight"].t() + qkv_bias).reshape(B, N, 3, heads, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * d ** -0.5, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = x + _linear(out, sd, p + "attn.proj.")
        h = _ln(x, sd, p + "norm2.", eps)
        x = x + _linear(F.gelu(_linear(h, sd, p + "mlp.fc1.")), sd, p + "mlp.fc2.")
    return x


def _bert_attention(x, context, sd, p, heads, eps):
    """BertAttention: multi-head attention, then BertSelfOutput = LayerNorm(dense(.) + x)."""
    B, Nq, C = x.shape
    d = C // heads

    def split(t):
        return t.reshape(B, t.shape[1], heads, d).permute(0, 2, 1, 3)

    q = split(_linear(x, sd, p + "self.query."))
    k = split(_linear(context, sd, p + "self.key."))
    v = split(_linear(context, sd, p + "self.value."))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    ctx = (scores.softmax(dim=-1) @ v).permute(0, 2, 1, 3).reshape(B, Nq, C)
    return _ln(_linear(ctx, sd, p + "output.dense.") + x, sd, p + "output.LayerNorm.", eps)


def qformer(image_embeds, sd, heads, cross_attention_freq=2, eps=1e-12):
    """BLIP-2 Q-Former query path (Qformer.bert with query_embeds only, no text)."""
    B = image_embeds.shape[0]
    q = sd["query_tokens"].expand(B, -1, -1)
    q = _ln(q, sd, "Qformer.bert.embeddings.LayerNorm.", eps)
    for i in range(_depth(sd, "Qformer.bert.encoder.layer.")):
        p = f"Qformer.bert.encoder.layer.{i}."
        q = _bert_attention(q, q, sd, p + "attention.", heads, eps)
        if i % cross_attention_freq == 0:
            q = _bert_attention(q, image_embeds, sd, p + "crossattention.", heads, eps)
        h = F.gelu(_linear(q, sd, p + "intermediate_query.dense."))
        q = _ln(_linear(h, sd, p + "output_query.dense.") + q, sd, p + "output_query.LayerNorm.", eps)
    return q


def interpolate_pos_embed(pos_embed, num_patches):
    """LAVIS eva_vit.interpolate_pos_embed: bicubic on the patch grid, CLS kept."""
    C = pos_embed.shape[-1]
    old = int((pos_embed.shape[1] - 1) ** 0.5)
    new = int(num_patches ** 0.5)
    if old == new:
        return pos_embed
    grid = pos_embed[:, 1:].reshape(-1, old, old, C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


def minigpt4_vicuna_image_embeds(pixels, eva_sd, blip2_model_sd, stage_model_sd, vit_heads, qformer_heads,
                                 cross_attention_freq=2):
    """MiniGPT-4 (Vicuna) encode_img: ln_vision(ViT) -> Q-Former -> llama_proj."""
    x = eva_vit(pixels, eva_sd, vit_heads)
    x = _ln(x, blip2_model_sd, "ln_vision.", 1e-5)
    q = qformer(x, blip2_model_sd, qformer_heads, cross_attention_freq)
    return _linear(q, stage_model_sd, "llama_proj.")


def minigpt4_llama2_image_embeds(pixels, eva_sd, stage_model_sd, vit_heads):
    """MiniGPT-4 (LLaMA-2) encode_img: ln_vision (default init: weight 1, bias 0) -> drop CLS ->
    view(B, N/4, 4C) -> llama_proj."""
    x = eva_vit(pixels, eva_sd, vit_heads)
    x = F.layer_norm(x, (x.shape[-1],), eps=1e-5)
    x = x[:, 1:, :]
    B, N, C = x.shape
    return _linear(x.reshape(B, N // 4, C * 4), stage_model_sd, "llama_proj.")


# --- random checkpoints in the original layout ----------------------------------------------------


def _lin(g, sd, prefix, n_in, n_out, bias=True):
    sd[prefix + "weight"] = torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in)
    if bias:
        sd[prefix + "bias"] = torch.randn(n_out, generator=g) * 0.1


def _norm(g, sd, prefix, n):
    sd[prefix + "weight"] = 1 + torch.randn(n, generator=g) * 0.1
    sd[prefix + "bias"] = torch.randn(n, generator=g) * 0.1


def make_eva_state(width=48, depth=2, mlp=96, patch=14, image_size=56, seed=1, extra=()):
    """A bare `eva_vit_g.pth`-style state dict. `extra` adds known-unused keys, e.g. ("norm", "head")."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    n = (image_size // patch) ** 2
    sd["cls_token"] = torch.randn(1, 1, width, generator=g) * 0.5
    sd["pos_embed"] = torch.randn(1, n + 1, width, generator=g) * 0.5
    sd["patch_embed.proj.weight"] = torch.randn(width, 3, patch, patch, generator=g) / math.sqrt(3 * patch * patch)
    sd["patch_embed.proj.bias"] = torch.randn(width, generator=g) * 0.1
    for i in range(depth):
        p = f"blocks.{i}."
        _norm(g, sd, p + "norm1.", width)
        _lin(g, sd, p + "attn.qkv.", width, 3 * width, bias=False)
        sd[p + "attn.q_bias"] = torch.randn(width, generator=g) * 0.3
        sd[p + "attn.v_bias"] = torch.randn(width, generator=g) * 0.3
        _lin(g, sd, p + "attn.proj.", width, width)
        _norm(g, sd, p + "norm2.", width)
        _lin(g, sd, p + "mlp.fc1.", width, mlp)
        _lin(g, sd, p + "mlp.fc2.", mlp, width)
    if "norm" in extra:
        _norm(g, sd, "norm.", width)
    if "head" in extra:
        _lin(g, sd, "head.", width, 10)
    return sd


def make_blip2_model_state(vision_width=48, hidden=32, layers=2, intermediate=64, queries=8, freq=2,
                           vocab=30, max_pos=16, seed=2):
    """`blip2_pretrained_flant5xxl.pth`["model"]-style dict, with all the text-side keys it carries."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    _norm(g, sd, "ln_vision.", vision_width)
    sd["query_tokens"] = torch.randn(1, queries, hidden, generator=g) * 0.5
    b = "Qformer.bert."
    sd[b + "embeddings.word_embeddings.weight"] = torch.randn(vocab, hidden, generator=g)
    sd[b + "embeddings.position_embeddings.weight"] = torch.randn(max_pos, hidden, generator=g)
    sd[b + "embeddings.position_ids"] = torch.arange(max_pos).expand(1, -1).clone()
    _norm(g, sd, b + "embeddings.LayerNorm.", hidden)
    for i in range(layers):
        p = f"{b}encoder.layer.{i}."
        blocks = ["attention."] + (["crossattention."] if i % freq == 0 else [])
        for a in blocks:
            kv_in = vision_width if a == "crossattention." else hidden
            _lin(g, sd, p + a + "self.query.", hidden, hidden)
            _lin(g, sd, p + a + "self.key.", kv_in, hidden)
            _lin(g, sd, p + a + "self.value.", kv_in, hidden)
            _lin(g, sd, p + a + "output.dense.", hidden, hidden)
            _norm(g, sd, p + a + "output.LayerNorm.", hidden)
        for kind in ("", "_query"):  # text FFN (unused by MiniGPT-4) and query FFN
            _lin(g, sd, p + f"intermediate{kind}.dense.", hidden, intermediate)
            _lin(g, sd, p + f"output{kind}.dense.", intermediate, hidden)
            _norm(g, sd, p + f"output{kind}.LayerNorm.", hidden)
    c = "Qformer.cls.predictions."
    _lin(g, sd, c + "transform.dense.", hidden, hidden)
    _norm(g, sd, c + "transform.LayerNorm.", hidden)
    sd[c + "bias"] = torch.zeros(vocab)
    _lin(g, sd, c + "decoder.", hidden, vocab)
    _lin(g, sd, "vision_proj.", hidden, 16)
    _lin(g, sd, "text_proj.", hidden, 16)
    _lin(g, sd, "itm_head.", hidden, 2)
    sd["temp"] = torch.tensor(0.07)
    return sd


def make_stage_ckpt(n_in, n_out, seed=3):
    """A MiniGPT-4 stage checkpoint as the original runner saves it."""
    g = torch.Generator().manual_seed(seed)
    model = {}
    _lin(g, model, "llama_proj.", n_in, n_out)
    return {"model": model, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "config": {"run": {"task": "image_text_pretrain"}}, "scaler": None, "epoch": 3}
