"""`minigpt4 <verb>`: one verb per job, each registered by its area's `cli.py`.

Only the module of the verb being run is imported (torch and transformers load in a second or
more), so `minigpt4 --help` lists the verbs from the table below without importing any of them.
Errors come out as one line, `error: ...`, with exit code 2; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module with register(subparsers), one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "chat": ("minigpt4.chat.cli", "interactive multi-turn chat about images (streaming)"),
    "describe": ("minigpt4.chat.cli", "detailed description of each image"),
    "ask": ("minigpt4.chat.cli", "answer --question about each image"),
    "alt-text": ("minigpt4.chat.cli", "short screen-reader alt text for each image"),
    "recipe": ("minigpt4.chat.cli", "a recipe from a photo of a dish"),
    "prompt": ("minigpt4.chat.cli", "a text-to-image prompt that would recreate each image"),
    "website": ("minigpt4.chat.cli", "an HTML page from a hand-drawn sketch"),
    "serve": ("minigpt4.serve.cli", "OpenAI-compatible HTTP API and web chat"),
    "train": ("minigpt4.train.cli", "stage-1 / stage-2 training"),
    "fit-words": ("minigpt4.train.words", "fit the word readout (image tokens as the LLM's own words) on the world"),
    "curate": ("minigpt4.curate.cli", "the stage-2 data curation loop"),
    "eval": ("minigpt4.eval.cli", "evaluation runs and metrics"),
    "pretrain-vision": ("minigpt4.pretrain.cli", "stage 0: pretrain the small ViT + Q-Former on the image world"),
    "convert": ("minigpt4.weights.cli", "original checkpoints -> one model folder"),
    "info": ("minigpt4.weights.cli", "summary of a model preset or folder"),
}


def _usage() -> str:
    width = max(map(len, VERBS))
    lines = [f"  {v:<{width}}  {h}" for v, (_, h) in VERBS.items()]
    return ("usage: minigpt4 [--debug] <verb> [options]\n\nMiniGPT-4: chat about images, serve, train, "
            "curate, evaluate.\n\nverbs:\n" + "\n".join(lines) +
            "\n\n`minigpt4 <verb> --help` shows the options of a verb.")


def build_parser(verb: str) -> argparse.ArgumentParser:
    """A parser that knows `verb` (and whatever else its module registers)."""
    module_name = VERBS[verb][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise SystemExit(f"error: the '{verb}' verb is not available in this install ({module_name} is missing)")
        raise
    parser = argparse.ArgumentParser(prog="minigpt4", epilog="--debug (anywhere): show tracebacks")
    module.register(parser.add_subparsers(dest="verb", required=True, metavar="<verb>"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line
    argv = [a for a in argv if a != "--debug"]
    verb = next((a for a in argv if not a.startswith("-")), None)
    if verb is None:
        print(_usage(), file=sys.stdout if ("-h" in argv or "--help" in argv) else sys.stderr)
        return 0 if ("-h" in argv or "--help" in argv) else 2
    if verb not in VERBS:
        print(f"error: unknown verb '{verb}'; choose one of: {', '.join(VERBS)} (see minigpt4 --help)",
              file=sys.stderr)
        return 2
    try:
        args = build_parser(verb).parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as e:  # one clear line for users; the traceback only with --debug
        if debug:
            raise
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2


def _message(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{text}: {e.filename}"
    return text


if __name__ == "__main__":
    sys.exit(main())
