"""`minigpt4 convert` and `minigpt4 info`.

    minigpt4 convert --preset vicuna-7b --eva eva_vit_g.pth --blip2 blip2_pretrained_flant5xxl.pth \\
        --ckpt pretrained_minigpt4_7b.pth --llm /path/vicuna-7b --out vicuna7b-minigpt4 [--link-llm]
    minigpt4 info vicuna7b-minigpt4 [--json]

Also runnable on its own: `python -m minigpt4.weights.cli convert ...`.
"""
from __future__ import annotations

import argparse
import sys


def run_convert(args) -> int:
    from minigpt4.weights.info import format_info, model_info
    from minigpt4.weights.pretrained import convert
    out = convert(args.preset, args.out, eva=args.eva, blip2=args.blip2, ckpt=args.ckpt, llm=args.llm,
                  link_llm=args.link_llm, link_checkpoints=args.link_checkpoints, overwrite=args.overwrite,
                  progress=not args.quiet)
    print(f"wrote {out}")
    print(format_info(model_info(str(out))))
    return 0


def run_info(args) -> int:
    from minigpt4.weights.info import print_info
    print_info(args.model_flag or args.model, as_json=args.json)
    return 0


def register(subparsers) -> None:
    from minigpt4.config import PRESETS
    p = subparsers.add_parser("convert", help="original checkpoints -> one self-describing model folder",
                              description="Convert the original MiniGPT-4 / BLIP-2 / EVA checkpoints and an "
                                          "LLM into one folder that `--model FOLDER` loads fast.")
    p.add_argument("--preset", required=True, choices=list(PRESETS), help="model layout of the checkpoints")
    p.add_argument("--eva", help="eva_vit_g.pth (EVA ViT-g/14 state dict)")
    p.add_argument("--blip2", help="blip2_pretrained_flant5xxl.pth (ln_vision + Q-Former); not for llama2-7b")
    p.add_argument("--ckpt", help="MiniGPT-4 stage checkpoint with llama_proj.* (e.g. pretrained_minigpt4_7b.pth)")
    p.add_argument("--llm", help="LLM: Hugging Face folder (Vicuna, LLaMA-2-chat) or a .gguf file")
    p.add_argument("--out", required=True, help="output folder (written atomically via OUT.tmp)")
    p.add_argument("--link-llm", action="store_true", help="reference the LLM by absolute path instead of copying it")
    p.add_argument("--link-checkpoints", action="store_true",
                   help="store only the projection; reference --eva/--blip2 by absolute path")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_convert)

    p = subparsers.add_parser("info", help="summary of a model: config, parameter counts, size",
                              description="Describe a preset or converted folder without loading weights.")
    p.add_argument("model", nargs="?", default="tiny", help="preset name or converted folder (default: tiny)")
    p.add_argument("--model", dest="model_flag", default=None, help="same as the positional MODEL")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_info)


def main(argv: list[str] | None = None) -> int:
    from minigpt4.weights.common import CheckpointError
    parser = argparse.ArgumentParser(prog="minigpt4")
    register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
