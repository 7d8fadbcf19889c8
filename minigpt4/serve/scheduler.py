"""Dynamic batching: model work runs on one scheduler thread, never on the event loop.

Handlers `submit()` jobs; the thread takes the first waiting job, keeps collecting for up to
`batch_wait_ms` (or until `max_batch_size`), and runs them as ONE `engine.generate` call.
Streamed text deltas travel back to each request's asyncio queue through
`loop.call_soon_threadsafe`, results through its future. The waiting line is bounded: when it
is full `submit()` raises `QueueFull` and the handler answers 429 at once instead of letting
latency grow without limit."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class QueueFull(Exception):
    pass


@dataclass
class Job:
    request: Any                      # a minigpt4.chat.engine.Request
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    deltas: asyncio.Queue | None = None   # streaming: receives (index, text), then (index, None) at the end
    index: int = 0                        # which of the request's n choices this is
    cancelled: bool = False               # the client left or timed out before the batch started
    sent_text: bool = False               # some streamed text already reached the client
    enqueued: float = field(default_factory=time.monotonic)
    started: float | None = None

    def _call(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop is closed (server shutting down)
            pass

    def push_delta(self, text: str) -> None:
        if self.deltas is not None and text:
            self.sent_text = True
            self._call(self.deltas.put_nowait, (self.index, text))

    def finish(self, result=None, error: BaseException | None = None) -> None:
        def settle():
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)
            if self.deltas is not None:
                self.deltas.put_nowait((self.index, None))  # tells the SSE writer this choice is done
        self._call(settle)


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    max_batch: int = 0
    rejected: int = 0


class Batcher:
    def __init__(self, engine, max_batch_size: int = 16, batch_wait_ms: float = 10.0, max_queue: int = 64):
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="minigpt4-batcher", daemon=True)

    # --- event-loop side -----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def submit(self, jobs: list[Job]) -> None:
        """Queue jobs together (the n choices of one request) or refuse them all."""
        with self._cond:
            if len(self._waiting) + len(jobs) > self.max_queue:
                self.stats.rejected += len(jobs)
                raise QueueFull(f"{len(self._waiting)} requests are waiting (limit {self.max_queue})")
            self._waiting.extend(jobs)
            self._cond.notify()

    def queued(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return self._busy

    # --- scheduler thread ----------------------------------------------------------------
    def _take_batch(self) -> list[Job]:
        with self._cond:
            while not self._waiting and not self._stop:
                self._cond.wait()
            if self._stop:
                return []
            # Give requests that arrive together a moment to join this batch.
            deadline = time.monotonic() + self.batch_wait
            while len(self._waiting) < self.max_batch_size and not self._stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = []
            while self._waiting and len(batch) < self.max_batch_size:
                job = self._waiting.popleft()
                if not job.cancelled:
                    batch.append(job)
            return batch

    def _run(self) -> None:
        while not self._stop:
            batch = self._take_batch()
            if batch:
                self._run_batch(batch)

    def _run_batch(self, batch: list[Job]) -> None:
        self._busy = True
        now = time.monotonic()
        for job in batch:
            job.started = now
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.max_batch = max(self.stats.max_batch, len(batch))
        try:
            self._generate(batch)
        finally:
            self._busy = False

    def _generate(self, batch: list[Job]) -> None:
        try:
            results = self.engine.generate([j.request for j in batch],
                                           on_text=lambda i, delta: batch[i].push_delta(delta))
            for job, res in zip(batch, results):
                job.finish(res)
        except Exception as e:  # one bad request must not fail its batch-mates or kill the thread
            log.warning("batch of %d failed (%s: %s)", len(batch), type(e).__name__, e)
            if len(batch) == 1:
                batch[0].finish(error=e)
                return
            for job in batch:
                if job.sent_text:  # its client already saw text: a rerun would repeat it
                    job.finish(error=e)
                else:
                    self._generate([job])
