"""The curation run: describe -> fix -> filter, every item's progress committed as it happens.

Resuming is the normal case, not a special one: a run registers the source's images (known ones
keep their state), then works only on what is not done yet - items without a description, then
items whose fix is pending or failed. Describing runs in the main thread in batches; with an
HTTP fixer the fixes run in a thread pool at the same time, so the endpoint's latency hides
behind the model's compute.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from minigpt4.curate.describe import Describer
from minigpt4.curate.export import export
from minigpt4.curate.filters import FilterConfig, apply_filters
from minigpt4.curate.fixers import Fixer, FixerConfigError, FixOutcome
from minigpt4.curate.sources import iter_source, read_image_bytes
from minigpt4.curate.store import Store
from minigpt4.data.image import ImageError, load_image
from minigpt4.utils import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    out: str | Path
    images: str | None = None      # folder, .jsonl or .tar shards; None: continue with the items already registered
    limit: int | None = None       # only the first N images of the source
    batch_size: int = 8
    retry_failed: bool = True      # fix again the items whose fix failed in an earlier run
    retry_bad: bool = False        # read again the images that could not be read in an earlier run
    require_review: bool = True    # export only reviewed items (False: every item the rules kept)
    filters: FilterConfig = field(default_factory=FilterConfig)
    progress: bool = True
    jpeg_quality: int = 95


def register_source(store: Store, images: str, limit: int | None) -> int:
    pairs = []
    for n, pair in enumerate(iter_source(images)):
        if limit is not None and n >= limit:
            break
        pairs.append(pair)
    return store.add_items(pairs)


def save_cc_sbu_image(out_dir: Path, image_id: str, data: bytes, pil, quality: int) -> str:
    """`image/{image_id}.jpg` as cc_sbu_align expects: JPEG bytes copied as they are, others re-encoded."""
    rel = f"image/{image_id}.jpg"
    if data[:3] == b"\xff\xd8\xff" and pil.mode == "RGB":
        atomic_write_bytes(out_dir / rel, data)
    else:
        import io
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        atomic_write_bytes(out_dir / rel, buf.getvalue())
    return rel


class FixStage:
    """Fixes descriptions and commits each result (with its filter verdict) the moment it arrives."""

    def __init__(self, store: Store, fixer: Fixer, filters: FilterConfig, batch_size: int, progress: bool):
        self.store, self.fixer, self.filters, self.batch_size = store, fixer, filters, batch_size
        self.pool = ThreadPoolExecutor(fixer.concurrency, thread_name_prefix="fix") if fixer.concurrency > 1 else None
        self.futures: list[Future] = []
        self.waiting: list[tuple[str, str]] = []
        self.fatal: BaseException | None = None
        self._lock = threading.Lock()
        self.bar = tqdm(desc="fix", unit="item", total=0, position=1, disable=not progress, leave=True)

    def submit(self, item_id: str, text: str) -> None:
        self._raise_fatal()
        with self._lock:
            self.bar.total += 1
            self.bar.refresh()
        if self.pool is not None:
            self.futures.append(self.pool.submit(self._fix_one, item_id, text))
        else:
            self.waiting.append((item_id, text))
            if len(self.waiting) >= self.batch_size:
                self.flush()

    def flush(self) -> None:
        batch, self.waiting = self.waiting, []
        if batch:
            try:
                outcomes = self.fixer.fix_batch([t for _, t in batch])
            except FixerConfigError as e:
                self.fatal = e
                self._raise_fatal()
            for (item_id, _), out in zip(batch, outcomes):
                self._commit(item_id, out)

    def _fix_one(self, item_id: str, text: str) -> None:
        if self.fatal is not None:
            return  # the run is stopping: leave the item pending for the next run
        try:
            out = self.fixer.fix(text)
        except FixerConfigError as e:
            self.fatal = e
            return
        except Exception as e:  # a bug or surprise for one item must not kill the others
            out = FixOutcome(error=f"{type(e).__name__}: {e}")
        self._commit(item_id, out)

    def _commit(self, item_id: str, out: FixOutcome) -> None:
        if out.ok:
            res = apply_filters(out.text, self.filters)
            self.store.set_fixed(item_id, self.fixer.name, out.text, None, out.attempts, out.prompt_tokens,
                                 out.completion_tokens, out.cost, out.edits,
                                 "kept" if res.kept else "dropped", res.applied, res.text)
        else:
            log.warning("fix failed for %s: %s", item_id, out.error)
            self.store.set_fixed(item_id, self.fixer.name, None, out.error, out.attempts, out.prompt_tokens,
                                 out.completion_tokens, out.cost, [])
        with self._lock:
            self.bar.update(1)

    def _raise_fatal(self) -> None:
        if self.fatal is not None:
            raise self.fatal

    def close(self) -> None:
        """Finish every submitted fix, then stop (raises a FixerConfigError met on the way)."""
        try:
            if self.fatal is None:
                self.flush()
            for f in self.futures:
                f.result()
        finally:
            self.abort()
        self._raise_fatal()

    def abort(self) -> None:
        """Stop now (Ctrl+C, an error): queued fixes are dropped - their items stay pending for the
        next run - while the requests in flight finish and are stored."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.bar.close()


def run(cfg: RunConfig, make_describer: Callable[[], Describer], fixer: Fixer) -> dict[str, Any]:
    """Run (or resume) a curation into `cfg.out`; returns the report. `make_describer` is called only
    when some image still needs a description, so a resumed run past describing loads no model."""
    store = Store(cfg.out)
    try:
        if cfg.images is not None:
            added = register_source(store, cfg.images, cfg.limit)
            log.info("registered %d new image(s)", added)
        elif store.count() == 0:
            raise ValueError(f"'{cfg.out}' holds no items yet; pass --images to say what to curate")
        store.set_meta("require_review", cfg.require_review)
        # `curate check` judges "too short" by the same measure as the run's filter.
        store.set_meta("filters", {"min_words": cfg.filters.min_words, "min_chars": cfg.filters.min_chars})
        if cfg.retry_bad:
            store.reset_bad()
        stats_before = fixer.stats()
        stage = FixStage(store, fixer, cfg.filters, cfg.batch_size, cfg.progress)
        try:
            # Resume first: descriptions already made but not (successfully) fixed.
            statuses = ("pending", "failed") if cfg.retry_failed else ("pending",)
            for item in store.items("describe_status='done' AND fix_status IN (%s)" % ",".join("?" * len(statuses)),
                                    statuses):
                stage.submit(item.id, item.raw_text or "")
            todo = store.items("describe_status='pending'")
            if todo:
                describer = make_describer()
                _describe_all(store, describer, todo, stage, cfg)
        except BaseException:
            stage.abort()
            raise
        else:
            stage.close()
        finally:
            _add_fixer_stats(store, fixer.stats(), stats_before)
        return export(store, cfg.require_review)
    finally:
        store.close()


def _add_fixer_stats(store: Store, after: dict[str, Any], before: dict[str, Any]) -> None:
    """Request/error counts of the HTTP fixer during this run (a fixer object may serve several
    runs), added to the totals over all runs in the store's meta table."""
    if not after:
        return
    total = store.get_meta("fixer_stats", {})
    for k, v in after.items():
        if k == "errors":
            errors = total.setdefault("errors", {})
            for kind, n in v.items():
                errors[kind] = errors.get(kind, 0) + n - before.get("errors", {}).get(kind, 0)
        elif isinstance(v, (int, float)):
            total[k] = total.get(k, 0) + v - before.get(k, 0)
    store.set_meta("fixer_stats", total)


def _describe_all(store: Store, describer: Describer, todo: list, stage: FixStage, cfg: RunConfig) -> None:
    bar = tqdm(total=len(todo), desc="describe", unit="img", position=0, disable=not cfg.progress)
    try:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start:start + cfg.batch_size]
            loaded = []  # (item, bytes, pil) of the readable images
            for item in batch:
                try:
                    data = read_image_bytes(item.source)
                    loaded.append((item, data, load_image(data)))
                except (ImageError, OSError, KeyError) as e:
                    # A bad image is skipped and listed in the report, never fatal to the run.
                    store.mark_bad(item.id, f"{type(e).__name__}: {e}")
                    bar.update(1)
            if not loaded:
                continue
            descriptions = describer.describe([pil for _, _, pil in loaded])
            for (item, data, pil), d in zip(loaded, descriptions):
                rel = save_cc_sbu_image(Path(cfg.out), item.id, data, pil, cfg.jpeg_quality)
                store.set_described(item.id, d.text, d.first, d.tokens, d.continued, rel)
                stage.submit(item.id, d.text)
                bar.update(1)
    finally:
        bar.close()
