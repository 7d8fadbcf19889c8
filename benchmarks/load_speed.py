"""Model load time: our converted folder vs the original's way, side by side, same weights.

original-style: build every module with random init (as the original's `__init__` does), then
                `torch.load` a pickle of the vision/Q-Former/projection weights and
                `load_state_dict(strict=False)`.
ours:           `from_pretrained(folder)`: config.json, vision side built on the meta device (no init),
                safetensors assigned in place, strict key check.
The LLM comes from the same safetensors folder in both (for `small`, the cached SmolLM2-135M).

    python benchmarks/load_speed.py [--presets tiny small] [--repeat 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def median_time(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench(preset: str, repeat: int, tmp: Path) -> dict:
    from minigpt4.model.minigpt4 import build_model
    from minigpt4.weights import from_pretrained, load_model, save_pretrained
    from minigpt4.weights.common import part_of

    model = load_model(preset)
    folder = save_pretrained(model, tmp / preset, overwrite=True)
    pth = tmp / f"{preset}.pth"
    torch.save({k: v for k, v in model.state_dict().items() if part_of(k)}, pth)
    cfg = from_pretrained(folder).cfg  # its llm section points at the stored LLM folder

    def original_style():
        m = build_model(cfg)
        m.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True), strict=False)
        return m

    t_orig, m_orig = median_time(original_style, repeat)
    t_ours, m_ours = median_time(lambda: from_pretrained(folder), repeat)
    x = torch.randn(1, 3, cfg.vision.image_size, cfg.vision.image_size)
    with torch.no_grad():
        same = torch.equal(m_orig.encode_pixels(x), m_ours.encode_pixels(x))
    n_vision = sum(v.numel() for k, v in model.state_dict().items() if part_of(k))
    n_llm = sum(p.numel() for p in model.llm.parameters())
    return dict(preset=preset, vision_params=n_vision, llm_params=n_llm, original=t_orig, ours=t_ours, same=same)


def bench_vision_g(tmp: Path) -> dict:
    """Vision side of vicuna-7b (EVA ViT-g + Q-Former + proj, ~1.1B params, stored fp16 as the
    released files): random init + pickle load vs meta build + safetensors assign."""
    from minigpt4.config import get_config
    from minigpt4.model.qformer import QFormer
    from minigpt4.model.vision import VisionTransformer
    from minigpt4.utils import atomic_save_safetensors
    from minigpt4.weights.common import skeleton
    cfg = get_config("vicuna-7b")
    state = {k: torch.randn(v.shape, dtype=torch.float16) * 0.02 for k, v in skeleton(cfg).state_dict().items()}
    torch.save(state, tmp / "g.pth")
    atomic_save_safetensors(state, tmp / "g.safetensors")
    del state

    def build(device=None):
        m = torch.nn.Module()
        m.visual_encoder = VisionTransformer(cfg.vision)
        m.ln_vision = torch.nn.LayerNorm(cfg.vision.width)
        m.qformer = QFormer(cfg.qformer, cfg.vision.width)
        m.proj = torch.nn.Linear(cfg.proj_in_features, cfg.llm.hidden_size)
        return m

    def original_style():
        m = build()
        m.load_state_dict(torch.load(tmp / "g.pth", map_location="cpu", weights_only=True))
        return m

    def ours():
        from safetensors.torch import load_file
        with torch.device("meta"):
            m = build()
        m.load_state_dict(load_file(tmp / "g.safetensors"), assign=True)
        return m.float()

    t_orig, _ = median_time(original_style, 1)
    t_ours, _ = median_time(ours, 1)
    return dict(preset="vicuna-7b vision side", original=t_orig, ours=t_ours)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--vision-g", action="store_true", help="also time the 1.1B-param vicuna-7b vision side "
                                                             "(needs ~10 GB RAM and ~4.5 GB of /tmp)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeat} loads")
    print(f"{'preset':<8} {'vision+qformer+proj':>20} {'LLM':>8} {'original-style s':>17} {'ours s':>8} "
          f"{'speed-up':>9} {'same output':>12}")
    with tempfile.TemporaryDirectory() as d:
        for preset in args.presets:
            r = bench(preset, args.repeat, Path(d))
            print(f"{r['preset']:<8} {r['vision_params'] / 1e6:>19.2f}M {r['llm_params'] / 1e6:>7.1f}M "
                  f"{r['original']:>17.2f} {r['ours']:>8.2f} {r['original'] / r['ours']:>8.1f}x {str(r['same']):>12}")
        if args.vision_g:
            r = bench_vision_g(Path(d))
            print(f"{r['preset']}: original-style {r['original']:.1f} s, ours {r['ours']:.1f} s "
                  f"({r['original'] / r['ours']:.1f}x)")


if __name__ == "__main__":
    main()
