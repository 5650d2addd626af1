"""The embedded event log: every topic in one SQLite database (WAL) in the data dir.

Appends from concurrent callers are committed together: while one transaction is being
written and fsynced, the next callers queue up and go into the following one (group commit).
An append returns only after its transaction is committed, so a 200 means "on disk".
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, TypeVar

from eventlog.base import AppendResult, LogClosed, LogUnavailable, Record
from eventlog.embedded_consumer import EmbeddedSubscription
from schemas import Envelope

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = tuple[str, str, str, int, str | None, bytes]  # key, id, type, time_ms, dedup_key, envelope
PAGE = 1000
MAX_ROWS_PER_STATEMENT = 1024  # a cached 1024-row INSERT is ~650 KB in SQLite's cache
PAGE_SIZE = 8192

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT NOT NULL,
    key        TEXT NOT NULL,
    id         TEXT NOT NULL,
    type       TEXT NOT NULL,
    time_ms    INTEGER NOT NULL,
    dedup_key  TEXT,
    envelope   BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_topic_seq ON events (topic, seq);
CREATE INDEX IF NOT EXISTS events_time ON events (time_ms);
CREATE UNIQUE INDEX IF NOT EXISTS events_dedup ON events (topic, dedup_key);
CREATE TABLE IF NOT EXISTS repeats (
    topic      TEXT NOT NULL,
    dedup_key  TEXT NOT NULL,
    count      INTEGER NOT NULL,
    last_ms    INTEGER NOT NULL,
    PRIMARY KEY (topic, dedup_key)
);
CREATE TABLE IF NOT EXISTS group_offsets (
    grp        TEXT NOT NULL,
    topic      TEXT NOT NULL,
    next_seq   INTEGER NOT NULL,
    PRIMARY KEY (grp, topic)
);
"""


@dataclass
class _Pending:
    topic: str
    rows: list[Row]
    future: asyncio.Future[AppendResult] = field(repr=False)


def _to_row(event: Envelope, dedup_key: str | None) -> Row:
    time_ms = int(event.time.timestamp() * 1000)
    return (
        event.subject,
        event.id,
        event.type,
        time_ms,
        dedup_key,
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


_INSERT = "INSERT INTO events (topic, key, id, type, time_ms, dedup_key, envelope) VALUES "
_EXISTING = "SELECT dedup_key FROM events WHERE topic = ? AND dedup_key IN "


@functools.lru_cache(maxsize=256)
def _insert_sql(rows: int) -> str:
    return _INSERT + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows)


@functools.cache
def _existing_sql(keys: int) -> str:
    return _EXISTING + "(" + ", ".join("?" * keys) + ")"


def _to_record(row: tuple[int, str, str, bytes]) -> Record:
    seq, topic, key, blob = row
    return Record(topic, 0, seq, key, raw=blob)


class EmbeddedLog:
    """SQLite-backed log; one writer thread, one reader thread, never the event loop."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["full", "normal"] = "full",
        busy_timeout: float = 2.0,
        create: bool = True,
    ) -> None:
        self.path = path
        self._synchronous = synchronous
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._create = create
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sevpipe-log-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sevpipe-log-reader")
        self._wconn: sqlite3.Connection | None = None
        self._max_rows = self._max_keys = 1
        self._rconn: sqlite3.Connection | None = None
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._closed = False
        self.last_offset = 0
        """The highest offset in the log as this process knows it (for consumer lag)."""

    async def __aenter__(self) -> EmbeddedLog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lifecycle -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=self._busy_timeout_ms / 1000,
        )
        conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        return conn

    def _open_writer(self) -> None:
        if self._create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise LogUnavailable(f"no event log at {self.path}")
        conn = self._connect()
        # Before the first write only (a no-op on an existing log): an alert event is ~2 KB,
        # and 8 KiB pages halve SQLite's work per event against the default 4 KiB.
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
        conn.executescript(_SCHEMA)
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # 999 before SQLite 3.32
        self._max_rows = min(MAX_ROWS_PER_STATEMENT, limit // 7)
        self._max_keys = min(MAX_ROWS_PER_STATEMENT, limit - 1)
        self.last_offset = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        self._wconn = conn

    def _open_reader(self) -> None:
        self._rconn = self._connect()
        self._rconn.execute("PRAGMA query_only=ON")

    async def start(self) -> None:
        try:
            await self._in_writer(self._open_writer)
            await self._in_reader(self._open_reader)
        except sqlite3.Error as exc:
            raise LogUnavailable(f"cannot open event log {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        for conn, pool in ((self._wconn, self._writer), (self._rconn, self._reader)):
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(pool, conn.close)
            pool.shutdown(wait=True)
        self._wakeup.set()

    async def _in_writer(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn)

    async def _in_reader(self, fn: Callable[[], T]) -> T:
        if self._closed:  # not the executor's RuntimeError: readers and consumers get ours
            raise LogClosed("event log is closed")
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn)

    # -- append (group commit) -------------------------------------------------------------

    async def append(
        self,
        topic: str,
        events: Sequence[Envelope],
        *,
        dedup_keys: Sequence[str] | None = None,
    ) -> AppendResult:
        if self._closed:
            raise LogClosed("event log is closed")
        if dedup_keys is not None and len(dedup_keys) != len(events):
            raise ValueError("dedup_keys must have one key per event")
        keys: Sequence[str | None] = dedup_keys if dedup_keys is not None else [None] * len(events)
        rows = [_to_row(e, k) for e, k in zip(events, keys, strict=True)]
        del events  # serialised: not kept alive (and aging in the GC) while the commit runs
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(topic, rows, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="sevpipe-log-flush")
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._in_writer(lambda b=batch: self._write(b))  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - every waiting caller must get an answer
                log.warning("event log append failed (%d callers): %s", len(batch), exc)
                error = LogUnavailable(f"event log append failed: {exc}")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(error)
                continue
            for p, result in zip(batch, results, strict=True):
                self.last_offset = max([self.last_offset, *(o or 0 for o in result.offsets)])
                if not p.future.done():
                    p.future.set_result(result)
            self._wakeup.set()
            self._wakeup = asyncio.Event()

    def _write(self, batch: list[_Pending]) -> list[AppendResult]:
        conn = self._wconn
        assert conn is not None, "log not started"  # noqa: S101
        # Consecutive callers of one topic go in together, in the callers' order.
        runs = [
            (topic, [row for p in run for row in p.rows])
            for topic, run in itertools.groupby(batch, key=lambda p: p.topic)
        ]
        offsets = self._write_alone(conn, runs)
        if offsets is None:
            offsets = self._write_together(conn, runs)
        results: list[AppendResult] = []
        start = 0
        for pending in batch:
            end = start + len(pending.rows)
            results.append(AppendResult(tuple(offsets[start:end])))
            start = end
        return results

    def _write_alone(
        self, conn: sqlite3.Connection, runs: list[tuple[str, list[Row]]]
    ) -> list[int | None] | None:
        """The usual batch, new events of one topic: one INSERT, its own transaction.

        Every statement releases and retakes the GIL, and while the event loop's thread is
        busy a retake waits for it; BEGIN and COMMIT would be two more waits per batch.
        None when the batch needs an explicit transaction: several topics or statements,
        or a repeat (the INSERT failed on the unique index and changed nothing).
        """
        if len(runs) != 1 or not 0 < len(runs[0][1]) <= self._max_rows:
            return None
        topic, rows = runs[0]
        try:
            return list(self._insert_rows(conn, topic, rows))
        except sqlite3.IntegrityError:
            return None

    def _write_together(
        self, conn: sqlite3.Connection, runs: list[tuple[str, list[Row]]]
    ) -> list[int | None]:
        offsets: list[int | None] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for topic, rows in runs:
                offsets += self._insert(conn, topic, rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return offsets

    def _insert(self, conn: sqlite3.Connection, topic: str, rows: list[Row]) -> list[int | None]:
        """Insert the rows, but count those whose dedup key is in the topic as repeats.

        A few multi-row statements per batch, whatever its size: every statement releases
        and retakes the GIL, and each retake can wait for the event loop's thread. A repeat
        fails its statement on the unique index, SQLite undoes just that statement (the
        transaction goes on), and then that statement's rows are sorted out.
        """
        offsets: list[int | None] = []
        for start, size in _pieces(len(rows), self._max_rows):
            piece = rows[start : start + size]
            try:
                offsets += self._insert_fresh(conn, topic, piece)
            except sqlite3.IntegrityError:
                offsets += self._insert_sorting_repeats(conn, topic, piece)
        return offsets

    def _insert_sorting_repeats(
        self, conn: sqlite3.Connection, topic: str, rows: list[Row]
    ) -> list[int | None]:
        seen = self._existing(conn, topic, [r[4] for r in rows if r[4] is not None])
        fresh: list[Row] = []
        repeats: list[tuple[str, str | None, int]] = []
        is_fresh: list[bool] = []
        for row in rows:
            dedup_key = row[4]
            if dedup_key is not None:
                if dedup_key in seen:
                    repeats.append((topic, dedup_key, row[3]))
                    is_fresh.append(False)
                    continue
                seen.add(dedup_key)
            fresh.append(row)
            is_fresh.append(True)
        seqs = iter(self._insert_fresh(conn, topic, fresh))
        if repeats:
            conn.executemany(
                "INSERT INTO repeats (topic, dedup_key, count, last_ms) VALUES (?, ?, 1, ?)"
                " ON CONFLICT (topic, dedup_key) DO UPDATE"
                " SET count = count + 1, last_ms = excluded.last_ms",
                repeats,
            )
        return [next(seqs) if new else None for new in is_fresh]

    def _existing(self, conn: sqlite3.Connection, topic: str, keys: list[str]) -> set[str]:
        found: set[str] = set()
        for start, size in _pieces(len(keys), self._max_keys):
            sql = _existing_sql(size)
            found.update(k for (k,) in conn.execute(sql, (topic, *keys[start : start + size])))
        return found

    def _insert_fresh(self, conn: sqlite3.Connection, topic: str, rows: list[Row]) -> list[int]:
        seqs: list[int] = []
        for start, size in _pieces(len(rows), self._max_rows):
            seqs.extend(self._insert_rows(conn, topic, rows[start : start + size]))
        return seqs

    @staticmethod
    def _insert_rows(conn: sqlite3.Connection, topic: str, rows: list[Row]) -> range:
        """One INSERT of ``rows``; their seqs are consecutive (one statement, one writer)."""
        cur = conn.execute(_insert_sql(len(rows)), [v for row in rows for v in (topic, *row)])
        last = cur.lastrowid
        if cur.rowcount != len(rows) or last is None:  # not an IntegrityError: no retry
            raise sqlite3.DatabaseError(f"inserted {cur.rowcount} of {len(rows)} rows")
        return range(last - len(rows) + 1, last + 1)

    async def ping(self) -> None:
        if self._closed or self._wconn is None:
            raise LogUnavailable("event log is closed")

        def probe() -> None:
            assert self._wconn is not None  # noqa: S101
            self._wconn.execute("BEGIN IMMEDIATE")
            self._wconn.execute("ROLLBACK")

        try:
            await self._in_writer(probe)
        except sqlite3.Error as exc:
            raise LogUnavailable(f"event log not writable: {exc}") from exc

    # -- reading ---------------------------------------------------------------------------

    def _select(
        self,
        topics: Sequence[str] | None,
        after_seq: int,
        limit: int,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> list[Record]:
        assert self._rconn is not None, "log not started"  # noqa: S101
        sql = "SELECT seq, topic, key, envelope FROM events WHERE seq > ?"
        args: list[object] = [after_seq]
        if topics is not None:
            sql += f" AND topic IN ({','.join('?' * len(topics))})"
            args.extend(topics)
        if since_ms is not None:
            sql += " AND time_ms >= ?"
            args.append(since_ms)
        if until_ms is not None:
            sql += " AND time_ms < ?"
            args.append(until_ms)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        return [_to_record(r) for r in self._rconn.execute(sql, args)]

    async def read(
        self,
        topics: Sequence[str] | None = None,
        *,
        from_offset: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> AsyncIterator[Record]:
        after = (from_offset - 1) if from_offset is not None else 0
        since_ms = int(since.timestamp() * 1000) if since else None
        until_ms = int(until.timestamp() * 1000) if until else None
        while True:
            try:
                page = await self._in_reader(
                    lambda a=after: self._select(topics, a, PAGE, since_ms, until_ms)  # type: ignore[misc]
                )
            except sqlite3.Error as exc:
                raise LogUnavailable(f"event log read failed: {exc}") from exc
            for record in page:
                yield record
            if len(page) < PAGE:
                return
            after = page[-1].offset

    # -- consumer groups -------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], group: str) -> EmbeddedSubscription:
        return EmbeddedSubscription(self, tuple(topics), group)

    def _committed(self, group: str, topics: Sequence[str]) -> int:
        assert self._rconn is not None  # noqa: S101
        marks = ",".join("?" * len(topics))
        sql = f"SELECT MIN(next_seq), COUNT(*) FROM group_offsets WHERE grp = ? AND topic IN ({marks})"  # noqa: S608, E501 - only placeholders are interpolated
        row = self._rconn.execute(sql, (group, *topics)).fetchone()
        return int(row[0]) if row[1] == len(topics) else 0

    def _commit(self, group: str, topics: Sequence[str], next_seq: int) -> None:
        conn = self._wconn
        assert conn is not None  # noqa: S101
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO group_offsets (grp, topic, next_seq) VALUES (?, ?, ?)"
                " ON CONFLICT (grp, topic) DO UPDATE SET next_seq = excluded.next_seq",
                [(group, t, next_seq) for t in topics],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
