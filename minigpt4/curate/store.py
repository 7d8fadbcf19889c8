"""The run's state: one SQLite row per item, committed as each step of that item finishes.

Why SQLite: a commit is atomic and durable against a killed process (WAL mode), so a run that
is SIGKILLed at any point resumes exactly where it stopped - every finished step of every item
is in the database, and an unfinished one simply did not happen. The review web page writes its
decisions into the same file (WAL lets it read while a run writes).

Step columns per item:
  describe_status: pending | done | bad        (bad = the image could not be read; `error` says why)
  fix_status:      pending | done | failed     (failed keeps the description; a later run retries it)
  filter_status:   pending | kept | dropped
  review:          NULL | approved | edited | rejected
                   (reviewer: who decided - "human" on the review page, or an automatic reviewer such as
                   "truth-check"; review_reason: why, as JSON, e.g. the rule and the sentences dropped)
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

DB_NAME = "state.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    source TEXT NOT NULL,
    describe_status TEXT NOT NULL DEFAULT 'pending',
    error TEXT,
    image_file TEXT,
    raw_text TEXT,
    raw_first TEXT,
    raw_tokens INTEGER,
    continued INTEGER,
    described_at REAL,
    fix_status TEXT NOT NULL DEFAULT 'pending',
    fixer TEXT,
    fix_text TEXT,
    fix_error TEXT,
    fix_attempts INTEGER NOT NULL DEFAULT 0,
    fix_prompt_tokens INTEGER NOT NULL DEFAULT 0,
    fix_completion_tokens INTEGER NOT NULL DEFAULT 0,
    fix_cost REAL NOT NULL DEFAULT 0,
    fix_edits TEXT,
    fixed_at REAL,
    filter_status TEXT NOT NULL DEFAULT 'pending',
    filter_rules TEXT,
    final_text TEXT,
    filtered_at REAL,
    review TEXT,
    review_text TEXT,
    reviewed_at REAL,
    updated_at REAL NOT NULL,
    reviewer TEXT,
    review_reason TEXT
);
CREATE INDEX IF NOT EXISTS items_seq ON items(seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

REVIEW_DECISIONS = ("approved", "edited", "rejected")
# Columns added after the first release: a run folder made before them gets them on open.
_ADDED_COLUMNS = {"reviewer": "TEXT", "review_reason": "TEXT"}


@dataclass
class Item:
    """One row of the store, as Python values (JSON columns decoded)."""
    id: str
    seq: int
    source: dict[str, Any]
    describe_status: str = "pending"
    error: str | None = None
    image_file: str | None = None
    raw_text: str | None = None
    raw_first: str | None = None
    raw_tokens: int | None = None
    continued: bool | None = None
    described_at: float | None = None
    fix_status: str = "pending"
    fixer: str | None = None
    fix_text: str | None = None
    fix_error: str | None = None
    fix_attempts: int = 0
    fix_prompt_tokens: int = 0
    fix_completion_tokens: int = 0
    fix_cost: float = 0.0
    fix_edits: list[str] = field(default_factory=list)
    fixed_at: float | None = None
    filter_status: str = "pending"
    filter_rules: list[dict[str, str]] = field(default_factory=list)
    final_text: str | None = None
    filtered_at: float | None = None
    review: str | None = None
    review_text: str | None = None
    reviewed_at: float | None = None
    updated_at: float = 0.0
    reviewer: str | None = None
    review_reason: dict[str, Any] = field(default_factory=dict)

    @property
    def caption(self) -> str | None:
        """The text that goes into filter_cap.json: the reviewer's edit, else the filtered text."""
        return self.review_text if self.review == "edited" else self.final_text

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


_JSON_COLUMNS = {"source": dict, "fix_edits": list, "filter_rules": list, "review_reason": dict}


def _row_to_item(row: sqlite3.Row) -> Item:
    d = dict(row)
    for key, empty in _JSON_COLUMNS.items():
        d[key] = json.loads(d[key]) if d[key] else empty()
    if d["continued"] is not None:
        d["continued"] = bool(d["continued"])
    return Item(**d)


class Store:
    """Thread-safe access to `OUT/state.sqlite`; every write method commits before it returns."""

    def __init__(self, out_dir: str | Path, create: bool = True):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / DB_NAME
        if not create and not self.path.exists():
            raise FileNotFoundError(f"'{self.out_dir}' holds no curation run ({DB_NAME} is missing); "
                                    f"start one with `minigpt4 curate run --images ... --out {self.out_dir}`")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # One connection shared by threads under a lock: writes are tiny, so a lock is simpler and
        # no slower than a connection per thread. isolation_level=None: we open transactions ourselves.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a killed process (only power loss can undo it).
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.executescript(SCHEMA)
            have = {r[1] for r in self._conn.execute("PRAGMA table_info(items)")}
            for col, kind in _ADDED_COLUMNS.items():
                if col not in have:
                    self._conn.execute(f"ALTER TABLE items ADD COLUMN {col} {kind}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # --- meta ------------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                      (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row["value"]) if row else default

    # --- items -----------------------------------------------------------------------------
    def add_items(self, items: Iterable[tuple[str, dict[str, Any]]]) -> int:
        """Register (id, source) pairs; ids already known keep their state. Returns how many are new."""
        now = time.time()
        with self._tx() as c:
            seq = c.execute("SELECT COALESCE(MAX(seq), -1) FROM items").fetchone()[0] + 1
            added = 0
            for item_id, source in items:
                cur = c.execute("INSERT OR IGNORE INTO items(id, seq, source, updated_at) VALUES(?, ?, ?, ?)",
                                (item_id, seq, json.dumps(source), now))
                if cur.rowcount:
                    seq += 1
                    added += 1
        return added

    def get(self, item_id: str) -> Item:
        with self._lock:
            row = self._conn.execute("SELECT * FROM items WHERE id=?", (item_id,)).fetchone()
        if row is None:
            raise KeyError(f"no item '{item_id}' in {self.path}")
        return _row_to_item(row)

    def items(self, where: str = "1", params: tuple = ()) -> list[Item]:
        """Items matching an SQL condition on the columns above, in source order."""
        with self._lock:
            rows = self._conn.execute(f"SELECT * FROM items WHERE {where} ORDER BY seq", params).fetchall()
        return [_row_to_item(r) for r in rows]

    def ids(self, where: str = "1", params: tuple = ()) -> list[str]:
        with self._lock:
            rows = self._conn.execute(f"SELECT id FROM items WHERE {where} ORDER BY seq", params).fetchall()
        return [r[0] for r in rows]

    def count(self, where: str = "1", params: tuple = ()) -> int:
        with self._lock:
            return self._conn.execute(f"SELECT COUNT(*) FROM items WHERE {where}", params).fetchone()[0]

    def counts(self, column: str) -> dict[str, int]:
        """How many items have each value of a status column (NULL reported as 'none')."""
        if column not in ("describe_status", "fix_status", "filter_status", "review"):
            raise ValueError(f"not a status column: {column}")
        with self._lock:
            rows = self._conn.execute(f"SELECT COALESCE({column}, 'none'), COUNT(*) FROM items GROUP BY 1").fetchall()
        return {r[0]: r[1] for r in rows}

    def _update(self, item_id: str, **values: Any) -> None:
        values["updated_at"] = time.time()
        for key in _JSON_COLUMNS:
            if key in values:
                values[key] = json.dumps(values[key])
        cols = ", ".join(f"{k}=?" for k in values)
        with self._tx() as c:
            cur = c.execute(f"UPDATE items SET {cols} WHERE id=?", (*values.values(), item_id))
            if cur.rowcount != 1:
                raise KeyError(f"no item '{item_id}' in {self.path}")

    # --- step results (each one commit) ----------------------------------------------------
    def reset_bad(self) -> int:
        """Put the items whose image could not be read back in the queue (after the files were fixed)."""
        with self._tx() as c:
            return c.execute("UPDATE items SET describe_status='pending', error=NULL, updated_at=? "
                             "WHERE describe_status='bad'", (time.time(),)).rowcount

    def mark_bad(self, item_id: str, error: str) -> None:
        self._update(item_id, describe_status="bad", error=error)

    def set_described(self, item_id: str, raw_text: str, raw_first: str, raw_tokens: int,
                      continued: bool, image_file: str) -> None:
        self._update(item_id, describe_status="done", error=None, raw_text=raw_text, raw_first=raw_first,
                     raw_tokens=raw_tokens, continued=int(continued), image_file=image_file,
                     described_at=time.time())

    def set_fixed(self, item_id: str, fixer: str, fix_text: str | None, error: str | None, attempts: int,
                  prompt_tokens: int, completion_tokens: int, cost: float, edits: list[str],
                  filter_status: str | None = None, filter_rules: list[dict[str, str]] | None = None,
                  final_text: str | None = None) -> None:
        """Store a fix outcome - and, for a successful fix, its filter result in the same commit, so
        a kill can never leave an item fixed but unfiltered. Token counts and cost add up over runs."""
        with self._lock:  # read-modify-write of the running totals: one thread at a time
            self._set_fixed(item_id, fixer, fix_text, error, attempts, prompt_tokens, completion_tokens, cost,
                            edits, filter_status, filter_rules, final_text)

    def _set_fixed(self, item_id, fixer, fix_text, error, attempts, prompt_tokens, completion_tokens, cost, edits,
                   filter_status, filter_rules, final_text) -> None:
        now = time.time()
        item = self.get(item_id)
        values: dict[str, Any] = dict(
            fixer=fixer, fix_attempts=item.fix_attempts + attempts,
            fix_prompt_tokens=item.fix_prompt_tokens + prompt_tokens,
            fix_completion_tokens=item.fix_completion_tokens + completion_tokens,
            fix_cost=item.fix_cost + cost)
        if error is not None:
            values.update(fix_status="failed", fix_error=error)
        else:
            values.update(fix_status="done", fix_text=fix_text, fix_error=None, fix_edits=edits, fixed_at=now,
                          filter_status=filter_status, filter_rules=filter_rules or [], final_text=final_text,
                          filtered_at=now)
        self._update(item_id, **values)

    def set_filtered(self, item_id: str, status: str, rules: list[dict[str, str]], final_text: str | None) -> None:
        self._update(item_id, filter_status=status, filter_rules=rules, final_text=final_text,
                     filtered_at=time.time())

    def set_review(self, item_id: str, decision: str | None, text: str | None = None, *, reviewer: str = "human",
                   reason: dict[str, Any] | None = None, if_pending: bool = False) -> Item:
        """Record a review decision (None undoes one). `reviewer` and `reason` go to provenance.jsonl.
        With `if_pending`, an item that already has a decision is left as it is - checked in the same
        transaction as the write, so an automatic reviewer never overwrites a person who decided
        on the review page a moment earlier. Returns the item as stored afterwards."""
        if decision is not None and decision not in REVIEW_DECISIONS:
            raise ValueError(f"unknown review decision '{decision}'; use one of {REVIEW_DECISIONS} (or none to undo)")
        if decision == "edited" and not (text or "").strip():
            raise ValueError("an edit needs the edited text; to drop the item, reject it")
        item = self.get(item_id)
        if item.filter_status != "kept":
            raise ValueError(f"item '{item_id}' is not up for review (filter status: {item.filter_status})")
        now = time.time()
        values = (decision, text if decision == "edited" else None, now if decision else None,
                  reviewer if decision else None, json.dumps(reason) if decision and reason else None, now)
        with self._tx() as c:
            c.execute("UPDATE items SET review=?, review_text=?, reviewed_at=?, reviewer=?, review_reason=?, "
                      "updated_at=? WHERE id=?" + (" AND review IS NULL" if if_pending else ""), (*values, item_id))
        return self.get(item_id)
