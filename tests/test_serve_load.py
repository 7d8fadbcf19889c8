"""A bounded load test on localhost: 200 requests from 16 concurrent clients (official openai
client, a mix of plain and streaming, with and without images) against a real server on the
tiny model. Every request must be answered or cleanly refused with 429, never a 5xx; requests
must really be batched; the process memory must stay flat."""
from __future__ import annotations

import concurrent.futures as cf
import os
import subprocess
import sys
import time

import httpx
import openai
import psutil
import pytest

from test_serve_support import free_port, image_part, png_bytes

MODEL = "minigpt4-tiny"
IMAGES = [image_part(png_bytes((i * 60, 100, 200 - i * 40))) for i in range(4)]


def _one(c: openai.OpenAI, i: int) -> tuple[int, str]:
    """Returns (HTTP status, what came back)."""
    content = [IMAGES[i % 4], {"type": "text", "text": f"Question {i}: what is this?"}] if i % 3 else f"Hello {i}"
    kw = dict(model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=4 + i % 5)
    try:
        if i % 4 == 0:
            text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **kw)
                           if ch.choices)
            return 200, text
        r = c.chat.completions.create(**kw)
        assert r.usage.completion_tokens <= 8
        return 200, r.choices[0].message.content
    except openai.APIStatusError as e:
        return e.status_code, str(e)


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory):
    """`python -m minigpt4.serve` (what `minigpt4 serve` runs) in its own process, as deployed: the
    clients' threads then do not compete with the server for the GIL."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    log = open(log_path, "w")
    p = subprocess.Popen([sys.executable, "-m", "minigpt4.serve", "--model", "tiny", "--port", str(port),
                          "--api-key", "k", "--max-batch-size", "16", "--max-queue", "64", "--threads", "1", "--log-level", "warning"],
                         stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert p.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "server did not come up in 180 s"
            time.sleep(0.3)
        yield p, url
    finally:
        p.terminate()
        p.wait(30)
        log.close()
    assert p.returncode in (0, -15), log_path.read_text()


def test_cli_serve_starts_in_one_command(cli_server):
    p, url = cli_server
    assert httpx.get(url + "/v1/models").status_code == 401  # --api-key is on
    c = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    assert [m.id for m in c.models.list()][0] == MODEL
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert r.usage.completion_tokens <= 3


def test_200_requests_from_16_clients(cli_server):
    p, url = cli_server
    server = psutil.Process(p.pid)
    clients = [openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=120) for _ in range(16)]
    with cf.ThreadPoolExecutor(16) as pool:  # warm-up, so allocator pools exist before measuring
        list(pool.map(lambda i: _one(clients[i % 16], i), range(16)))
    rss_before = server.memory_info().rss
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: _one(clients[i % 16], i), range(200)))
    elapsed = time.monotonic() - t0
    rss_after = server.memory_info().rss
    stats = httpx.get(url + "/health").json()

    codes = [code for code, _ in results]
    assert all(c in (200, 429) for c in codes), sorted(set(codes))
    assert codes.count(200) >= 150  # 16 clients never fill a 64-deep queue: nearly all are answered
    # really batched: requests decode side by side (continuous batching), not one after another
    assert stats["max_batch"] >= 4 and stats["mean_batch"] >= 2 and stats["batches"] < stats["requests"], stats
    growth = (rss_after - rss_before) / 2**20
    assert growth < 150, f"server RSS grew by {growth:.0f} MiB over 200 requests"
    print(f"\n200 requests in {elapsed:.1f} s ({200 / elapsed:.1f} req/s), batches {stats['batches']}, "
          f"mean decode batch {stats['mean_batch']}, largest {stats['max_batch']}, server RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB")
