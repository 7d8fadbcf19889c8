"""EVA ViT-g/14 as used by BLIP-2 and MiniGPT-4 (sizes come from `VisionConfig`).

Parameter names follow the original `eva_vit_g.pth` layout (`blocks.N.attn.qkv.weight`,
`attn.q_bias`, `attn.v_bias`, ...) so that checkpoint loads with an identity key map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minigpt4.config import VisionConfig


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, patches, width)


class Attention(nn.Module):
    """One fused qkv Linear without bias; q and v get their own bias, k has none (EVA)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, cfg.width * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(cfg.width))
        self.v_bias = nn.Parameter(torch.zeros(cfg.width))
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class MLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Returns all tokens (CLS first) of the last block; no final norm (BLIP-2 adds `ln_vision`)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x


def interpolate_pos_embed(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Resize a (1, 1 + g*g, C) position table to `num_patches` (bicubic, as EVA/BLIP-2 do)."""
    old = pos_embed.shape[1] - 1
    if old == num_patches:
        return pos_embed
    old_g, new_g = int(round(old ** 0.5)), int(round(num_patches ** 0.5))
    if old_g * old_g != old or new_g * new_g != num_patches:
        raise ValueError(f"cannot interpolate pos_embed of {old} patches to {num_patches}: not square grids")
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    C = grid.shape[-1]
    grid = grid.reshape(1, old_g, old_g, C).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_g, new_g), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_g * new_g, C).to(pos_embed.dtype)
    return torch.cat([cls, grid], dim=1)


VISION_ARCHS = ("eva_vit", "efficientnet_lite0")


def build_vision_encoder(cfg: VisionConfig) -> nn.Module:
    """The frozen image encoder `cfg.arch` names; each returns (B, 1 + num_patches, width) tokens, CLS-like first."""
    if cfg.arch == "eva_vit":
        return VisionTransformer(cfg)
    if cfg.arch == "efficientnet_lite0":
        from minigpt4.model.efficientnet import EfficientNetLite
        return EfficientNetLite(cfg)
    raise ValueError(f"vision.arch {cfg.arch!r} is unknown; use one of {list(VISION_ARCHS)}")
