"""Stage-0 throughput: images/s of one training step, ours vs the original-style text head.

  original-style - BLIP-2 decodes ITG over the tokenizer's full vocabulary (here SmolLM2: 49,152)
  ours           - the compact vocabulary of ids the world's texts use (a few thousand)
Same model sizes (recipes/default/stage0.yaml), same world batch, fp32 on CPU; "ours" also with
`amp: bf16` (autocast, the session-6 recipe), which pays off on CPUs with AVX512-BF16 / AMX. Also
prints how fast the world renders training images, to show the data side is not the bottleneck.

    python benchmarks/bench_pretrain.py [--steps 3] [--batch 32]
"""
from __future__ import annotations

import argparse
import time

import torch

from minigpt4.config import get_config
from minigpt4.pretrain import load_recipe
from minigpt4.pretrain.data import Vocab, make_batch
from minigpt4.pretrain.model import Stage0Model


def step_rate(model: Stage0Model, batch, steps: int, bf16: bool = False) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    def one():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = sum(v.float() for v in model.losses(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    one()  # warm-up (allocations, first-call overhead)
    t = time.perf_counter()
    for _ in range(steps):
        one()
    return steps * batch.pixels.shape[0] / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--scan", type=int, default=500)
    args = ap.parse_args()
    cfg = load_recipe("recipes/default/stage0.yaml", ["init_from=null"])
    preset = get_config(cfg.model)
    size = preset.vision.image_size
    from minigpt4.world import mixture
    t = time.perf_counter()
    samples = list(mixture(123, args.batch, "train", cfg.kinds, cfg.weights, size))
    gen_rate = args.batch / (time.perf_counter() - t)
    vocab = Vocab.scan(args.scan, cfg.kinds, cfg.weights, size)
    batch = make_batch(vocab, samples, size, cfg.text.qa_pairs, cfg.text.max_len, seed=0)
    print(f"world rendering at {size}px: {gen_rate:.0f} images/s (one thread)")
    print(f"compact vocabulary: {vocab.size} ids (scan of {args.scan} samples), {len(vocab.labels)} aux labels")
    print(f"{'variant':<16} {'ITG vocab':>10} {'params':>8} {'precision':>9} {'images/s':>9}")
    full = len(vocab.tokenizer)
    variants = (("original-style", full, False), ("ours", vocab.size, False), ("ours", vocab.size, True))
    for name, vsize, bf16 in variants:
        torch.manual_seed(0)
        model = Stage0Model(preset.vision, preset.qformer, cfg.text, vsize, len(vocab.labels), vocab.cells.sizes)
        rate = step_rate(model, batch, args.steps, bf16)
        n = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:<16} {vsize:>10} {n:>7.1f}M {'bf16' if bf16 else 'fp32':>9} {rate:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
