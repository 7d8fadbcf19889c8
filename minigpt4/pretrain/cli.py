"""`minigpt4 pretrain-vision RECIPE [--minutes M] [key=value ...]`: one resumable stage-0 chunk."""
from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain-vision", help="stage 0: pretrain the small ViT + Q-Former on the image world",
        description="Train the default model's vision side (stage 0) for a time budget, then write an "
                    "atomic checkpoint to output_dir and the frozen vision export to export_dir, and exit. "
                    "Run it again to continue exactly where it stopped (e.g. in a shell loop, or after "
                    "an interruption). Fields can be overridden as key=value (text.width=128).")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/default/stage0.yaml")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides (dotted for nested fields)")
    p.add_argument("--minutes", type=float, default=20.0, help="time budget of this chunk (default 20)")
    p.add_argument("--steps", type=int, help="at most this many steps in this chunk")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and start from step 0")
    p.add_argument("--no-probe", action="store_true", help="skip the val probe at the chunk end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from minigpt4.pretrain.config import Stage0ConfigError, load_recipe
    try:
        cfg = load_recipe(args.recipe, args.overrides)
    except Stage0ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.minutes <= 0:
        print("error: --minutes must be > 0", file=sys.stderr)
        return 2
    from minigpt4.pretrain.loop import train
    try:
        summary = train(cfg, minutes=args.minutes, max_steps=args.steps, fresh=args.fresh,
                        progress=not args.quiet, run_probe=not args.no_probe)
    except RuntimeError as e:  # e.g. another chunk is already training into output_dir
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary.pop("model", None)
    print(json.dumps(summary, indent=2))
    if summary.get("interrupted"):
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minigpt4 pretrain-vision")
    add_arguments(parser)
    return run(parser.parse_intermixed_args(argv))  # overrides may come after the options


if __name__ == "__main__":
    sys.exit(main())
