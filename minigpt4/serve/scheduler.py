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

    def deliver(self, text: str) -> None:
        """On the event loop: hand one delta to the SSE writer."""
        self.deltas.put_nowait((self.index, text))

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
    busy_s: float = 0.0  # time spent inside engine.generate


class Batcher:
    def __init__(self, engine, max_batch_size: int = 16, batch_wait_ms: float = 100.0, max_queue: int = 64,
                 flush_ms: float = 25.0, arrival_gap_ms: float = 15.0):
        self.engine = engine
        self.arrival_gap = arrival_gap_ms / 1000.0
        self.flush_interval = flush_ms / 1000.0
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._busy = False
        self._recent = 1
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
        """The next batch. How long to wait for company depends on recent load: clients whose
        answers just came back send their next question a few ms later, so when the last round had
        k requests in flight we keep waiting - while requests are still arriving (gaps under
        `arrival_gap`), at most `batch_wait` - until k are queued again. Otherwise two half-full
        batches would alternate forever. A lone client waits at most `arrival_gap`."""
        with self._cond:
            while not self._waiting and not self._stop:
                self._cond.wait()
            if self._stop:
                return []
            target = max(2, min(self.max_batch_size, self._recent))
            start = last_arrival = time.monotonic()
            seen = len(self._waiting)
            while len(self._waiting) < target and not self._stop:
                now = time.monotonic()
                if len(self._waiting) != seen:
                    seen, last_arrival = len(self._waiting), now
                left = min(start + self.batch_wait, last_arrival + self.arrival_gap) - now
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
            self.stats.busy_s += time.monotonic() - now
            log.debug("batch of %d took %.3f s", len(batch), time.monotonic() - now)
            with self._cond:  # requests in flight this round: the size worth waiting for next time
                self._recent = len(batch) + len(self._waiting)

    def _generate(self, batch: list[Job]) -> None:
        outbox = _Outbox(self.flush_interval)
        try:
            results = self.engine.generate([j.request for j in batch],
                                           on_text=lambda i, delta: outbox.add(batch[i], delta))
            outbox.flush()
            for job, res in zip(batch, results):
                job.finish(res)
        except Exception as e:  # one bad request must not fail its batch-mates or kill the thread
            outbox.flush()
            log.warning("batch of %d failed (%s: %s)", len(batch), type(e).__name__, e)
            if len(batch) == 1:
                batch[0].finish(error=e)
                return
            for job in batch:
                if job.sent_text:  # its client already saw text: a rerun would repeat it
                    job.finish(error=e)
                else:
                    self._generate([job])


class _Outbox:
    """Streamed deltas of a batch, handed to the event loop in bundles (one wake-up per
    `interval`, not one per token per row): every wake-up makes the loop thread take the GIL,
    and the model thread then waits for it once per small torch op - with 16 streams that
    convoy used to cost more than the model itself."""

    def __init__(self, interval: float):
        self.interval = interval
        self.items: list[tuple[Job, str]] = []
        self.last = time.monotonic()

    def add(self, job: Job, delta: str) -> None:
        if job.deltas is None or not delta:
            return
        job.sent_text = True
        self.items.append((job, delta))
        if time.monotonic() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.items:
            return
        items, self.items = self.items, []
        by_loop: dict[Any, list[tuple[Job, str]]] = {}
        for job, delta in items:
            by_loop.setdefault(job.loop, []).append((job, delta))
        for loop, group in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, group)
            except RuntimeError:  # loop closed: the server is shutting down
                pass


def _deliver_all(group: list[tuple[Job, str]]) -> None:
    for job, delta in group:
        job.deliver(delta)
