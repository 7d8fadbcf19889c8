"""Learning-rate schedule of the original recipes: linear warmup from `warmup_lr` to `lr`, then
cosine decay to `min_lr` at the last step.

The original (LAVIS) decays per epoch; here the same curve is followed per step, which is
smoother and does not depend on how an "epoch" of a streamed dataset is defined."""
from __future__ import annotations

import math

import torch

from minigpt4.train.config import OptimConfig


def lr_at(step: int, o: OptimConfig, total_steps: int) -> float:
    """LR used for optimizer step `step` (0-based)."""
    if step < o.warmup_steps:
        return o.warmup_lr + (o.lr - o.warmup_lr) * step / max(1, o.warmup_steps)
    span = max(1, total_steps - o.warmup_steps - 1)
    t = min(1.0, (step - o.warmup_steps) / span)
    return o.min_lr + (o.lr - o.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_optimizer(params: list[tuple[str, torch.nn.Parameter]], o: OptimConfig) -> torch.optim.AdamW:
    """AdamW, no weight decay on biases and norms (as LAVIS: ndim < 2, "bias", "ln", "bn")."""
    decay = [p for n, p in params if not (p.ndim < 2 or "bias" in n or "ln" in n or "bn" in n or "norm" in n)]
    no_decay = [p for n, p in params if p.ndim < 2 or "bias" in n or "ln" in n or "bn" in n or "norm" in n]
    groups = [g for g in ({"params": decay, "weight_decay": o.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2))


def build_scheduler(opt: torch.optim.Optimizer, o: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(step, o, total_steps) / o.lr)
