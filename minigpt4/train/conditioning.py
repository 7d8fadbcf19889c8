"""Projection conditioning (`proj_conditioning: true`): fit the projection on standardised inputs.

Why: the frozen Q-Former outputs share a large constant part across images (the default model's
session-6 stage 0: 59% of their energy). A plain Linear trained with AdamW then moves mostly along
that shared direction and ends up passing on little image-specific signal at several times a text
token's norm. Training W, b on (x - mean) / std takes the shared direction out of the weight
updates (the bias carries any shared offset explicitly), and a fresh projection starts with its
outputs at the LLM's mean text-token norm.

Every checkpoint stores the folded plain Linear, W' = W / std and b' = b - W' @ mean, so the saved
format and every loader are unchanged; the raw W, b go to the resume state so a resume is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

MIN_STD = 1e-4  # a feature that never varies is centred, not blown up


@dataclass
class ProjectionConditioning:
    mean: torch.Tensor  # (in_features,)
    std: torch.Tensor   # (in_features,)

    @classmethod
    def measure(cls, feats: np.ndarray) -> "ProjectionConditioning":
        """Per-feature statistics over every image and query slot of `feats` (images, slots, dim)."""
        x = torch.from_numpy(np.asarray(feats, dtype=np.float64)).flatten(0, -2)
        return cls(x.mean(0).float(), x.std(0).clamp(min=MIN_STD).float())

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)

    def attach(self, proj: nn.Linear):
        """From now on `proj` reads standardised inputs: its parameters are the raw W, b."""
        return proj.register_forward_pre_hook(lambda _, args: (self.standardise(args[0]),) + args[1:])

    def fold(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw W, b (on standardised inputs) -> the plain Linear on raw inputs."""
        w = weight / self.std.to(weight)
        return w, bias - w @ self.mean.to(weight)

    def unfold(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A plain Linear -> the raw W, b that give the same outputs on standardised inputs."""
        return weight * self.std.to(weight), bias + weight @ self.mean.to(weight)

    @torch.no_grad()
    def init_(self, proj: nn.Linear, feats: np.ndarray, target_norm: float, seed: int) -> None:
        """A fresh projection: random W scaled so the image tokens of `feats` have mean norm
        `target_norm` (a text token's), zero bias."""
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(proj.weight.shape, generator=g, dtype=torch.float64)
        z = self.standardise(torch.from_numpy(np.asarray(feats, dtype=np.float64)).flatten(0, -2))
        w *= target_norm / float((z @ w.T).norm(dim=-1).mean())
        proj.weight.copy_(w.to(proj.weight))
        proj.bias.zero_()

    def state(self, proj: nn.Linear) -> dict:
        return {"mean": self.mean, "std": self.std, "weight": proj.weight.detach().clone(),
                "bias": proj.bias.detach().clone()}
