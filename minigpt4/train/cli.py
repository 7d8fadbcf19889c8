"""`minigpt4 train RECIPE [field=value ...]`: run a training recipe, resuming automatically."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train stage 1 / stage 2 from a YAML recipe",
        description="Train MiniGPT-4 from a YAML recipe (see recipes/). Fields can be overridden as "
                    "field=value, e.g. `minigpt4 train recipes/tiny_stage1.yaml output_dir=/tmp/run "
                    "data.0.path=/data/shards optim.lr=1e-4`. A run whose output_dir holds checkpoints "
                    "resumes from the latest one. Multi-GPU/CPU: `torchrun --nproc_per_node N -m "
                    "minigpt4.train.cli RECIPE`.")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe file")
    p.add_argument("overrides", nargs="*", help="field=value overrides (dotted paths, list indexes: data.0.path=...)")
    p.add_argument("--resume", default="auto",
                   help="auto (default: latest checkpoint in output_dir if any), a checkpoint folder, or 'no'")
    p.add_argument("--model", help="shortcut for the override model=... (preset or model folder)")
    p.add_argument("--llm", help="shortcut for the override weights.llm=... (LLM folder for vicuna/llama2 presets)")
    p.add_argument("--device", help="shortcut for the override device=... (auto, cpu, cuda)")
    p.add_argument("--minutes", type=float, default=None,
                   help="stop after this many minutes with a checkpoint; run the command again to continue")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary printout")


def run(args) -> int:
    from minigpt4.train.config import ConfigError, load_config
    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model={args.model}")
    if args.llm:
        overrides.append(f"weights.llm={args.llm}")
    if args.device:
        overrides.append(f"device={args.device}")
    if args.quiet:
        overrides.append("progress=false")
    if args.minutes is not None and args.minutes <= 0:
        print("error: --minutes must be > 0 (or left out to train to the recipe's max_steps)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.recipe, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from minigpt4.train.loop import train
    try:
        train(cfg, resume=args.resume, minutes=args.minutes)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m minigpt4.train.cli` (what torchrun launches)."""
    parser = argparse.ArgumentParser(prog="minigpt4 train")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
