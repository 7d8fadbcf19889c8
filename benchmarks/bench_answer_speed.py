"""A 100-token answer including the image encode, side by side: ours vs the original-style path.

Same model, same image, same prompt, greedy, both forced to exactly --tokens new tokens:
  * ours:     `measure_speed` = ChatEngine (one prefill, hand-written decode loop with a KV cache),
              image cache cleared before every run so the encode is paid each time;
  * original: what the original demo does per answer - preprocess + encode the image again, build
              the whole prompt's embeddings, then `llm.generate(inputs_embeds=...)` from transformers.
  * ours int8: the same ChatEngine on the model loaded with --quantize int8 (LLM Linear layers in
              int8 / fp16 weights, minigpt4/model/quantize.py; vision side fp32).
Mean of --runs runs each (all sides interleaved, so machine load hits them alike), seconds and
tokens/s, for each --threads setting. The issue's target: < 5 s on this CPU.
Quality of int8 against fp32 on a few images: pure greedy answers (no repetition penalty), how many
leading tokens agree, and teacher-forced top-1 agreement / max logit difference over fp32's answer.
Writes benchmarks/results/answer_speed.md.

    python benchmarks/bench_answer_speed.py [--model default] [--tokens 100] [--runs 3] [--threads 1,2]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import torch

# HF applies the penalty to generated tokens only with inputs_embeds - the same as our loop
warnings.filterwarnings("ignore", message="Passing `repetition_penalty`")


def original_style(model, image, prompt: str, tokens: int) -> tuple[float, int]:
    from minigpt4.chat.engine import ChatEngine
    from minigpt4.chat.templates import Message, encode_conversation
    from minigpt4.data.image import load_image, preprocess
    engine = ChatEngine(model)
    cfg = model.cfg
    t0 = time.perf_counter()
    with torch.inference_mode():
        pixels = preprocess([load_image(image)], cfg.vision.image_size, cfg.image_mean, cfg.image_std)
        img = model.encode_pixels(pixels.to(model.device, next(model.parameters()).dtype))
        ids, _ = encode_conversation(model.tokenizer, engine.template, [Message("user", prompt, images=[image])],
                                     cfg.num_image_tokens, system=engine.system)
        ids_t = torch.tensor([ids], device=model.device)
        embeds = model.embed(ids_t, img)
        out = model.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids_t),
                                 max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                 repetition_penalty=cfg.generation.repetition_penalty,
                                 pad_token_id=model.tokenizer.eos_token_id)
    return time.perf_counter() - t0, out.shape[1]


@torch.inference_mode()
def greedy_ids(model, image, prompt: str, n: int) -> tuple[list[int], torch.Tensor, int]:
    """Pure greedy token ids of an answer (prompt ids, embeds for teacher forcing, prompt length)."""
    from transformers import DynamicCache

    from minigpt4.chat.engine import ChatEngine
    from minigpt4.chat.templates import Message, encode_conversation
    from minigpt4.data.image import load_image, preprocess
    engine = ChatEngine(model)
    cfg = model.cfg
    pixels = preprocess([load_image(image)], cfg.vision.image_size, cfg.image_mean, cfg.image_std)
    img = model.encode_pixels(pixels)
    ids, _ = encode_conversation(model.tokenizer, engine.template, [Message("user", prompt, images=[image])],
                                 cfg.num_image_tokens, system=engine.system)
    cache = DynamicCache()
    out = model.llm(inputs_embeds=model.embed(torch.tensor([ids]), img), cache=cache, use_cache=True)
    toks = []
    for _ in range(n):
        toks.append(int(out.logits[0, -1].argmax()))
        out = model.llm(input_ids=torch.tensor([[toks[-1]]]), cache=cache, use_cache=True)
    return toks, model.embed(torch.tensor([ids + toks]), img), len(ids)


@torch.inference_mode()
def quality(m32, m8, images, prompt: str, n: int) -> list[dict]:
    rows = []
    for image in images:
        t32, emb32, plen = greedy_ids(m32, image, prompt, n)
        t8, _, _ = greedy_ids(m8, image, prompt, n)
        a = m32.llm(inputs_embeds=emb32).logits[0, plen - 1:-1]
        # both on fp32's answer (the embeddings and the vision side are fp32 in both models)
        b = m8.llm(inputs_embeds=emb32).logits[0, plen - 1:-1]
        rows.append({"same_prefix": next((i for i, (x, y) in enumerate(zip(t32, t8)) if x != y), n),
                     "top1": (a.argmax(-1) == b.argmax(-1)).float().mean().item(),
                     "maxdiff": (a - b).abs().max().item(), "scale": a.abs().max().item(),
                     "fp32": m32.tokenizer.decode(t32), "int8": m8.tokenizer.decode(t8)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts to measure")
    ap.add_argument("--no-original", action="store_true", help="skip the original-style side (saves time)")
    ap.add_argument("--quality-images", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "answer_speed.md"))
    args = ap.parse_args()
    from minigpt4.chat.presets import get_preset
    from minigpt4.eval.runner import measure_speed
    from minigpt4.weights import load_model
    from minigpt4.world import generate
    load0 = os.getloadavg()
    m32 = load_model(args.model).eval()
    m8 = load_model(args.model, quantize="int8").eval()
    size = max(m32.cfg.vision.image_size, 96)
    image = generate("scene", 0, "test", size).image
    prompt = get_preset("describe").prompt
    sides = [("ours fp32 (ChatEngine, cold image cache)", lambda: measure_speed(m32, image, 1, args.tokens, prompt=prompt)["seconds"], args.tokens),
             ("ours int8 (--quantize int8)", lambda: measure_speed(m8, image, 1, args.tokens, prompt=prompt)["seconds"], args.tokens)]
    if not args.no_original:
        sides.append(("original style fp32 (re-encode, HF generate)",
                      lambda: original_style(m32, image, prompt, args.tokens)[0], args.tokens))
    lines = [f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared; torch "
             f"{torch.__version__}. Model `{args.model}`, greedy, exactly {args.tokens} new tokens incl. the "
             f"image encode (cold image cache), mean of {args.runs} interleaved runs per side.", ""]
    table = ["| threads | path | seconds | tokens/s | target < 5 s |", "|---|---|---|---|---|"]
    summary = {}
    for th in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(th)
        original_style(m32, image, prompt, 2)  # warm-up at this thread count
        times = {name: [] for name, _, _ in sides}
        for _ in range(args.runs):
            for name, fn, _ in sides:
                times[name].append(fn())
        for name, _, n in sides:
            m = statistics.mean(times[name])
            summary[(th, name)] = m
            table.append(f"| {th} | {name} | {m:.2f} (min {min(times[name]):.2f}) | {n / m:.1f} | "
                         f"{'met' if m < 5 else 'not met'} |")
        print("\n".join(table), flush=True)
    load1 = os.getloadavg()
    torch.set_num_threads(1)
    images = [generate("scene", i, "test", size).image for i in range(args.quality_images)]
    q = quality(m32, m8, images, prompt, 60)
    qt = ["| image | same leading greedy tokens (of 60) | teacher-forced top-1 agreement | max logit diff "
          "(fp32 logit range) |", "|---|---|---|---|"]
    for i, r in enumerate(q):
        qt.append(f"| scene {i} | {r['same_prefix']} | {r['top1']:.3f} | {r['maxdiff']:.2f} ({r['scale']:.1f}) |")
    answers = [f"- scene {i} fp32: {r['fp32'][:160]!r}\n  int8: {r['int8'][:160]!r}" for i, r in enumerate(q)]
    ratios = [f"{th} thread(s): int8 {summary[(th, sides[1][0])]:.2f} s vs fp32 {summary[(th, sides[0][0])]:.2f} s "
              f"= {summary[(th, sides[0][0])] / summary[(th, sides[1][0])]:.2f}x" for th in
              sorted({t for t, _ in summary})]
    lines += table + ["", "Speed-up of int8 over fp32: " + "; ".join(ratios) + ".",
                      f"Load average (1/5/15 min) before: {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, after the "
                      f"timing: {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f}.", "",
                      "Quality of int8 vs fp32 (pure greedy, no repetition penalty, describe prompt):", ""] + qt + \
        ["", "Answers (first 160 characters):", ""] + answers
    text = "# 100-token answer incl. image encode: fp32 vs int8 (`benchmarks/bench_answer_speed.py`)\n\n" + \
        "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
