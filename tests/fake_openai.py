"""A real HTTP, OpenAI-compatible chat server on localhost for tests, with scripted failures.

    with FakeOpenAI(script=["429", "500", "malformed_json"]) as fake:
        client = httpx.Client(base_url=fake.base_url)      # http://127.0.0.1:PORT/v1
        ...
        fake.ok_counts[paragraph]                          # successful answers per paragraph

Behaviours (one per request): "ok", "429" (with Retry-After: `retry_after`), "500", "503",
"slow" (sleeps `slow_seconds`, longer than a client's timeout, then answers), "malformed_json"
(200 with a body that is not JSON), "missing_choices" (JSON without `choices`), "empty_choices",
"no_content" (a choice without message.content), "drop" (closes the connection without an
answer), "401", "404".
Which behaviour a request gets: first `per_key` (the first rule whose substring occurs in the
user message, consuming that rule's list), then the global `script` list, then "ok". The
stdlib ThreadingHTTPServer keeps it dependency-free and fast to start.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


def default_answer(paragraph: str) -> str:
    """A deterministic, long enough 'fixed' paragraph that differs per input."""
    tag = hashlib.sha1(paragraph.encode()).hexdigest()[:8]
    return (f"The image shows a carefully arranged scene, reference {tag}. In the foreground there are several "
            "objects with clear shapes and bright colours, and the background is calm and softly lit. "
            "The overall impression is tidy and pleasant.")


def paragraph_of(content: str) -> str:
    """The paragraph part of a fix request (the fix prompt comes first, then a blank line)."""
    return content.split("\n\n", 1)[-1]


class FakeOpenAI:
    def __init__(self, script: list[str] | None = None, per_key: dict[str, list[str]] | None = None,
                 responder: Callable[[str], str] = default_answer, delay: float = 0.0,
                 slow_seconds: float = 3.0, retry_after: float = 0.05, model: str = "fake-gpt"):
        self.script = list(script or [])
        self.per_key = {k: list(v) for k, v in (per_key or {}).items()}
        self.responder = responder
        self.delay = delay
        self.slow_seconds = slow_seconds
        self.retry_after = retry_after
        self.model = model
        self.lock = threading.Lock()
        self.log: list[tuple[str, str]] = []      # (behaviour, paragraph) per request, in arrival order
        self.ok_counts: Counter[str] = Counter()  # paragraph -> successful answers sent
        self.auth: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0                    # most requests handled at the same time
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "FakeOpenAI":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": fake.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                try:
                    req = json.loads(body)
                    content = req["messages"][-1]["content"]
                except (ValueError, KeyError, IndexError, TypeError):
                    return self._send(400, {"error": {"message": "body must be a chat.completions request"}})
                fake._handle(self, req, content)

            def _send(self, status: int, obj=None, raw: bytes | None = None, headers: dict | None = None):
                data = raw if raw is not None else json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to do

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # --- behaviour -----------------------------------------------------------------------------
    def _next_behaviour(self, content: str) -> str:
        with self.lock:
            for key, plan in self.per_key.items():
                if key in content and plan:
                    return plan.pop(0)
            return self.script.pop(0) if self.script else "ok"

    def _handle(self, h, req: dict, content: str) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._answer(h, req, content)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, h, req: dict, content: str) -> None:
        behaviour = self._next_behaviour(content)
        paragraph = paragraph_of(content)
        with self.lock:
            self.log.append((behaviour, paragraph))
            self.auth.append(h.headers.get("authorization"))
        if behaviour == "429":
            return h._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                           headers={"retry-after": f"{self.retry_after:g}"})
        if behaviour in ("500", "503", "401", "404"):
            return h._send(int(behaviour), {"error": {"message": f"scripted {behaviour}"}})
        if behaviour == "malformed_json":
            return h._send(200, raw=b'{"choices": [{"message": {"content": "trunc')
        if behaviour == "missing_choices":
            return h._send(200, {"id": "x", "object": "chat.completion"})
        if behaviour == "empty_choices":
            return h._send(200, {"id": "x", "object": "chat.completion", "choices": []})
        if behaviour == "no_content":
            return h._send(200, {"id": "x", "choices": [{"index": 0, "message": {"role": "assistant"}}]})
        if behaviour == "drop":
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if behaviour == "slow":
            time.sleep(self.slow_seconds)
        elif self.delay:
            time.sleep(self.delay)
        answer = self.responder(paragraph)
        payload = {
            "id": f"chatcmpl-{len(self.log)}", "object": "chat.completion", "created": int(time.time()),
            "model": req.get("model", self.model),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(content.split()), "completion_tokens": len(answer.split()),
                      "total_tokens": len(content.split()) + len(answer.split())},
        }
        if behaviour == "ok":
            with self.lock:
                self.ok_counts[paragraph] += 1
        h._send(200, payload)
