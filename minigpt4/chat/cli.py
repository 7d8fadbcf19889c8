"""`minigpt4 chat` (interactive) and the one-shot task verbs.

    minigpt4 chat --image a.png [--image b.png]        # /image PATH, /reset, /quit; streams answers
    minigpt4 describe photo1.jpg photo2.jpg --jsonl out.jsonl --batch-size 8
    minigpt4 ask photo.jpg --question "How many cats are there?"
    minigpt4 alt-text *.png
    minigpt4 recipe dish.jpg
    minigpt4 prompt picture.png
    minigpt4 website sketch.png --out-dir site/
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from minigpt4.chat.presets import PRESETS
from minigpt4.cli_common import (CLIError, add_generation_args, add_model_args, generation_from_args,
                                  grounding_from_args, load_model_from_args)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
TASK_VERBS = ["describe", "ask", "alt-text", "recipe", "prompt", "website"]


def register(subparsers) -> None:
    p = subparsers.add_parser("chat", help="interactive chat about images (streaming)",
                              description="Multi-turn chat. Type a message; /image PATH adds an image to the "
                                          "next message, /reset starts over, /quit leaves. Reads stdin, so a "
                                          "script can be piped in.")
    p.add_argument("--image", action="append", default=[], help="image for the first message (repeatable)")
    _add_chat_args(p)
    p.set_defaults(func=run_chat)
    for verb in TASK_VERBS:
        preset = PRESETS[verb]
        p = subparsers.add_parser(verb, help=preset.help, description=f"{preset.help}. Prompt: {preset.prompt!r}")
        p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
        if verb == "ask":
            p.add_argument("--question", "-q", required=True, help="the question to ask about each image")
        if verb == "website":
            p.add_argument("--out-dir", default=".", help="where to write IMAGE_STEM.html (default: .)")
        p.add_argument("--jsonl", default=None, metavar="OUT", help="also write one JSON record per image to OUT")
        p.add_argument("--batch-size", type=int, default=8, help="images answered together (default 8)")
        p.add_argument("--quiet", action="store_true", help="print nothing but errors")
        _add_chat_args(p)
        p.set_defaults(func=run_task, task=verb)


def _add_chat_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_generation_args(p)
    p.add_argument("--template", default=None, help="vicuna_v0, llama2, chatml or hf (default: the model's)")
    p.add_argument("--system", default=None, help="system message (default: the model's)")


def _engine(args):
    from minigpt4.chat.engine import ChatEngine
    return ChatEngine(load_model_from_args(args), template=args.template, system=args.system)


# --- one-shot tasks ---------------------------------------------------------------------------
def expand_images(items: list[str]) -> list[Path]:
    """Files as given; folders become their image files, sorted."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CLIError(f"folder '{item}' has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out.extend(found)
        else:
            out.append(p)
    return out


def run_task(args) -> int:
    from minigpt4.chat.engine import Request
    from minigpt4.chat.presets import get_preset, write_website
    from minigpt4.chat.templates import Message
    from minigpt4.data.image import ImageError, load_image
    from tqdm import tqdm

    preset = get_preset(args.task)
    question = preset.build_prompt(getattr(args, "question", None))
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    paths = expand_images(args.images)
    engine = _engine(args)
    gen = generation_from_args(args, preset.generation(engine.default_gen))
    ground = grounding_from_args(args, engine.model, preset.groundable)
    records, failed = [], 0
    out_dir = Path(getattr(args, "out_dir", ".") or ".")
    bar = tqdm(total=len(paths), desc=args.task, unit="img", disable=len(paths) < 2 or args.quiet, file=sys.stderr)
    for start in range(0, len(paths), args.batch_size):
        batch = paths[start:start + args.batch_size]
        loaded, todo = {}, []
        for path in batch:
            try:
                loaded[path] = load_image(path)
                todo.append(path)
            except ImageError as e:
                failed += 1
                print(f"error: {e}", file=sys.stderr)
                records.append({"image": str(path), "task": args.task, "error": str(e)})
        requests = [Request([Message("user", question, images=[loaded[p]])], gen, ground=ground) for p in todo]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = engine.generate(requests)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        for path, res in zip(todo, results):
            text = preset.postprocess(res.text)
            rec = {"image": str(path), "task": args.task, "text": text, "finish_reason": res.finish_reason,
                   "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens}
            if args.task == "ask":
                rec["question"] = args.question
            if args.task == "website":
                rec["file"] = str(write_website(res.text, out_dir / f"{path.stem}.html"))
            records.append(rec)
            if not args.quiet:
                _print_record(rec, many=len(paths) > 1)
        bar.update(len(batch))
    bar.close()
    if args.jsonl:
        from minigpt4.utils import atomic_write_text
        atomic_write_text(args.jsonl, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return 2 if failed else 0


def _print_record(rec: dict, many: bool) -> None:
    if "file" in rec:
        print(f"wrote {rec['file']}", flush=True)
        return
    if many:
        print(f"== {rec['image']}", flush=True)
    print(rec["text"], flush=True)


# --- interactive chat --------------------------------------------------------------------------
HELP = "commands: /image PATH (add an image to the next message), /reset (start over), /quit"


def run_chat(args) -> int:
    from minigpt4.chat.engine import Conversation
    from minigpt4.chat.engine import PromptTooLongError
    from minigpt4.data.image import ImageError

    engine = _engine(args)
    gen = generation_from_args(args, engine.default_gen)
    conv = Conversation(engine, ground=grounding_from_args(args, engine.model))
    for path in args.image:
        conv.add_image(path)  # a bad --image is a startup error (exit 2)
    interactive = sys.stdin.isatty()
    quant = " with an int8 LLM (--quantize none: full precision)" if args.quantize == "int8" else ""
    print(f"chatting with {args.model}{quant} ({engine.template.name} template). {HELP}", file=sys.stderr)
    while True:
        line = _read_line(interactive)
        if line is None:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, rest = line.partition(" ")
            if cmd in ("/quit", "/exit"):
                break
            if cmd == "/reset":
                conv.reset()
                print("[conversation reset]", flush=True)
            elif cmd == "/image":
                try:
                    conv.add_image(rest.strip())
                    print(f"[image {rest.strip()} added to the next message]", flush=True)
                except ImageError as e:
                    print(f"error: {e}", file=sys.stderr, flush=True)
            elif cmd == "/help":
                print(HELP, flush=True)
            else:
                print(f"error: unknown command '{cmd}'; {HELP}", file=sys.stderr, flush=True)
            continue
        print("assistant: ", end="", flush=True)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                conv.ask(line, gen, on_text=lambda d: print(d, end="", flush=True))
        except PromptTooLongError as e:
            print(f"\nerror: {e}", file=sys.stderr, flush=True)
            continue
        print(flush=True)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr, flush=True)
    return 0


def _read_line(interactive: bool) -> str | None:
    if interactive:
        try:
            return input("you> ")
        except EOFError:
            print()
            return None
    line = sys.stdin.readline()
    return line if line else None
