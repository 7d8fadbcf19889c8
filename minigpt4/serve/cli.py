"""`minigpt4 serve`: the OpenAI-compatible API and the web chat in one process.

    minigpt4 serve --model tiny --port 8000
    minigpt4 serve --model small --api-key secret --max-batch-size 16
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from minigpt4.serve.config import ServeConfig

log = logging.getLogger(__name__)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    try:
        from minigpt4.cli_common import add_model_args
    except ImportError:  # the shared helper is optional: same flags, defined here
        p.add_argument("--model", default="tiny", help="preset name (tiny, small, ...) or a converted model folder")
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
        p.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp32 on CPU)")
        p.add_argument("--quantize", default=None, choices=["8bit", "4bit"], help="load the LLM quantised (GPU)")
        return
    add_model_args(p)


def add_serve_args(p: argparse.ArgumentParser) -> None:
    d = ServeConfig(api_key=None)
    _add_model_args(p)
    p.add_argument("--host", default=d.host, help="address to listen on (0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients use (default: minigpt4-<model>); presets are '<id>:<preset>'")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer <key>' on /v1 (or set MINIGPT4_API_KEY)")
    p.add_argument("--cors-origin", action="append", default=[],
                   help="allow browser calls from this origin (repeatable; '*' for any). CORS is off by default")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                   help="how long an idle server lets the first request wait for others (new requests join a running batch at the next step anyway)")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="waiting requests beyond this get 429")
    p.add_argument("--timeout", type=float, default=d.request_timeout_s, help="per-request timeout in seconds (504)")
    p.add_argument("--max-image-bytes", type=int, default=d.max_image_bytes)
    p.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels)
    p.add_argument("--max-images", type=int, default=d.max_images, help="images per request")
    p.add_argument("--allow-remote-images", action="store_true",
                   help="let image_url be http(s) (public addresses only; size and time limited)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for the model (default: torch's choice); 1 is often fastest on a "
                        "small or busy machine, where threads waiting on each other cost more than they give")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve the OpenAI-compatible API and the web chat",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_serve_args(p)
    p.set_defaults(func=run)


def config_from_args(args) -> ServeConfig:
    spec = str(args.model)
    return ServeConfig(
        host=args.host, port=args.port,
        model_name=args.served_model_name or f"minigpt4-{Path(spec.rstrip('/')).name}",
        api_key=args.api_key or os.environ.get("MINIGPT4_API_KEY") or None,
        cors_origins=tuple(args.cors_origin),
        max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
        request_timeout_s=args.timeout, max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels, max_images=args.max_images,
        allow_remote_images=args.allow_remote_images, ground=getattr(args, "grounded", None))


def load_model(args):
    try:
        from minigpt4.cli_common import load_model_from_args
    except ImportError:
        load_model_from_args = None
    if load_model_from_args is not None:  # the shared loader: presets, converted folders, --llm
        return load_model_from_args(args)
    from minigpt4.config import get_config
    from minigpt4.model.minigpt4 import build_model
    from minigpt4.utils import parse_dtype, resolve_device
    return build_model(get_config(args.model), dtype=parse_dtype(args.dtype), device=resolve_device(args.device),
                       quantize=args.quantize)


def run(args) -> int:
    import uvicorn

    from minigpt4.chat.engine import ChatEngine
    from minigpt4.serve.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    # The model thread releases the GIL around every torch op; a short switch interval keeps it
    # from waiting up to 5 ms (the default) each time the event loop thread holds it.
    sys.setswitchinterval(0.0005)
    model = load_model(args)
    model.eval()
    if cfg.ground:  # the same refusal as every verb's: a model without a word readout
        from minigpt4.cli_common import grounding_from_args
        grounding_from_args(args, model)
    app = create_app(ChatEngine(model), cfg)
    where = f"http://{cfg.host}:{cfg.port}"
    print(f"serving '{cfg.model_name}': web chat {where}/  API {where}/v1  "
          f"(auth {'on' if cfg.api_key else 'off'})", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
