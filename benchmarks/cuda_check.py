"""The CUDA path of the chat engine, side by side with the CPU fp32 reference, in one run.

Model: the `small` preset (the default model's ViT + Q-Former) with a random LLaMA of SmolLM2-135M's
size (the GGUF is too big to take to a lent GPU machine; speed depends on the shapes, not the
values). For each (device, dtype): load time, image-encode time, time to first token, decode
tokens/s over a forced 100-token greedy answer, tokens/s of 8 prompts batched, and how far the greedy
answer matches the CPU fp32 one (half precision may drift after a near-tie).
`--quantize nf4/int8` rows run only where bitsandbytes is installed.

    python benchmarks/cuda_check.py [--tokens 100] [--out benchmarks/results/cuda.md]
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from PIL import Image

from _machine import machine_line
from bench_chat import SMOLLM2_135M, forced, image, timed
from minigpt4.chat.engine import ChatEngine, Request
from minigpt4.chat.templates import Message
from minigpt4.config import GenerationConfig, LLMConfig, get_config
from minigpt4.model.minigpt4 import build_model
from minigpt4.utils import parse_dtype


def row(device: str, dtype: str, quantize: str | None, tokens: int, picture: Image.Image) -> dict:
    cfg = get_config("small")
    cfg.llm = LLMConfig(source="random", arch=dict(SMOLLM2_135M), hidden_size=576)
    load_s, model = timed(lambda: build_model(cfg, seed=0, dtype=parse_dtype(dtype), device=device,
                                              quantize=quantize).eval())
    engine = forced(ChatEngine(model))
    msgs = [Message("user", "Describe this image in detail.", images=[picture])]
    gen1 = GenerationConfig(max_new_tokens=1, do_sample=False, repetition_penalty=1.0)
    genn = GenerationConfig(max_new_tokens=tokens, do_sample=False, repetition_penalty=1.0)
    engine.generate([Request(msgs, gen1)])  # warm-up (kernels, allocator)
    model.clear_cache()
    enc_s, _ = timed(lambda: model.encode_images([picture]))
    model.clear_cache()
    ttft, _ = timed(lambda: engine.generate([Request(msgs, gen1)]))
    full, res = timed(lambda: engine.generate([Request(msgs, genn)]))
    batch = [Request([Message("user", f"Question {i}: what is in the picture?", images=[image(i)])], genn)
             for i in range(8)]
    bt, bres = timed(lambda: engine.generate(batch))
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {"device": device, "dtype": dtype, "quantize": quantize or "-", "load_s": load_s, "encode_ms": enc_s * 1e3,
            "ttft_ms": ttft * 1e3, "decode_tps": (tokens - 1) / max(full - ttft, 1e-9),
            "batch8_tps": sum(r.completion_tokens for r in bres) / bt, "answer_s": full,
            "ids": res[0].text, "peak_mib": peak}


def peak(r: dict) -> str:
    return "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"


def agreement(a: str, b: str) -> str:
    """How far two greedy answers agree: 'same', or the share of the reference's words before they part."""
    if a == b:
        return "same"
    wa, wb = a.split(), b.split()
    same = next((i for i, (x, y) in enumerate(zip(wa, wb)) if x != y), min(len(wa), len(wb)))
    return f"first {same}/{len(wa)} words"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cuda.md"))
    args = ap.parse_args()
    picture = image(0)
    setups = [("cpu", "fp32", None)]
    if torch.cuda.is_available():
        setups += [("cuda", "fp32", None), ("cuda", "bf16", None), ("cuda", "fp16", None)]
        if importlib.util.find_spec("bitsandbytes"):
            setups += [("cuda", "fp16", "int8"), ("cuda", "fp16", "nf4")]
    rows = []
    for dev, dt, q in setups:
        torch.manual_seed(0)
        r = row(dev, dt, q, args.tokens, picture)
        rows.append(r)
        print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items() if k != "ids"}, flush=True)
    ref = rows[0]["ids"]
    lines = [f"# CUDA check ({machine_line()})", "",
             f"`small` vision side + random SmolLM2-135M-sized LLaMA; {args.tokens}-token greedy answers.", "",
             "| device | dtype | quantize | load s | encode ms | first token ms | decode tok/s | 8 batched tok/s "
             f"| {args.tokens}-token answer s | greedy answer vs CPU fp32 | peak GPU MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['dtype']} | {r['quantize']} | {r['load_s']:.1f} | {r['encode_ms']:.1f} | "
                     f"{r['ttft_ms']:.1f} | {r['decode_tps']:.1f} | {r['batch8_tps']:.1f} | {r['answer_s']:.2f} | "
                     f"{agreement(ref, r['ids'])} | {peak(r)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
