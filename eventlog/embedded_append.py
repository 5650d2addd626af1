"""Writing one group commit of the embedded log: every waiting append in one transaction,
repeats (``EventLog.append``: a dedup key seen before, or the latest state of a latest key)
counted instead of appended.

Runs on the log's writer thread only, never on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field

from eventlog.base import AppendResult
from schemas import Envelope

# key, id, type, time_ms, dedup_key, latest_key, state, envelope
Row = tuple[str, str, str, int, str | None, str | None, str | None, bytes]
MAX_ROWS_PER_STATEMENT = 1024  # a cached 1024-row INSERT is most of a MB in SQLite's cache


@dataclass
class Pending:
    """One caller's append, waiting for the next group commit."""

    topic: str
    rows: list[Row]
    future: asyncio.Future[AppendResult] = field(repr=False)


def to_row(event: Envelope, dedup_key: str | None, latest: tuple[str, str] | None) -> Row:
    time_ms = int(event.time.timestamp() * 1000)
    latest_key, state = latest if latest is not None else (None, None)
    return (
        event.subject,
        event.id,
        event.type,
        time_ms,
        dedup_key,
        latest_key,
        state,
        event.json_bytes(),
    )


def _pieces(n: int, largest: int) -> Iterator[tuple[int, int]]:
    """(start, size) pieces of ``n`` items, sizes powers of two up to ``largest``.

    Few pieces per batch, and few distinct statements for SQLite's statement cache.
    """
    start = 0
    size = 1 << (max(largest, 1).bit_length() - 1)
    while start < n:
        while size > n - start:
            size >>= 1
        yield start, size
        start += size


_INSERT = (
    "INSERT INTO events"
    " (topic, key, id, type, time_ms, dedup_key, latest_key, state, envelope) VALUES "
)
_COLUMNS = 9
_EXISTING = "SELECT dedup_key FROM events WHERE topic = ? AND dedup_key IN "
# The latest event of each key: MAX(seq) per key comes from the partial index alone.
_LATEST = (
    "SELECT latest_key, state FROM events WHERE seq IN (SELECT MAX(seq) FROM events"
    " WHERE topic = ? AND latest_key IN ({}) GROUP BY latest_key)"
)


@functools.lru_cache(maxsize=256)
def _insert_sql(rows: int) -> str:
    return _INSERT + ", ".join(["(" + ", ".join("?" * _COLUMNS) + ")"] * rows)


@functools.cache
def _existing_sql(keys: int) -> str:
    return _EXISTING + "(" + ", ".join("?" * keys) + ")"


@functools.cache
def _latest_sql(keys: int) -> str:
    return _LATEST.format(", ".join("?" * keys))


class BatchWriter:
    """Writes batches of pending appends through the writer's connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # 999 before SQLite 3.32
        self._max_rows = min(MAX_ROWS_PER_STATEMENT, limit // _COLUMNS)
        self._max_keys = min(MAX_ROWS_PER_STATEMENT, limit - 1)

    def write(self, batch: list[Pending]) -> list[AppendResult]:
        """Per pending append, its result; all committed, or none (the error is raised)."""
        # Consecutive callers of one topic go in together, in the callers' order.
        runs = [
            (topic, [row for p in run for row in p.rows])
            for topic, run in itertools.groupby(batch, key=lambda p: p.topic)
        ]
        offsets = self._write_alone(runs)
        if offsets is None:
            offsets = self._write_together(runs)
        results: list[AppendResult] = []
        start = 0
        for pending in batch:
            end = start + len(pending.rows)
            results.append(AppendResult(tuple(offsets[start:end])))
            start = end
        return results

    def _write_alone(self, runs: list[tuple[str, list[Row]]]) -> list[int | None] | None:
        """The usual batch, new events of one topic: one INSERT, its own transaction.

        Every statement releases and retakes the GIL, and while the event loop's thread is
        busy a retake waits for it; BEGIN and COMMIT would be two more waits per batch.
        None when the batch needs an explicit transaction: several topics or statements,
        or a repeat (the INSERT failed on the unique index or the latest-state trigger, and
        changed nothing).
        """
        if len(runs) != 1 or not 0 < len(runs[0][1]) <= self._max_rows:
            return None
        topic, rows = runs[0]
        try:
            return list(self._insert_rows(topic, rows))
        except sqlite3.IntegrityError:
            return None

    def _write_together(self, runs: list[tuple[str, list[Row]]]) -> list[int | None]:
        offsets: list[int | None] = []
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for topic, rows in runs:
                offsets += self._insert(topic, rows)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return offsets

    def _insert(self, topic: str, rows: list[Row]) -> list[int | None]:
        """Insert the rows, but count the repeats among them.

        A few multi-row statements per batch, whatever its size: every statement releases
        and retakes the GIL, and each retake can wait for the event loop's thread. A repeat
        fails its statement (unique index, or the latest-state trigger), SQLite undoes just
        that statement (the transaction goes on), and then that statement's rows are sorted
        out.
        """
        offsets: list[int | None] = []
        for start, size in _pieces(len(rows), self._max_rows):
            piece = rows[start : start + size]
            try:
                offsets += self._insert_fresh(topic, piece)
            except sqlite3.IntegrityError:
                offsets += self._insert_sorting_repeats(topic, piece)
        return offsets

    def _insert_sorting_repeats(self, topic: str, rows: list[Row]) -> list[int | None]:
        seen = self._existing(topic, [r[4] for r in rows if r[4] is not None])
        latest = self._latest(topic, list({r[5] for r in rows if r[5] is not None}))
        fresh: list[Row] = []
        repeats: list[tuple[str, str, int]] = []
        is_fresh: list[bool] = []
        for row in rows:
            repeat = _repeat_of(row, seen, latest)
            if repeat is not None:
                repeats.append((topic, repeat, row[3]))
            else:
                fresh.append(row)
            is_fresh.append(repeat is None)
        seqs = iter(self._insert_fresh(topic, fresh))
        if repeats:
            self._conn.executemany(
                "INSERT INTO repeats (topic, dedup_key, count, last_ms) VALUES (?, ?, 1, ?)"
                " ON CONFLICT (topic, dedup_key) DO UPDATE"
                " SET count = count + 1, last_ms = excluded.last_ms",
                repeats,
            )
        return [next(seqs) if new else None for new in is_fresh]

    def _latest(self, topic: str, keys: list[str]) -> dict[str, str]:
        """The state of the latest event under each of ``keys`` that has one."""
        found: dict[str, str] = {}
        for start, size in _pieces(len(keys), self._max_keys):
            rows = self._conn.execute(_latest_sql(size), (topic, *keys[start : start + size]))
            found.update(rows)
        return found

    def _existing(self, topic: str, keys: list[str]) -> set[str]:
        found: set[str] = set()
        for start, size in _pieces(len(keys), self._max_keys):
            sql = _existing_sql(size)
            found.update(
                k for (k,) in self._conn.execute(sql, (topic, *keys[start : start + size]))
            )
        return found

    def _insert_fresh(self, topic: str, rows: list[Row]) -> list[int]:
        seqs: list[int] = []
        for start, size in _pieces(len(rows), self._max_rows):
            seqs.extend(self._insert_rows(topic, rows[start : start + size]))
        return seqs

    def _insert_rows(self, topic: str, rows: list[Row]) -> range:
        """One INSERT of ``rows``; their seqs are consecutive (one statement, one writer)."""
        cur = self._conn.execute(_insert_sql(len(rows)), [v for row in rows for v in (topic, *row)])
        last = cur.lastrowid
        if cur.rowcount != len(rows) or last is None:  # not an IntegrityError: no retry
            raise sqlite3.DatabaseError(f"inserted {cur.rowcount} of {len(rows)} rows")
        return range(last - len(rows) + 1, last + 1)


def _repeat_of(row: Row, seen: set[str], latest: dict[str, str]) -> str | None:
    """The key to count ``row`` under if it is a repeat; else None, and ``seen`` or
    ``latest`` now include it, so that the rows after it are decided against it."""
    dedup_key, latest_key, state = row[4], row[5], row[6]
    if dedup_key is not None:
        if dedup_key in seen:
            return dedup_key
        seen.add(dedup_key)
    elif latest_key is not None and state is not None:
        if latest.get(latest_key) == state:
            # Counted as the whole (key, state), as an alert's idempotency key joins them.
            return f"{latest_key}\x1f{state}"
        latest[latest_key] = state
    return None
