"""Serving throughput: the same requests one at a time vs from 16 concurrent clients, in one run.

One-at-a-time is how the original Gradio demo serves (a queue, one generation at a time); the
concurrent run lets the server batch them (continuous batching: a request joins the running
batch at the next decode step). Both modes run in interleaved rounds. The server runs in its own process (as deployed); every request
streams (SSE), so time to first token (TTFT) is measured too.

    python benchmarks/bench_serve.py                          # tiny model
    python benchmarks/bench_serve.py --model small-random     # small preset, random SmolLM2-135M-sized LLM
    python benchmarks/bench_serve.py --requests 64 --clients 16 --max-tokens 16 --out benchmarks/results/serve.md
    python benchmarks/bench_serve.py --compare /tmp/before      # side by side with another checkout
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import cpu_name

SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
                    rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)
MODEL_ID = "minigpt4-bench"


# --- the server (child process) -----------------------------------------------------------------
def build(model: str):
    from minigpt4.config import LLMConfig, get_config
    from minigpt4.model.minigpt4 import build_model
    if model == "small-random":
        cfg = get_config("small")
        cfg.llm = LLMConfig(source="random", arch=dict(SMOLLM2_135M), hidden_size=576)
    else:
        cfg = get_config(model)
    m = build_model(cfg, seed=0)
    m.eval()
    return m


def serve_child(args) -> None:
    import torch
    import uvicorn

    from minigpt4.chat.engine import ChatEngine
    from minigpt4.serve.app import create_app
    from minigpt4.serve.config import ServeConfig
    import logging
    logging.basicConfig(level=os.environ.get("BENCH_SERVER_LOG", "WARNING"))  # DEBUG shows every batch
    torch.set_num_threads(args.threads)
    sys.setswitchinterval(0.0005)  # as `minigpt4 serve` does
    cfg = ServeConfig(model_name=MODEL_ID, max_batch_size=args.clients, max_queue=4 * args.clients,
                      request_timeout_s=600)
    app = create_app(ChatEngine(build(args.model)), cfg)
    uvicorn.run(app, host="127.0.0.1", port=args.child, log_level="warning")


# --- the clients ------------------------------------------------------------------------------
def png_data_url(i: int) -> str:
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (160, 120), (30 * i % 255, 90, 200 - 20 * i % 200))
    ImageDraw.Draw(img).ellipse((20 + 5 * i, 20, 100, 100), fill=(240, 200, 40))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def make_requests(n: int, max_tokens: int) -> list[dict]:
    images = [png_data_url(i) for i in range(8)]
    questions = ["Describe this image in detail.", "What is in the picture?", "What colors do you see?",
                 "Write a short caption."]
    # Sampling (top_p 0.9 as the model's defaults, plus top_k 50 as Hugging Face's default) with a
    # fixed seed per request: both runs do exactly the same work, and a random model writes visible
    # words (greedy decoding of a random model tends to emit whitespace only, which would hide the
    # time to first token). top_k matters for random models: their flat distributions otherwise
    # make the engine sort the whole 49k vocabulary for top-p on every step of every row.
    return [dict(model=MODEL_ID, max_tokens=max_tokens, seed=i, top_k=50, stream=True, stream_options={"include_usage": True},
                 messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": images[i % 8]}},
        {"type": "text", "text": questions[i % 4]}]}]) for i in range(n)]


def timed(client, req: dict) -> dict:
    """One streamed request; a light SSE reader (httpx) keeps client CPU low on a small machine."""
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    with client.stream("POST", "/v1/chat/completions", json=req) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if ttft is None and any(c["delta"].get("content") for c in chunk["choices"]):
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {"latency": total, "ttft": ttft if ttft is not None else total, "tokens": tokens}


def run(url: str, reqs: list[dict], clients: int) -> tuple[float, list[dict]]:
    """Send `reqs` from `clients` threads; returns (wall time, per-request results)."""
    import httpx
    pool_clients = [httpx.Client(base_url=url, timeout=600) for _ in range(clients)]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        out = list(pool.map(lambda ir: timed(pool_clients[ir[0] % clients], ir[1]), enumerate(reqs)))
    wall = time.perf_counter() - t0
    for c in pool_clients:
        c.close()
    return wall, out


def summarize(wall: float, out: list[dict]) -> dict:
    lat = sorted(r["latency"] for r in out)
    ttft = sorted(r["ttft"] for r in out)
    tokens = sum(r["tokens"] for r in out)
    return {"wall": wall, "rps": len(out) / wall, "tok_s": tokens / wall, "tokens": tokens,
            "p50": pct(lat, 50), "p95": pct(lat, 95), "ttft50": pct(ttft, 50), "ttft95": pct(ttft, 95)}


def pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(p) - 1] if len(xs) > 1 else xs[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, src: str | None = None) -> tuple[subprocess.Popen, str]:
    """The server in its own process; `src`: another checkout of this repository to serve with
    (its own bench_serve.py starts it, its minigpt4 package comes first on the path)."""
    import httpx
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    script = __file__
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        script = str(Path(src) / "benchmarks" / "bench_serve.py")
    child = subprocess.Popen([sys.executable, script, "--child", str(port), "--model", args.model,
                              "--threads", str(args.threads), "--clients", str(args.clients)], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return child, url
        except httpx.HTTPError:
            pass
        if child.poll() is not None:
            raise SystemExit("server process exited during start-up")
        time.sleep(0.5)
    child.kill()
    raise SystemExit("server did not start within 300 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny, small-random, or any preset build_model can make")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    ap.add_argument("--rounds", type=int, default=4,
                    help="the requests are sent in this many rounds; each round runs every mode (and server) "
                         "once, in alternating order, so a change of machine load hits all of them alike")
    ap.add_argument("--compare", default=None, metavar="DIR",
                    help="also serve from this checkout (e.g. `git worktree add /tmp/old HEAD~3`), "
                         "interleaved with this one, as 'before'")
    ap.add_argument("--out", default=None, help="write the results as markdown here (atomically)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        return serve_child(args)

    import httpx
    from tqdm import tqdm
    servers = {"": start_server(args)}
    if args.compare:
        servers["before: "] = start_server(args, args.compare)
    modes = [("one at a time", 1), (f"{args.clients} concurrent clients", args.clients)]
    try:
        reqs = make_requests(args.requests, args.max_tokens)
        rounds = max(1, min(args.rounds, args.requests))
        chunks = [reqs[r::rounds] for r in range(rounds)]
        for _, url in servers.values():  # warm-up: every image encoded once (cache is shared), kernels ready
            run(url, make_requests(8, 2), 1)
        walls: dict = {}
        outs: dict = {}
        steps: dict = {}
        jobs = [(tag, name, clients) for tag in servers for name, clients in modes]
        for r in tqdm(range(rounds), desc="bench", unit="round"):
            for tag, name, clients in (jobs if r % 2 == 0 else jobs[::-1]):
                h0 = httpx.get(servers[tag][1] + "/health").json()
                wall, out = run(servers[tag][1], chunks[r], clients)
                h1 = httpx.get(servers[tag][1] + "/health").json()
                if "rows" in h1:  # decode steps and rows of this mode alone
                    st = steps.setdefault((tag, name), [0, 0])
                    st[0] += h1["steps"] - h0["steps"]
                    st[1] += h1["rows"] - h0["rows"]
                walls[tag, name] = walls.get((tag, name), 0.0) + wall
                outs.setdefault((tag, name), []).extend(out)
        health = {tag: httpx.get(url + "/health").json() for tag, (_, url) in servers.items()}
    finally:
        for child, _ in servers.values():
            child.terminate()
        for child, _ in servers.values():
            child.wait(30)

    results = {k: summarize(walls[k], outs[k]) for k in walls}
    cols = [(tag, name) for tag in servers for name, _ in modes]
    for k, (n, rows_) in steps.items():
        results[k]["batch"] = rows_ / max(1, n)
    rows = [("requests/s", "rps", "{:.2f}"), ("tokens/s", "tok_s", "{:.1f}"), ("wall time (s)", "wall", "{:.1f}"),
            ("latency p50 (s)", "p50", "{:.2f}"), ("latency p95 (s)", "p95", "{:.2f}"),
            ("TTFT p50 (s)", "ttft50", "{:.3f}"), ("TTFT p95 (s)", "ttft95", "{:.3f}")]
    machine = f"{cpu_name()}, {os.cpu_count()} CPU cores (shared with other jobs)"
    lines = [f"### Serving: `{args.model}`, {args.requests} requests (1 image + question, max_tokens "
             f"{args.max_tokens}, top_p 0.9 + top_k 50 sampling with a seed per request, streamed)", "",
             f"Machine: {machine}; server in its own process, torch threads {args.threads}, "
             f"batches up to {args.clients}; {rounds} interleaved rounds.", "",
             "| metric | " + " | ".join(f"{tag}{name}" for tag, name in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(fmt.format(results[c][k]) for c in cols) + " |" for label, k, fmt in rows]
    if steps:
        lines += ["| mean decode batch | " + " | ".join(f"{results[c]['batch']:.1f}" if "batch" in results[c] else "-"
                                                      for c in cols) + " |"]
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    lines += ["", f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) on "
                  f"{os.cpu_count()} cores (other jobs share the machine).", ""]
    seq_name, con_name = modes[0][0], modes[1][0]
    for tag in servers:
        h = health[tag]
        ratio = results[tag, con_name]["rps"] / results[tag, seq_name]["rps"]
        batching = (f"largest decode batch {h['max_batch']}, {h['batches']} prefills" if "rows" in h
                    else f"{h['batches']} batches (largest {h['max_batch']})")
        lines += [f"**{tag or 'this checkout: '}throughput ratio {ratio:.1f}x** ({con_name} vs one at a time). "
                  f"Server: {batching} for {h['requests']} requests (both modes and the warm-up).", ""]
    if args.compare:
        gain = results["", con_name]["rps"] / results["before: ", con_name]["rps"]
        lines += [f"{con_name}: this checkout serves {gain:.2f}x the requests/s of `{args.compare}`.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        from minigpt4.utils import atomic_write_text
        out = Path(args.out)
        old = out.read_text() if out.exists() else "## Serving (`minigpt4 serve`)\n\n"
        atomic_write_text(out, old.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
