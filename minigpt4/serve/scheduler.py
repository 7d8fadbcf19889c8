"""Continuous batching: model work runs on one scheduler thread, never on the event loop.

Handlers `submit()` jobs; the thread keeps ONE running `DecodeBatch` and, between two decode
steps, admits whatever is waiting (up to `max_batch_size` live rows): the newcomers' prompts are
prefilled together and join the batch's KV cache, and finished rows leave at once. So a request
never waits for a whole batch to finish, and the batch stays full while clients keep sending.
Streamed text deltas travel back to each request's asyncio queue through
`loop.call_soon_threadsafe`, results through its future. The waiting line is bounded: when it
is full `submit()` raises `QueueFull` and the handler answers 429 at once instead of letting
latency grow without limit. A job whose client left or timed out is dropped from the batch."""
from __future__ import annotations

import asyncio
import itertools
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
    cancelled: bool = False               # the client left or timed out: skip it or drop its row
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

    def settle(self, result=None, error: BaseException | None = None) -> None:
        """On the event loop: the job's result (or error)."""
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)
        if self.deltas is not None:
            self.deltas.put_nowait((self.index, None))  # tells the SSE writer this choice is done

    def finish(self, result=None, error: BaseException | None = None) -> None:
        self._call(self.settle, result, error)


@dataclass
class BatchStats:
    batches: int = 0      # prefills: groups of requests that joined the running batch together
    requests: int = 0
    max_batch: int = 0    # most live rows in one decode step
    steps: int = 0        # decode steps
    rows: int = 0         # live rows summed over decode steps (rows / steps = mean batch)
    rejected: int = 0
    busy_s: float = 0.0   # time spent prefilling and decoding

    def mean_batch(self) -> float:
        return self.rows / self.steps if self.steps else 0.0


class Batcher:
    def __init__(self, engine, max_batch_size: int = 16, batch_wait_ms: float = 0.0, max_queue: int = 64,
                 flush_ms: float = 25.0):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.engine = engine
        self.flush_interval = flush_ms / 1000.0
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._busy = False
        self._keys = itertools.count()
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
    def _take(self, room: int, idle: bool) -> list[Job]:
        """Waiting jobs for `room` free rows; blocks while there is nothing to do. An idle server
        may wait up to `batch_wait` for company (off by default: late arrivals join next step)."""
        with self._cond:
            while idle and not self._waiting and not self._stop:
                self._cond.wait()
            if idle and self.batch_wait > 0:
                end = time.monotonic() + self.batch_wait
                while len(self._waiting) < room and not self._stop and (left := end - time.monotonic()) > 0:
                    self._cond.wait(left)
            taken = []
            while self._waiting and len(taken) < room:
                job = self._waiting.popleft()
                if not job.cancelled:
                    taken.append(job)
            return taken

    def _run(self) -> None:
        from minigpt4.chat.engine import DecodeBatch
        batch, live = DecodeBatch(self.engine), {}
        outbox = _Outbox(self.flush_interval)
        while not self._stop:
            newcomers = self._take(self.max_batch_size - len(batch), idle=not batch)
            if self._stop:
                break
            t0 = time.monotonic()
            self._busy = True
            try:
                if newcomers:
                    self._admit(batch, live, newcomers)
                gone = [k for k, job in live.items() if job.cancelled]
                if gone:  # the client left or timed out: free its row
                    batch.drop(gone)
                    for k in gone:
                        live.pop(k)
                if batch:
                    self._step(batch, live, outbox)
            except Exception as e:  # the model failed mid-step: nothing in this batch can go on
                outbox.flush()
                log.warning("decode step of %d rows failed (%s: %s)", len(batch), type(e).__name__, e)
                for job in live.values():
                    job.finish(error=e)
                batch, live = DecodeBatch(self.engine), {}
            finally:
                self._busy = bool(batch)
                self.stats.busy_s += time.monotonic() - t0
        outbox.flush()
        for job in live.values():
            job.finish(error=RuntimeError("the server is shutting down"))

    def _admit(self, batch, live: dict, jobs: list[Job]) -> None:
        """Prompts for the newcomers, then one prefill that adds them to the batch. A request
        whose prompt cannot be built (bad image, too long) fails alone."""
        eng = self.engine
        ready = []
        for job in jobs:
            try:
                gen = eng._gen(job.request.gen)
                with eng._lock:  # image encoding uses the model and its cache
                    prompt = eng.build_prompt(job.request.messages, gen, job.request.system, job.request.ground)
                ready.append((job, prompt, gen))
            except Exception as e:
                job.finish(error=e)
        if not ready:
            return
        try:
            self._prefill(batch, live, ready)
        except Exception as e:
            if len(ready) == 1:
                ready[0][0].finish(error=e)
                return
            log.warning("prefill of %d requests failed (%s: %s); retrying one by one", len(ready),
                        type(e).__name__, e)
            for item in ready:  # one bad request must not fail the others
                try:
                    self._prefill(batch, live, [item])
                except Exception as e1:
                    item[0].finish(error=e1)

    def _prefill(self, batch, live: dict, ready: list) -> None:
        keys = [next(self._keys) for _ in ready]
        batch.add([p for _, p, _ in ready], [g for _, _, g in ready], keys)
        now = time.monotonic()
        for k, (job, _, _) in zip(keys, ready):
            job.started = now
            live[k] = job
        self.stats.batches += 1
        self.stats.requests += len(ready)

    def _step(self, batch, live: dict, outbox: "_Outbox") -> None:
        rows = list(batch.rows)
        self.stats.steps += 1
        self.stats.rows += len(rows)
        self.stats.max_batch = max(self.stats.max_batch, len(rows))
        first = False
        for key, delta in batch.step():
            job = live[key]
            first = first or not job.sent_text
            outbox.add(job, delta)
        done = [st for st in rows if st.finish is not None]
        for st in done:  # after the job's last deltas, in the same hand-over
            outbox.settle(live.pop(st.key), st.result())
        if first or done or outbox.due():
            outbox.flush()  # a first token or a result goes out at once


class _Outbox:
    """Streamed deltas and results, handed to the event loop in bundles (one wake-up per `interval`, not one
    per token per row): every wake-up makes the loop thread take the GIL, and the model thread
    then waits for it once per small torch op - with 16 streams that convoy used to cost more
    than the model itself."""

    def __init__(self, interval: float):
        self.interval = interval
        self.items: list[tuple[Job, str | None, Any]] = []   # (job, delta, None) or (job, None, result)
        self.last = time.monotonic()

    def add(self, job: Job, delta: str) -> None:
        if job.deltas is None or not delta:
            return
        job.sent_text = True
        self.items.append((job, delta, None))

    def settle(self, job: Job, result) -> None:
        self.items.append((job, None, result))

    def due(self) -> bool:
        return bool(self.items) and time.monotonic() - self.last >= self.interval

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.items:
            return
        items, self.items = self.items, []
        by_loop: dict[Any, list[tuple[Job, str | None, Any]]] = {}
        for item in items:
            by_loop.setdefault(item[0].loop, []).append(item)
        for loop, group in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, group)
            except RuntimeError:  # loop closed: the server is shutting down
                pass


def _deliver_all(group: list[tuple[Job, str | None, Any]]) -> None:
    for job, delta, result in group:
        if delta is not None:
            job.deliver(delta)
        else:
            job.settle(result)
