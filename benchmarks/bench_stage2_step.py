"""Stage-2 (projection + LoRA) training speed on the default model, the same steps three ways, one run:

  as before   LoRA dropout 0.05 (PEFT draws a bernoulli mask for each of the 7 adapted Linears in each
              of the 30 layers), micro-batches in stream order (a 540-token HTML page can pad a
              190-token question drill to its length);
  dropout 0   the same steps and micro-batches without the dropout masks;
  ours        dropout 0 and a step's examples sorted by length before they are split into
              micro-batches (`Trainer._step_micro_batches`).

Each way runs forward + backward on the same `--steps` global batches of a stage-2 recipe (cached
vision features, as in training); the optimizer step is left out (the same for all). Needs the default
model's world export (`recipes/default/make.sh` writes it) and a stage-0 export:

    python benchmarks/bench_stage2_step.py [--recipe recipes/default/stage2-attr.yaml] [--steps 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_line  # noqa: E402

from minigpt4.train.config import load_config  # noqa: E402
from minigpt4.train.loop import Trainer  # noqa: E402


def steps_of(trainer: Trainer, n: int, grouped: bool) -> list[list]:
    out = []
    for _ in range(n):
        if grouped:
            out.append([m for m in trainer._step_micro_batches() if m is not None])
        else:
            items = trainer._take_step_items()
            out.append([m for m in (trainer._micro_batch(trainer._build(i)) for i in items) if m is not None])
    return out


def run(trainer: Trainer, steps: list[list]) -> tuple[float, int, int]:
    """Seconds, real tokens and padded tokens for forward + backward over the steps."""
    real = padded = 0
    t0 = time.perf_counter()
    for micro in steps:
        for m in micro:
            trainer.model(m.batch.input_ids, m.batch.attention_mask, m.batch.labels, **m.vision).backward()
            real += int(m.batch.attention_mask.sum())
            padded += m.batch.attention_mask.numel()
        trainer.model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, real, padded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(ROOT / "recipes/default/stage2-attr.yaml"))
    ap.add_argument("--model", default="default@stage0-gpu")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--cache-dir", help="an existing feature cache folder (skips encoding the export)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, dropout, grouped in (("as before", 0.05, False), ("dropout 0", 0.0, False), ("ours", 0.0, True)):
            over = [f"model={args.model}", "init=null", f"output_dir={tmp}/{name.replace(' ', '_')}", f"lora.dropout={dropout}",
                    "progress=false", "tensorboard=false"]
            if args.cache_dir:
                over.append(f"cache_dir={args.cache_dir}")
            trainer = Trainer(load_config(args.recipe, over), resume="no")
            trainer.build_cache()
            steps = steps_of(trainer, 1 + args.steps, grouped)
            run(trainer, steps[:1])  # warm-up
            secs, real, padded = run(trainer, steps[1:])
            rows.append((name, secs / args.steps, real, padded, real / secs))
            print(f"{name:10s} {secs / args.steps:6.1f} s/step  {real} tokens ({padded} padded)  {real / secs:6.1f} tokens/s",
                  flush=True)
    print(f"\n{machine_line()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps of "
          f"{Path(args.recipe).name}\n")
    print("| way | s / step | tokens (padded) | tokens / s |\n|---|---:|---:|---:|")
    for name, sps, real, padded, tps in rows:
        print(f"| {name} | {sps:.1f} | {real} ({padded}) | {tps:.1f} |")


if __name__ == "__main__":
    main()
