"""The OpenAI-compatible fixer against a real HTTP fake server that injects failures."""
from __future__ import annotations

import time

import pytest

from fake_openai import FakeOpenAI, default_answer
from minigpt4.curate.fixers import FixerConfigError, OpenAIFixer, OpenAIFixerConfig, RuleFixer, _retry_after
from minigpt4.curate.prompts import FIX_PROMPT

PARAGRAPH = "A dog dog sits on on the grass. A dog sits on the grass."


def make_fixer(fake: FakeOpenAI, **over) -> OpenAIFixer:
    # timeout 1 s: far above a localhost round trip even on a loaded machine, below the "slow" answers.
    cfg = dict(base_url=fake.base_url, model="fake-gpt", api_key="sk-test", timeout=1.0, max_attempts=4,
               backoff_base=0.01, backoff_max=0.2, concurrency=4, price_in=1.0, price_out=2.0)
    cfg.update(over)
    return OpenAIFixer(OpenAIFixerConfig(**cfg))


def test_fixer_sends_the_papers_prompt_and_counts_tokens_and_cost():
    with FakeOpenAI() as fake:
        fixer = make_fixer(fake)
        out = fixer.fix(PARAGRAPH)
        fixer.close()
    assert out.ok and out.attempts == 1
    assert out.text == default_answer(PARAGRAPH)
    assert fake.log == [("ok", PARAGRAPH)]
    assert fake.auth == ["Bearer sk-test"]
    content = FIX_PROMPT + "\n\n" + PARAGRAPH
    assert out.prompt_tokens == len(content.split()) and out.completion_tokens == len(out.text.split())
    assert out.cost == pytest.approx((out.prompt_tokens * 1.0 + out.completion_tokens * 2.0) / 1e6)
    stats = fixer.stats()
    assert (stats["requests"], stats["ok"], stats["retries"], stats["prompt_tokens"]) == (1, 1, 0, out.prompt_tokens)


@pytest.mark.parametrize("failure", ["429", "500", "503", "slow", "malformed_json", "missing_choices",
                                     "empty_choices", "no_content", "drop"])
def test_fixer_retries_each_transient_failure(failure):
    with FakeOpenAI(script=[failure], slow_seconds=2.0) as fake:
        fixer = make_fixer(fake)
        out = fixer.fix(PARAGRAPH)
        fixer.close()
    assert out.ok, out.error
    assert out.attempts == 2
    assert out.text == default_answer(PARAGRAPH)
    assert [b for b, _ in fake.log] == [failure, "ok"]
    assert sum(fixer.stats()["errors"].values()) == 1 and fixer.stats()["retries"] == 1


def test_fixer_respects_retry_after():
    with FakeOpenAI(script=["429"], retry_after=0.6) as fake:
        fixer = make_fixer(fake, backoff_base=0.001)
        t = time.perf_counter()
        out = fixer.fix(PARAGRAPH)
        waited = time.perf_counter() - t
        fixer.close()
    assert out.ok and waited >= 0.6
    assert _retry_after("2") == 2.0 and _retry_after("garbage") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait


def test_fixer_gives_up_without_raising_and_keeps_the_reason():
    with FakeOpenAI(script=["500", "malformed_json", "429", "500", "ok"]) as fake:
        fixer = make_fixer(fake, max_attempts=4)
        out = fixer.fix(PARAGRAPH)
        fixer.close()
    assert not out.ok and out.text is None
    assert out.attempts == 4 and "gave up after 4 attempts" in out.error and "http_500" in out.error
    assert fixer.stats()["errors"] == {"http_500": 2, "malformed": 1, "http_429": 1}
    assert fixer.stats()["failed"] == 1


def test_fixer_config_errors_stop_at_once_with_the_fix():
    with FakeOpenAI(script=["401"]) as fake:
        with pytest.raises(FixerConfigError, match="--api-key"):
            make_fixer(fake).fix(PARAGRAPH)
    with FakeOpenAI(script=["404"]) as fake:
        with pytest.raises(FixerConfigError, match="--base-url"):
            make_fixer(fake).fix(PARAGRAPH)


def test_fixer_connection_refused_is_a_failure_not_a_crash():
    with FakeOpenAI() as fake:
        url = fake.base_url
    out = OpenAIFixer(OpenAIFixerConfig(base_url=url, max_attempts=2, backoff_base=0.01, timeout=0.5)).fix(PARAGRAPH)
    assert not out.ok and "connection" in out.error


def test_fixer_env_and_flags():
    cfg = OpenAIFixerConfig.from_env(model=None, base_url="http://x/v1")
    assert cfg.base_url == "http://x/v1" and cfg.model == "gpt-3.5-turbo"


def test_rule_fixer_is_a_fixer():
    out = RuleFixer().fix_batch([PARAGRAPH])[0]
    assert out.ok and out.text == "A dog sits on the grass." and "repeated_sentences" in out.edits


def test_fix_stage_keeps_the_concurrency_limit_and_commits_each_result(tmp_path):
    from minigpt4.curate.filters import FilterConfig
    from minigpt4.curate.pipeline import FixStage
    from minigpt4.curate.store import Store

    texts = [f"Paragraph number {i} about a picture." for i in range(8)]
    with Store(tmp_path) as st, FakeOpenAI(delay=0.3) as fake:
        st.add_items([(f"i{i}", {"kind": "file", "path": "x"}) for i in range(8)])
        for i, t in enumerate(texts):
            st.set_described(f"i{i}", t, t, 9, False, f"image/i{i}.jpg")
        stage = FixStage(st, make_fixer(fake, concurrency=3), FilterConfig(), batch_size=8, progress=False)
        t0 = time.perf_counter()
        for i, t in enumerate(texts):
            stage.submit(f"i{i}", t)
        stage.close()
        took = time.perf_counter() - t0
        assert fake.max_in_flight == 3
        assert took < 8 * 0.3  # requests overlapped
        items = st.items()
    assert all(i.fix_status == "done" and i.filter_status == "kept" for i in items)
    assert sorted(fake.ok_counts.values()) == [1] * 8 and set(fake.ok_counts) == set(texts)
