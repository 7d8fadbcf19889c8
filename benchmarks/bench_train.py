"""Stage-1 training throughput: ours vs an original-style loop, same config, same data, one run.

  ours      frozen-feature cache (ViT + Q-Former run once per image, before training), batches
            collated once into padded tensors, image features spliced with one masked_scatter,
            LM head only at label positions, fused with the loss (minigpt4.model.losses: the frozen
            head's input gradient computed in the forward; no logits kept) (minigpt4.train.Trainer).
  original  what MiniGPT-4 does every step: decode + preprocess every image, run the frozen ViT
            and Q-Former, then per-sample prompt assembly (`prompt_wrap` / `concat_emb_input_output`
            loops: tokenize, embed, torch.cat per sample, pad), and the HF LM loss over the whole
            sequence (logits at every position).
Each approach runs in its own subprocess so peak RSS is its own. Usage:
  python benchmarks/bench_train.py [--configs tiny mid] [--steps 20] [--write benchmarks/results/train.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 8


def model_config(name: str):
    from minigpt4.config import LLMConfig, get_config
    if name == "tiny":
        return get_config("tiny")
    if name == "vis":
        # vision-heavy: the `small` preset's vision side (128 px ViT, 6 blocks + 4-layer Q-Former) with the
        # tiny LLM - the regime where the frozen encoders dominate a training step.
        cfg, tiny = get_config("small"), get_config("tiny")
        cfg.llm, cfg.template, cfg.system = tiny.llm, "vicuna_v0", None
        return cfg
    # mid: the `small` preset's vision side (ViT 128/16, width 256, 6 blocks; Q-Former 4 layers)
    # with a random LLM of SmolLM2-135M's shape (no download needed).
    cfg = get_config("small")
    cfg.llm = LLMConfig(source="random", hidden_size=576, arch=dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=2048, vocab_size=49152, tie_word_embeddings=True))
    cfg.template = "vicuna_v0"
    return cfg


def make_trainer(config: str, data_dir: Path, out: Path, steps: int, feature_cache: str):
    from minigpt4.model.minigpt4 import build_model
    from minigpt4.train import loop
    from minigpt4.train.config import load_config
    loop.load_training_model = lambda cfg, device, dtype: build_model(model_config(config), seed=0)
    cfg = load_config({"model": "tiny", "stage": 1, "output_dir": str(out), "batch_size": BATCH,
                       "max_steps": steps + 2, "feature_cache": feature_cache, "progress": False,
                       "tensorboard": False, "checkpoint_every": 10_000, "log_every": 10_000,
                       "data": [{"type": "webdataset", "path": str(data_dir / "shards")}]})
    return loop.Trainer(cfg, resume="no")


def run_ours(config, data_dir, out, steps) -> dict:
    t = make_trainer(config, data_dir, out, steps, "on")
    t0 = time.perf_counter()
    t.build_cache()
    cache_s = time.perf_counter() - t0
    t.train_step()  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        t.train_step()
    return {"train_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "cache_build_s": cache_s,
            "cached_images": t.cache_stats["new"]}


def original_forward(model, pil_images, captions, max_txt_len=32):
    """The original per-step work: encoders on pixels, per-sample assembly, full-sequence LM loss."""
    import torch
    from minigpt4.data.image import preprocess
    cfg = model.cfg
    pixels = preprocess(pil_images, cfg.vision.image_size, cfg.image_mean, cfg.image_std)
    with torch.no_grad():  # frozen: `with self.maybe_autocast(): image_embeds = self.ln_vision(self.visual_encoder(image))`
        feats = model.vision_features(pixels)
    img_embeds = model.project(feats)
    tok, embed = model.tokenizer, model.llm.get_input_embeddings()
    bos = torch.tensor([tok.bos_token_id])
    embs, targets = [], []
    for img, cap in zip(img_embeds, captions):  # per-sample loop, as concat_emb_input_output
        ids = torch.tensor(tok(cap + "\n", add_special_tokens=False, truncation=True,
                               max_length=max_txt_len).input_ids)
        embs.append(torch.cat([embed(bos), img, embed(ids)], dim=0))
        targets.append(torch.cat([torch.full((1 + img.shape[0],), -100), ids]))
    T = max(e.shape[0] for e in embs)
    H = embs[0].shape[1]
    inputs = torch.stack([torch.cat([e, e.new_zeros(T - e.shape[0], H)]) for e in embs])
    mask = torch.stack([torch.cat([torch.ones(e.shape[0]), torch.zeros(T - e.shape[0])]) for e in embs]).long()
    labels = torch.stack([torch.cat([t, torch.full((T - t.shape[0],), -100)]) for t in targets])
    return model.llm(inputs_embeds=inputs, attention_mask=mask, labels=labels).loss


def run_original(config, data_dir, out, steps) -> dict:
    from minigpt4.data.datasets import clean_caption
    from minigpt4.data.image import load_image
    t = make_trainer(config, data_dir, out, steps, "off")  # same model, optimizer, schedule, data stream

    def step():
        recs = [next(t.stream)[1] for _ in range(BATCH)]
        pil = [load_image(r.images[0]()) for r in recs]  # decode every image, every step
        loss = original_forward(t.model, pil, [clean_caption(r.caption) for r in recs])
        loss.backward()
        t.optimizer.step()
        t.optimizer.zero_grad(set_to_none=True)
        t.scheduler.step()

    step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return {"train_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def child(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    data_dir = Path(args.data)
    with tempfile.TemporaryDirectory() as out:
        fn = run_ours if args.approach == "ours" else run_original
        r = fn(args.config, data_dir, Path(out), args.steps)
    r["samples_per_s"] = args.steps * BATCH / r["train_s"]
    # Per CPU-second of this (1-thread) process: what the step costs, whatever share of the
    # shared cores the scheduler gave it meanwhile.
    r["samples_per_cpu_s"] = args.steps * BATCH / r["cpu_s"]
    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(r))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--configs", nargs="+", default=["tiny", "vis", "mid"])
    # 60: ours runs 60 tiny steps in ~1-2 s; shorter windows were at the mercy of other jobs' bursts.
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--mid-steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per side; the best is kept")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--write", help="append a markdown table to this file")
    p.add_argument("--child", choices=["ours", "original"], help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.approach = args.child
        return child(args)
    from minigpt4.train.tinydata import write_shards
    args.load_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as data:
        for config in args.configs:
            steps = args.mid_steps if config == "mid" else args.steps
            n_images = BATCH * (steps + 2)  # every sample a distinct image: no reuse flatters the cache
            # Web images are larger than the model input: 256 px JPEGs, decoded and resized per use.
            write_shards(Path(data) / "shards", n_images, per_shard=64, size=args.image_size)
            # Interleaved rounds (order alternating), best run per side: on a shared machine the
            # least-disturbed run is the closest to the real cost, and both sides get the same chances.
            res: dict[str, dict] = {}
            rounds: list[dict[str, float]] = []
            cpu: dict[str, float] = {}
            for r in range(args.repeats):
                rounds.append({})
                for approach in (("original", "ours") if r % 2 == 0 else ("ours", "original")):
                    cmd = [sys.executable, __file__, "--child", approach, "--config", config, "--data", data,
                           "--steps", str(steps), "--threads", str(args.threads)]
                    outp = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
                    line = next((l for l in outp.stdout.splitlines() if l.startswith("RESULT ")), None)
                    if line is None:
                        raise SystemExit(f"{approach} failed:\n{outp.stderr[-3000:]}")
                    got = json.loads(line[7:])
                    print(f"  {config} round {r + 1} {approach:8s} {got['samples_per_s']:8.1f} samples/s", flush=True)
                    rounds[-1][approach] = got["samples_per_s"]
                    cpu[approach] = max(cpu.get(approach, 0.0), got["samples_per_cpu_s"])
                    if approach not in res or got["samples_per_s"] > res[approach]["samples_per_s"]:
                        res[approach] = got
            o, u = res["original"], res["ours"]
            amort = steps * BATCH / (u["train_s"] + u["cache_build_s"])
            # Each round's ratio too: a single lucky (quiet-moment) run cannot carry the median.
            per_round = sorted(x["ours"] / x["original"] for x in rounds)
            u["round_ratios"] = per_round
            u["cpu_ratio"], u["cpu_sps"], o["cpu_sps"] = cpu["ours"] / cpu["original"], cpu["ours"], cpu["original"]
            rows.append((config, steps, o, u, amort))
            print(f"{config:5s} steps={steps:3d} batch={BATCH}  original {o['samples_per_s']:8.1f} samples/s "
                  f"(RSS {o['peak_rss_mb']:.0f} MB)  ours {u['samples_per_s']:8.1f} samples/s (RSS "
                  f"{u['peak_rss_mb']:.0f} MB)  ratio {u['samples_per_s'] / o['samples_per_s']:.1f}x  "
                  f"| per-round ratios {', '.join(f'{x:.1f}' for x in per_round)} "
                  f"| per CPU-second {cpu['original']:.1f} vs {cpu['ours']:.1f} ({u['cpu_ratio']:.1f}x) "
                  f"| ours incl. one-time cache build {amort:.1f} samples/s ({amort / o['samples_per_s']:.1f}x)",
                  flush=True)
    if args.write:
        write_md(Path(args.write), rows, args)


def write_md(path: Path, rows, args) -> None:
    import torch
    lines = ["## Training (stage 1): samples/s, ours vs original-style loop", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
             f"torch {torch.__version__}, {args.threads} thread(s) per process, batch {BATCH}, CPU fp32, "
             f"{args.image_size} px JPEG inputs in webdataset shards; best of {args.repeats} interleaved runs per side. "
             f"`python benchmarks/bench_train.py --write {path}`. Load average (1 min) at start / end: "
             f"{args.load_start:.1f} / {os.getloadavg()[0]:.1f}.", "",
             "| config | steps | original samples/s | ours samples/s | ratio (best runs) | per-round ratios (median) "
             "| samples per CPU-second original / ours (ratio) | ours incl. cache build | peak RSS original / ours |",
             "|---|---|---|---|---|---|---|---|---|"]
    for config, steps, o, u, amort in rows:
        lines.append(f"| {config} | {steps} | {o['samples_per_s']:.1f} | {u['samples_per_s']:.1f} | "
                     f"**{u['samples_per_s'] / o['samples_per_s']:.1f}x** | "
                     f"{', '.join(f'{x:.1f}' for x in u['round_ratios'])} "
                     f"(**{statistics.median(u['round_ratios']):.1f}x**) | "
                     f"{o['cpu_sps']:.1f} / {u['cpu_sps']:.1f} (**{u['cpu_ratio']:.1f}x**) | {amort:.1f} ({amort / o['samples_per_s']:.1f}x, "
                     f"cache {u['cache_build_s']:.1f} s for {u['cached_images']} images) | "
                     f"{o['peak_rss_mb']:.0f} / {u['peak_rss_mb']:.0f} MB |")
    lines += ["", "tiny = the `tiny` preset (56px ViT, 2-layer Q-Former, 2-layer 64-wide LLM); vis = the `small` "
              "preset's vision side (128 px, 16 px patches, ViT 256 wide x 6 blocks, 4-layer Q-Former, 16 queries) + the tiny LLM; mid = the same vision side "
              "+ a random LLM shaped like SmolLM2-135M (30 layers). "
              "Each image is used once, so the cache build (a one-time cost, reused by every later epoch and "
              "run) is shown separately and amortised over a single pass; over the original's 4 epochs it is "
              "paid once.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    from minigpt4.utils import atomic_write_text
    atomic_write_text(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
