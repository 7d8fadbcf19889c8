"""Flags every CLI verb shares: which model to load, on what device and dtype, and how to sample.

Kept free of heavy imports (torch, transformers) so `minigpt4 --help` stays fast; loading happens
in `load_model_from_args`, which goes through `minigpt4.weights.load_model`.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util

import os

# The project's own trained model (weights/default.py); MINIGPT4_MODEL overrides it (tests use "tiny").
DEFAULT_MODEL = os.environ.get("MINIGPT4_MODEL", "default")


class CLIError(Exception):
    """A user-facing problem with the command line: printed as one `error: ...` line, exit code 2."""


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"preset name (tiny, small, vicuna-7b, ...) or a converted model folder (default: {DEFAULT_MODEL})")
    g.add_argument("--llm", default=None, help="LLM folder / .gguf for presets that need one (e.g. vicuna-7b)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    g.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="compute dtype (default: fp32 on CPU, fp16 on CUDA)")
    g.add_argument("--quantize", default="auto", choices=["auto", "none", "int8", "8bit", "4bit"],
                   help="auto (default): int8 for the shipped default model on the CPU, none otherwise; "
                        "none: full precision; int8: the LLM in int8 on the CPU (faster decode, ~94%% same "
                        "top-1 token as fp32); 8bit/4bit: the LLM through bitsandbytes (CUDA only)")
    g.add_argument("--abstain", type=float, default=None, metavar="P",
                   help="a word readout's region name below probability P reads its unknown word ('thing'): "
                        "fewer invented objects for a few named ones (default: the model's own setting)")
    g.add_argument("--ground-sure", type=float, default=None, metavar="P",
                   help="grounded answers keep only the names a word readout read with probability >= P; the LLM "
                        "still reads every name above --abstain (default: the model's own setting)")
    g.add_argument("--always", default=None, metavar="ATTRS",
                   help="comma list of a word readout's attributes that every object gets a word of, e.g. color "
                        "(its classifier's 'none' goes to its words on a region that holds something); '' for "
                        "none (default: the model's own setting)")
    g.add_argument("--grounded", action=argparse.BooleanOptionalAction, default=None,
                   help="answers about the picture (describe, alt-text, ask, chat) name only objects the word "
                        "readout read; any other object word reads 'thing'. A question asking for a recipe, a web "
                        "page or a prompt is answered ungrounded (default: the model's own setting)")


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("generation (defaults: the model's, e.g. top_p 0.9, repetition penalty 1.05)")
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible answers)")
    g.add_argument("--greedy", action="store_true", help="no sampling: always the most likely token")
    g.add_argument("--stop", action="append", default=[], help="extra stop string (repeatable)")


def generation_from_args(args: argparse.Namespace, base):
    """`base` (a GenerationConfig) with every flag the user actually gave applied on top."""
    over = {k: getattr(args, k, None) for k in ("max_new_tokens", "temperature", "top_p", "top_k",
                                                 "repetition_penalty", "seed")}
    over = {k: v for k, v in over.items() if v is not None}
    if getattr(args, "greedy", False):
        over["do_sample"] = False
    if getattr(args, "stop", None):
        over["stop"] = tuple(base.stop) + tuple(args.stop)
    return dataclasses.replace(base, **over)


def auto_quantize(model: str, device: str, dtype: str | None, llm: str | None = None) -> str | None:
    """What `--quantize auto` means: int8 for the shipped default model (any of its stages or runs)
    on the CPU in fp32, where its 100-token answers take 2.1 s instead of 6.0 s on 2 cores and score the
    same within noise (checkpoints/default/eval-session15.md); None (full precision) for every other
    model and device."""
    shipped = str(model).split("@")[0] == "default" and not llm
    return "int8" if shipped and device == "cpu" and dtype in (None, "fp32") else None


def check_device_args(args: argparse.Namespace) -> tuple[str, str]:
    """(device, dtype) from the flags, with clear errors for combinations that cannot work.
    Resolves `args.quantize` in place: "auto" becomes int8 or None (see `auto_quantize`), "none" None."""
    import torch
    if args.quantize == "none":
        args.quantize = None
    device = args.device or "auto"
    if device == "auto":  # int8 is the CPU path, so it picks the CPU even where a GPU exists
        device = "cuda" if torch.cuda.is_available() and args.quantize != "int8" else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu "
                       "(or install a CUDA build of torch on a GPU machine)")
    if args.quantize == "auto":
        args.quantize = auto_quantize(args.model, device, args.dtype, getattr(args, "llm", None))
    dtype = args.dtype or ("fp16" if device.startswith("cuda") else "fp32")
    if args.quantize == "int8":
        from minigpt4.model.quantize import int8_problem
        if (problem := int8_problem(device, dtype)) is not None:
            raise CLIError(problem)
    elif args.quantize:
        if not device.startswith("cuda"):
            raise CLIError(f"--quantize {args.quantize} uses bitsandbytes and needs a CUDA GPU; on CPU use "
                           f"--quantize int8 (or drop --quantize)")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise CLIError(f"--quantize {args.quantize} needs the bitsandbytes package: "
                           f"pip install bitsandbytes")
    return device, dtype


def grounding_from_args(args: argparse.Namespace, model, groundable: bool = True) -> bool:
    """Whether answers are grounded (minigpt4.chat.grounding): --grounded / --no-grounded, else the model's setting
    where the task is an answer about the picture."""
    flag = getattr(args, "grounded", None)
    if flag and not groundable:
        raise CLIError("--grounded is for answers about what the picture shows (describe, alt-text, ask, chat); "
                       "a recipe, prompt or web page names things no picture shows: drop --grounded")
    if flag and model.word_proj is None:
        raise CLIError("--grounded keeps the object names a word readout read, and this model has none: "
                       "drop --grounded")
    return bool(groundable and (model.cfg.word_ground if flag is None else flag))


def load_model_from_args(args: argparse.Namespace):
    """The model the flags name, in eval mode."""
    device, dtype = check_device_args(args)
    try:
        from minigpt4.weights import load_model
    except ImportError:  # weights package not installed yet: presets only
        load_model = None
    if load_model is not None:
        kwargs = {"llm": args.llm} if getattr(args, "llm", None) else {}
        model = load_model(args.model, device=device, dtype=dtype, quantize=args.quantize, **kwargs)
    else:
        from minigpt4.config import get_config
        from minigpt4.model.minigpt4 import build_model
        from minigpt4.utils import parse_dtype
        cfg = get_config(args.model)
        if getattr(args, "llm", None):
            cfg.llm.path = args.llm
        model = build_model(cfg, dtype=parse_dtype(dtype), device=device, quantize=args.quantize)
    try:
        if getattr(args, "abstain", None) is not None:
            model.set_word_abstain(args.abstain)
        if getattr(args, "ground_sure", None) is not None:
            model.set_word_ground_sure(args.ground_sure)
        if getattr(args, "always", None) is not None:
            model.set_word_always([a for a in args.always.split(",") if a])
    except ValueError as e:
        raise CLIError(str(e)) from None
    model.eval()
    return model
