"""BLIP-2 Q-Former, query path only.

N learned queries go through BERT-style post-norm layers: self-attention, cross-attention to
the image features on every `cross_attention_freq`-th layer (starting at layer 0), then the
query feed-forward. The text half of BERT (word/position embeddings, text FFN, LM head) is not
built: MiniGPT-4 never runs it. `minigpt4.weights.lavis` maps the original key names.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minigpt4.config import QFormerConfig


class MultiHeadAttention(nn.Module):
    """BERT attention + its output block: LayerNorm(x + dense(attn(x)))."""

    def __init__(self, hidden: int, heads: int, kv_width: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        split = lambda t: t.reshape(B, t.shape[1], self.heads, C // self.heads).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(context)), split(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
        return self.norm(x + self.dense(out))


class FeedForward(nn.Module):
    def __init__(self, hidden: int, intermediate: int, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.fc2(F.gelu(self.fc1(x))))


class QFormerLayer(nn.Module):
    def __init__(self, cfg: QFormerConfig, vision_width: int, has_cross_attention: bool):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.hidden, cfg.heads, cfg.hidden, cfg.eps)
        self.cross_attn = (MultiHeadAttention(cfg.hidden, cfg.heads, vision_width, cfg.eps)
                           if has_cross_attention else None)
        self.ffn = FeedForward(cfg.hidden, cfg.intermediate, cfg.eps)

    def forward(self, queries: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        queries = self.self_attn(queries, queries)
        if self.cross_attn is not None:
            queries = self.cross_attn(queries, image)
        return self.ffn(queries)


class QFormer(nn.Module):
    def __init__(self, cfg: QFormerConfig, vision_width: int, num_image_tokens: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_query_tokens, cfg.hidden))
        if cfg.image_pos_embed:
            if not num_image_tokens:
                raise ValueError("QFormerConfig.image_pos_embed needs num_image_tokens (the ViT's patches + CLS)")
            self.image_pos = nn.Parameter(torch.zeros(1, num_image_tokens, vision_width))
        self.embed_norm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.layers = nn.ModuleList(
            QFormerLayer(cfg, vision_width, has_cross_attention=(i % cfg.cross_attention_freq == 0))
            for i in range(cfg.layers))
        nn.init.normal_(self.query_tokens, std=0.02)

    @classmethod
    def for_vision(cls, cfg: QFormerConfig, vision) -> "QFormer":
        """The Q-Former that reads this ViT's tokens (its patches + CLS)."""
        return cls(cfg, vision.width, vision.num_patches + 1)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, tokens, vision_width) -> (B, num_query_tokens, hidden)."""
        if self.cfg.image_pos_embed:
            image_features = image_features + self.image_pos
        q = self.embed_norm(self.query_tokens.expand(image_features.shape[0], -1, -1))
        for layer in self.layers:
            q = layer(q, image_features)
        return q
