"""The whole curation run on real image files with the tiny model (random weights: its text is junk,
which is fine for the mechanics) and the fixer pointed at a real HTTP fake server on localhost."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fake_openai import FakeOpenAI, default_answer
from minigpt4.chat.engine import ChatEngine
from minigpt4.config import GenerationConfig
from minigpt4.curate.describe import Describer
from minigpt4.curate.fixers import LocalFixer, OpenAIFixer, OpenAIFixerConfig
from minigpt4.curate.pipeline import RunConfig, run
from minigpt4.curate.store import Store

ROOT = Path(__file__).resolve().parents[1]
GEN = GenerationConfig(max_new_tokens=6, do_sample=False)  # short greedy answers keep the test fast
# The random tiny model says the same thing about every image when greedy; plain sampling (no top-p
# sort) makes each item's text differ, so the fake server can count requests per item.
SAMPLED = GenerationConfig(max_new_tokens=6, do_sample=True, top_p=1.0, top_k=0, repetition_penalty=1.0)
LONG = ("The image shows a quiet harbour with small boats, a wooden pier, seagulls in the air and "
        "green hills behind the water under a cloudy sky.")


def make_images(folder: Path, n: int, bad: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = (rng.random((40 + 4 * i, 48, 3)) * 255).astype("uint8")
        Image.fromarray(arr).save(folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
    if bad:
        (folder / "zz_not_an_image.jpg").write_bytes(b"this is text, not a JPEG")
        good = (folder / "img00.jpg").read_bytes()
        (folder / "zz_truncated.jpg").write_bytes(good[: len(good) // 3])
    return folder


class FirstSeenAnswers:
    """Answer the k-th distinct paragraph with answers[k] (retries of a paragraph get the same answer)."""

    def __init__(self, answers: list[str]):
        self.answers, self.seen = answers, {}

    def __call__(self, paragraph: str) -> str:
        if paragraph not in self.seen:
            k = len(self.seen)
            self.seen[paragraph] = self.answers[k] if k < len(self.answers) else default_answer(paragraph)
        return self.seen[paragraph]


def fixer_for(fake: FakeOpenAI, **over) -> OpenAIFixer:
    cfg = dict(base_url=fake.base_url, api_key="sk-test", timeout=2.0, max_attempts=4, backoff_base=0.01,
               backoff_max=0.1, concurrency=3, price_in=0.5, price_out=1.5)
    cfg.update(over)
    return OpenAIFixer(OpenAIFixerConfig(**cfg))


def no_model():
    raise AssertionError("a resumed run with every image described must not load the model")


def test_pipeline_describes_fixes_filters_exports(tiny_model, tmp_path):
    images = make_images(tmp_path / "imgs", 4)
    out = tmp_path / "out"
    answers = FirstSeenAnswers([f"I apologize, I made a mistake. {LONG}", f"Here is the corrected paragraph: {LONG}"])
    script = ["429", "500", "malformed_json", "slow", "missing_choices"]
    with FakeOpenAI(script=script, responder=answers, slow_seconds=3.0, retry_after=0.01) as fake:
        fixer = fixer_for(fake)
        describer = Describer(ChatEngine(tiny_model), gen=SAMPLED)
        report = run(RunConfig(out=out, images=str(images), batch_size=3, require_review=False, progress=False),
                     lambda: describer, fixer)
        stats = fixer.stats()
        requests_first_run = len(fake.log)
        # Re-running a finished run repeats nothing: no model, no request.
        again = run(RunConfig(out=out, images=str(images), require_review=False, progress=False), no_model, fixer)
        assert len(fake.log) == requests_first_run
        fixer.close()

    assert report["images"] == 6 and report["bad_images"] == 2
    assert {b["image_id"] for b in report["bad"]} == {"zz_not_an_image", "zz_truncated"}
    assert all("ImageError" in b["error"] for b in report["bad"])
    assert report["describe"] == {"done": 4, "pending": 0, "continued": 4}  # 6 tokens < 80: always continued
    assert report["fix"]["done"] == 4 and report["fix"]["failed"] == 0
    assert report["filter"]["rules"]["apology"]["dropped"] == 1
    assert report["filter"]["rules"]["fixer_preamble"]["repaired"] == 1
    assert report["filter"]["kept"] == 3 and report["exported"] == 3
    assert again["exported"] == 3
    assert again["fix"]["endpoint"] == report["fix"]["endpoint"]  # the idle re-run added no requests
    # Every injected failure was met and retried; tokens and cost add up from the server's usage.
    assert [b for b, _ in fake.log if b != "ok"] == script
    assert sum(stats["errors"].values()) == 5 and stats["ok"] == 4
    assert report["fix"]["prompt_tokens"] == stats["prompt_tokens"] > 0
    assert report["fix"]["cost"] == pytest.approx(stats["cost"], abs=1e-6)
    assert report["fix"]["endpoint"]["errors"] == {"http_429": 1, "http_500": 1, "malformed": 2, "timeout": 1}
    assert "endpoint errors" in (out / "report.md").read_text()

    cap = json.loads((out / "filter_cap.json").read_text())
    assert len(cap["annotations"]) == 3
    with Store(out, create=False) as st:
        items = {i.id: i for i in st.items()}
    for a in cap["annotations"]:
        item = items[a["image_id"]]
        assert a["caption"] == item.final_text
        img = Image.open(out / "image" / f"{a['image_id']}.jpg")
        assert img.format == "JPEG" and img.size == Image.open(item.source["path"]).size
    described = [i for i in items.values() if i.describe_status == "done"]
    # What the fixer got is exactly the joined description (first answer + continuation).
    assert Counter(p for b, p in fake.log if b == "ok") == Counter(i.raw_text for i in described)
    for i in described:
        assert i.raw_text.startswith(i.raw_first) and i.continued
    prov = [json.loads(line) for line in (out / "provenance.jsonl").read_text().splitlines()]
    assert len(prov) == 6 and sum(p["exported"] for p in prov) == 3
    assert "Bad images" in (out / "report.md").read_text()


def test_failed_fixes_keep_the_description_and_are_retried_next_run(tiny_model, tmp_path):
    images = make_images(tmp_path / "imgs", 3, bad=False)
    out = tmp_path / "out"
    with FakeOpenAI(script=["500", "503", "500"]) as fake:
        # concurrency 1: the first item meets all three failures and gives up.
        fixer = fixer_for(fake, max_attempts=3, concurrency=1)
        report = run(RunConfig(out=out, images=str(images), progress=False),
                     lambda: Describer(ChatEngine(tiny_model), gen=SAMPLED), fixer)
        assert report["fix"]["done"] == 2 and report["fix"]["failed"] == 1
        with Store(out, create=False) as st:
            failed = st.items("fix_status='failed'")[0]
            before = {i.id: (i.raw_text, i.described_at) for i in st.items()}
        assert failed.raw_text and "gave up after 3 attempts" in failed.fix_error
        assert "retry" in (out / "report.md").read_text()

        report = run(RunConfig(out=out, images=str(images), progress=False), no_model, fixer)
        fixer.close()
    assert report["fix"]["done"] == 3 and report["fix"]["failed"] == 0
    with Store(out, create=False) as st:
        after = {i.id: (i.raw_text, i.described_at) for i in st.items()}
        assert st.get(failed.id).fix_attempts == 4
    assert after == before  # descriptions untouched by the retry
    assert Counter(p for b, p in fake.log if b == "ok") == Counter(t for t, _ in after.values())


def _count(db: Path, where: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return c.execute(f"SELECT COUNT(*) FROM items WHERE {where}").fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # the run has not created its tables yet


def _curate_cmd(images: Path, out: Path, fake: FakeOpenAI) -> list[str]:
    return [sys.executable, "-m", "minigpt4.cli", "curate", "run", "--images", str(images), "--out", str(out),
            "--model", "tiny", "--device", "cpu", "--max-new-tokens", "4", "--top-p", "1", "--repetition-penalty", "1", "--batch-size", "2",
            "--base-url", fake.base_url, "--api-key", "sk-test", "--concurrency", "2", "--timeout", "5",
            "--backoff", "0.01", "--no-progress", "--no-review"]


def test_sigkill_mid_run_resumes_without_losing_or_repeating_work(tmp_path, artifacts):
    n = 8
    images = make_images(tmp_path / "imgs", n, bad=False)
    out = tmp_path / "out"
    db = out / "state.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with FakeOpenAI(delay=0.4) as fake:
        proc = subprocess.Popen(_curate_cmd(images, out, fake), cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while _count(db, "fix_status='done'") < 2:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "the run made no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Store(out, create=False) as st:
            at_kill = {i.id: i for i in st.items()}
        fixed_at_kill = {k for k, i in at_kill.items() if i.fix_status == "done"}
        described_at_kill = {k for k, i in at_kill.items() if i.describe_status == "done"}
        assert 2 <= len(fixed_at_kill) < n, "the kill must land mid-run for this test to mean anything"

        rerun = subprocess.run(_curate_cmd(images, out, fake), cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=300)
        (artifacts / "rerun.log").write_text(rerun.stdout + rerun.stderr)
        assert rerun.returncode == 0, rerun.stderr[-3000:]

    with Store(out, create=False) as st:
        final = {i.id: i for i in st.items()}
    assert len(final) == n and all(i.fix_status == "done" and i.filter_status != "pending" for i in final.values())
    for k in described_at_kill:  # no finished description was redone
        assert (final[k].raw_text, final[k].described_at) == (at_kill[k].raw_text, at_kill[k].described_at)
    for k in fixed_at_kill:  # no finished fix was redone
        assert final[k].fixed_at == at_kill[k].fixed_at and final[k].fix_text == at_kill[k].fix_text
    # Per paragraph, the server answered once per item that has it - except at most the fixes that were
    # in flight when the kill came (answered, but never stored: not finished, so done again).
    texts = Counter(i.raw_text for i in final.values())
    done_texts = Counter(at_kill[k].raw_text for k in fixed_at_kill)
    for text, count in texts.items():
        if done_texts[text] == count:
            assert fake.ok_counts[text] == count
    assert sum(fake.ok_counts.values()) <= n + 2  # concurrency 2: at most two answers lost in flight
    cap = json.loads((out / "filter_cap.json").read_text())
    assert len(cap["annotations"]) == sum(i.filter_status == "kept" for i in final.values())
    assert rerun.stdout.strip().splitlines()[-1].startswith(f"{n} images -> {n} described -> {n} fixed")


def test_describe_continues_short_answers_in_the_same_conversation(tiny_model):
    class SpyEngine(ChatEngine):
        def generate(self, requests, on_text=None):
            self.calls.append(list(requests))
            return super().generate(requests, on_text)

    engine = SpyEngine(tiny_model)
    engine.calls = []
    img = Image.fromarray((np.random.default_rng(1).random((32, 32, 3)) * 255).astype("uint8"))
    d = Describer(engine, gen=GEN).describe([img, img.rotate(90)])
    assert len(engine.calls) == 2  # one batched first round, one batched "Continue" round
    cont = engine.calls[1][0]
    prompt = engine.template.render(cont.messages, system="")
    assert prompt.endswith(f"###Assistant: {d[0].first}###Human: Continue ###Assistant: ")
    assert d[0].continued and d[0].text.startswith(d[0].first)

    engine.calls = []
    d = Describer(engine, gen=GEN, continue_below=0).describe([img])
    assert len(engine.calls) == 1 and not d[0].continued and d[0].text == d[0].first


def test_local_fixer_runs_the_fix_prompt_through_the_chat_engine(tiny_model):
    engine = ChatEngine(tiny_model)
    fixer = LocalFixer(engine, max_new_tokens=5)
    outs = fixer.fix_batch(["A dog dog sits.", "A cat."])
    assert [o.ok for o in outs] == [True, True]
    assert all(0 < o.completion_tokens <= 5 and o.prompt_tokens > 40 for o in outs)
    # The answer budget follows the input length, not the 400-token ceiling.
    assert LocalFixer(engine)._budget(["one two three"]) < 50
    assert LocalFixer(engine)._budget(["word " * 400]) == 400


def test_cli_without_a_fixer_says_how_to_choose_one(tmp_path, capsys, monkeypatch):
    from minigpt4.cli import main
    for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "MINIGPT4_FIXER_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    assert main(["curate", "run", "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--fixer rules" in capsys.readouterr().err
    assert main(["curate", "report", str(tmp_path / "nothing")]) == 2
    assert "minigpt4 curate run" in capsys.readouterr().err
