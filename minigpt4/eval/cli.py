"""`minigpt4 eval`: held-out evaluation of one model, or several side by side (--compare)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minigpt4.cli_common import CLIError, add_model_args, grounding_from_args

NO_IMAGE_SUFFIX = ":no-image"
INT8_SUFFIX = ":int8"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluation on held-out world images (QA, CHAIR, broken outputs, HTML, recipes, speed)",
        description="Evaluate on world images with seeds and object kinds never used in training. "
                    "Writes report.json and report.md (with example thumbnails) to --out.")
    add_model_args(p)
    p.add_argument("--split", default="test", choices=["test", "heldout", "val"],
                   help="test: every image has a held-out object kind; heldout: only held-out kinds; "
                        "val: train kinds, unseen seeds (default: test)")
    p.add_argument("--n", type=int, default=50, help="images per task (default: 50)")
    p.add_argument("--tasks", default="qa,describe,sketch,recipe,prompt,speed",
                   help="comma-separated: qa, describe, sketch, recipe, prompt, speed (default: all)")
    p.add_argument("--no-image", action="store_true",
                   help="bare-LLM baseline: the same questions with the image message removed")
    p.add_argument("--out", default="eval-report", help="report folder (default: eval-report)")
    p.add_argument("--batch-size", type=int, default=8, help="answers generated together (default: 8)")
    p.add_argument("--qa-per-image", type=int, default=0,
                   help="questions per image, balanced over question types (default: 0 = all)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap every task's answer length")
    p.add_argument("--image-size", type=int, default=None, help="world render size (default: model input, >= 96)")
    p.add_argument("--seed", type=int, default=0, help="first world seed (image i uses seed + i)")
    p.add_argument("--sample", action="store_true", help="sample with the model's settings instead of greedy")
    p.add_argument("--speed-runs", type=int, default=3, help="timed runs of the speed task (default: 3)")
    p.add_argument("--compare", nargs="+", metavar="MODEL", default=None,
                   help=f"evaluate several models (presets or folders; add '{NO_IMAGE_SUFFIX}' for the bare "
                        f"LLM, '{INT8_SUFFIX}' for the int8 LLM, e.g. stage1/ stage2/ stage2/{NO_IMAGE_SUFFIX} "
                        f"stage2/{INT8_SUFFIX}) into one side-by-side table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace, no_image: bool | None = None):
    from minigpt4.eval.runner import EvalConfig
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    try:
        return EvalConfig(split=args.split, n=args.n, tasks=tasks,
                          no_image=args.no_image if no_image is None else no_image,
                          batch_size=args.batch_size, qa_per_image=args.qa_per_image,
                          max_new_tokens=args.max_new_tokens, image_size=args.image_size, seed=args.seed,
                          sample=args.sample, speed_runs=args.speed_runs, progress=not args.quiet)
    except ValueError as e:
        raise CLIError(str(e)) from None


def parse_spec(spec: str) -> tuple[str, bool, bool]:
    """'folder:no-image' -> ('folder', True, False); 'folder:int8' -> ('folder', False, True);
    the two suffixes combine in either order."""
    no_image = int8 = False
    while True:
        if spec.endswith(NO_IMAGE_SUFFIX) and not no_image:
            spec, no_image = spec[: -len(NO_IMAGE_SUFFIX)], True
        elif spec.endswith(INT8_SUFFIX) and not int8:
            spec, int8 = spec[: -len(INT8_SUFFIX)], True
        else:
            return spec, no_image, int8


def _load(args: argparse.Namespace, spec: str, int8: bool = False):
    from minigpt4.cli_common import load_model_from_args
    over = {"model": spec, **({"quantize": "int8"} if int8 else {})}
    try:
        return load_model_from_args(argparse.Namespace(**{**vars(args), **over}))
    except FileNotFoundError as e:
        raise CLIError(f"model '{spec}' not found ({e}); pass a preset name or a model folder") from None


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from minigpt4.eval.report import folder_name, headline_rows, write_compare, write_report
    from minigpt4.eval.runner import run_eval
    config_from_args(args)  # flag errors before a model loads
    specs = [parse_spec(s) for s in args.compare] if args.compare else [(args.model, args.no_image, False)]
    out = Path(args.out)
    reports = []
    for i, (spec, no_image, int8) in enumerate(specs):
        cfg = config_from_args(args, no_image or args.no_image)
        _say(f"[eval] loading {spec}{INT8_SUFFIX if int8 else ''}", args.quiet)
        model = _load(args, spec, int8)
        cfg.ground = grounding_from_args(args, model) and not cfg.no_image  # no image: nothing to ground on
        # what was loaded: `--quantize auto` makes the shipped default model int8 on the CPU
        quant = getattr(model.llm, "minigpt4_quantized", None) or (
            args.quantize if args.quantize not in (None, "auto", "none") else None)
        label = spec + (f":{quant}" if quant else "") + (":grounded" if cfg.ground else "")
        report = run_eval(model, cfg, name=label)
        del model
        target = out / folder_name(report, i) if args.compare else out
        md = write_report(report, target)
        reports.append(report)
        print(f"{spec}{' (no image)' if cfg.no_image else ''}: report in {md}")
        for label, value, goal in headline_rows(report):
            print(f"  {label:<58} {value:>8}  {('target ' + goal) if goal else ''}")
    if args.compare:
        md = write_compare(reports, out)
        print(f"side-by-side table: {md}")
    return 0
