"""Fixers: turn a raw model description into a clean paragraph, all behind one interface.

- `OpenAIFixer`: any OpenAI-compatible chat endpoint (ChatGPT as in the paper, vLLM, llama.cpp,
  Ollama, ...), with a concurrency limit, timeouts, retries with exponential backoff and jitter on
  429/5xx/timeouts/connection errors/malformed answers (Retry-After respected), token and cost counts.
- `LocalFixer`: a local model through the chat engine, for machines with no endpoint.
- `RuleFixer`: the rule-based cleaner (`minigpt4.curate.clean`), no model at all.

A fixer never raises for one bad item: `fix()` returns a `FixOutcome` with `error` set, so the
pipeline keeps the description and marks the item for a later retry. Only problems that fail
every item the same way (wrong API key, wrong URL or model) raise `FixerConfigError`.
"""
from __future__ import annotations

import email.utils
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from minigpt4.curate.clean import clean
from minigpt4.curate.prompts import FIX_PROMPT, fix_message


@dataclass
class FixOutcome:
    text: str | None = None
    error: str | None = None
    attempts: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    edits: list[str] = field(default_factory=list)  # what the rule cleaner changed
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class FixerConfigError(RuntimeError):
    """A fixer setting is wrong for every item (bad key, URL or model): stop the run and say how to fix it."""


class Fixer:
    name = "fixer"
    concurrency = 1  # how many fix() calls the pipeline may run at once

    def fix(self, text: str) -> FixOutcome:
        raise NotImplementedError

    def fix_batch(self, texts: list[str]) -> list[FixOutcome]:
        return [self.fix(t) for t in texts]

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class RuleFixer(Fixer):
    name = "rules"

    def fix(self, text: str) -> FixOutcome:
        cleaned, edits = clean(text)
        return FixOutcome(text=cleaned, edits=edits, attempts=1)


# --- OpenAI-compatible endpoint ------------------------------------------------------------
@dataclass
class OpenAIFixerConfig:
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-3.5-turbo"   # the paper used ChatGPT
    api_key: str | None = None
    prompt: str = FIX_PROMPT
    concurrency: int = 8
    timeout: float = 60.0          # seconds per request
    max_attempts: int = 6
    backoff_base: float = 1.0      # first retry waits ~base seconds, then doubles (plus jitter)
    backoff_max: float = 60.0
    retry_after_max: float = 600.0 # a server's Retry-After is honoured up to this many seconds
    temperature: float | None = None
    max_tokens: int | None = None
    price_in: float = 0.0          # price per 1M prompt tokens, for the cost count
    price_out: float = 0.0         # price per 1M completion tokens

    @classmethod
    def from_env(cls, **overrides: Any) -> "OpenAIFixerConfig":
        """Flags win over env: OPENAI_BASE_URL, MINIGPT4_FIXER_API_KEY / OPENAI_API_KEY, MINIGPT4_FIXER_MODEL."""
        env = {"base_url": os.environ.get("OPENAI_BASE_URL"),
               "api_key": os.environ.get("MINIGPT4_FIXER_API_KEY") or os.environ.get("OPENAI_API_KEY"),
               "model": os.environ.get("MINIGPT4_FIXER_MODEL")}
        values = {k: v for k, v in env.items() if v}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class _Retry(Exception):
    """A transient failure: wait (at least `after` seconds if the server said so) and try again."""

    def __init__(self, kind: str, message: str, after: float | None = None):
        super().__init__(message)
        self.kind, self.after = kind, after


def _retry_after(value: str | None) -> float | None:
    """Retry-After is either seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class OpenAIFixer(Fixer):
    name = "openai"

    def __init__(self, cfg: OpenAIFixerConfig):
        import httpx
        self.cfg = cfg
        self.concurrency = max(1, cfg.concurrency)
        headers = {"Content-Type": "application/json"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        # One pooled client shared by the worker threads (httpx.Client is thread-safe).
        self._client = httpx.Client(base_url=cfg.base_url.rstrip("/"), headers=headers,
                                    timeout=httpx.Timeout(cfg.timeout, connect=min(cfg.timeout, 10.0)),
                                    limits=httpx.Limits(max_connections=self.concurrency))
        self._lock = threading.Lock()
        self._stats: dict[str, Any] = {"requests": 0, "ok": 0, "failed": 0, "retries": 0, "prompt_tokens": 0,
                                       "completion_tokens": 0, "cost": 0.0, "errors": {}}

    def _count(self, **inc: Any) -> None:
        with self._lock:
            for k, v in inc.items():
                if k == "error":
                    self._stats["errors"][v] = self._stats["errors"].get(v, 0) + 1
                else:
                    self._stats[k] += v

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**self._stats, "errors": dict(self._stats["errors"])}

    def close(self) -> None:
        self._client.close()

    def _payload(self, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.cfg.model,
                                "messages": [{"role": "user", "content": fix_message(text, self.cfg.prompt)}]}
        if self.cfg.temperature is not None:
            body["temperature"] = self.cfg.temperature
        if self.cfg.max_tokens is not None:
            body["max_tokens"] = self.cfg.max_tokens
        return body

    def _request(self, body: dict[str, Any]) -> FixOutcome:
        import httpx
        try:
            r = self._client.post("/chat/completions", json=body)
        except httpx.TimeoutException as e:
            raise _Retry("timeout", f"no answer within {self.cfg.timeout:g}s ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise _Retry("connection", f"could not reach {self.cfg.base_url}: {e}") from None
        if r.status_code in (401, 403):
            raise FixerConfigError(f"the fixer endpoint refused the API key (HTTP {r.status_code}: {r.text[:200]}); "
                                   "pass a valid key with --api-key or MINIGPT4_FIXER_API_KEY / OPENAI_API_KEY")
        if r.status_code == 404:
            raise FixerConfigError(f"the fixer endpoint answered 404 for {self.cfg.base_url}/chat/completions "
                                   f"with model '{self.cfg.model}' ({r.text[:200]}); check --base-url (it usually "
                                   "ends in /v1) and --fixer-model")
        if r.status_code == 429 or r.status_code == 408 or r.status_code >= 500:
            raise _Retry(f"http_{r.status_code}", f"HTTP {r.status_code}: {r.text[:200]}",
                         _retry_after(r.headers.get("retry-after")))
        if r.status_code != 200:
            # Other 4xx (e.g. the paragraph is too long for the model): retrying will not help.
            raise ValueError(f"HTTP {r.status_code}: {r.text[:300]}")
        try:
            data = r.json()
            choice = data["choices"][0]
            content = choice["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("message.content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _Retry("malformed", f"malformed answer ({type(e).__name__}: {e}): {r.text[:200]!r}") from None
        usage = data.get("usage") or {}
        pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        cost = (pt * self.cfg.price_in + ct * self.cfg.price_out) / 1e6
        return FixOutcome(text=content.strip(), prompt_tokens=pt, completion_tokens=ct, cost=cost,
                          finish_reason=choice.get("finish_reason"))

    def _backoff(self, attempt: int, after: float | None) -> float:
        # Exponential with full jitter; the server's Retry-After is a floor.
        delay = random.uniform(0.5, 1.0) * min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** (attempt - 1))
        if after is not None:
            delay = max(delay, min(after, self.cfg.retry_after_max))
        return delay

    def fix(self, text: str) -> FixOutcome:
        body = self._payload(text)
        last = ""
        for attempt in range(1, self.cfg.max_attempts + 1):
            self._count(requests=1)
            try:
                out = self._request(body)
            except _Retry as e:
                self._count(error=e.kind)
                last = f"{e.kind}: {e}"
                if attempt < self.cfg.max_attempts:
                    self._count(retries=1)
                    time.sleep(self._backoff(attempt, e.after))
                continue
            except ValueError as e:
                self._count(error="http_4xx", failed=1)
                return FixOutcome(error=str(e), attempts=attempt)
            out.attempts = attempt
            self._count(ok=1, prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                        cost=out.cost)
            return out
        self._count(failed=1)
        return FixOutcome(error=f"gave up after {self.cfg.max_attempts} attempts; last error: {last}",
                          attempts=self.cfg.max_attempts)


# --- local model ---------------------------------------------------------------------------
class LocalFixer(Fixer):
    """A local causal LM as the fixer, through the chat engine, with text-only conversations."""
    name = "local"

    def __init__(self, engine, prompt: str = FIX_PROMPT, max_new_tokens: int = 400, system: str | None = ""):
        self.engine = engine
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        # No system message by default: the model's own one talks about an image, and there is none here.
        self.system = system

    def _budget(self, texts: list[str]) -> int:
        """A fixed paragraph is about as long as the input: cap the answer at 1.5x the longest input
        (+32), so a model that never stops does not run to max_new_tokens on every item."""
        longest = max(len(self.engine.tokenizer(t, add_special_tokens=False).input_ids) for t in texts)
        return max(1, min(self.max_new_tokens, int(1.5 * longest) + 32))

    def fix(self, text: str) -> FixOutcome:
        return self.fix_batch([text])[0]

    def fix_batch(self, texts: list[str]) -> list[FixOutcome]:
        from minigpt4.chat.engine import Request
        from minigpt4.chat.templates import Message
        from minigpt4.config import GenerationConfig
        gen = GenerationConfig(max_new_tokens=self._budget(texts), do_sample=False, repetition_penalty=1.0)
        reqs = [Request(messages=[Message("user", fix_message(t, self.prompt))], gen=gen, system=self.system)
                for t in texts]
        try:
            results = self.engine.generate(reqs)
        except Exception as e:  # one failing batch must not lose the descriptions
            return [FixOutcome(error=f"local fixer failed: {type(e).__name__}: {e}") for _ in texts]
        return [FixOutcome(text=r.text.strip(), prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
                           finish_reason=r.finish_reason) for r in results]
