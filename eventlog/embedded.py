"""The embedded event log: every topic in one SQLite database (WAL) in the data dir.

Appends from concurrent callers are committed together: while one transaction is being
written and fsynced, the next callers queue up and go into the following one (group commit).
An append returns only after its transaction is committed, so a 200 means "on disk".

Here: the log's lifecycle, group commit, replay and consumer offsets. The tables are in
``embedded_schema``, the writing of one group commit in ``embedded_append``, the consumer in
``embedded_consumer``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Literal, TypeVar

from eventlog.base import (
    AppendResult,
    GroupLag,
    LogClosed,
    LogUnavailable,
    Record,
    check_dedup,
)
from eventlog.embedded_append import BatchWriter, Pending, to_row
from eventlog.embedded_consumer import EmbeddedSubscription
from eventlog.embedded_schema import open_reader, open_writer
from schemas import Envelope

log = logging.getLogger(__name__)

T = TypeVar("T")
PAGE = 1000


def _last_of_topics(conn: sqlite3.Connection) -> dict[str, int]:
    """The newest offset of each topic, a few index seeks per topic (a GROUP BY would read
    the whole index: seconds at start on a big log)."""
    out: dict[str, int] = {}
    topic = conn.execute("SELECT MIN(topic) FROM events").fetchone()[0]
    while topic is not None:
        out[topic] = conn.execute(
            "SELECT MAX(seq) FROM events WHERE topic = ?", (topic,)
        ).fetchone()[0]
        topic = conn.execute("SELECT MIN(topic) FROM events WHERE topic > ?", (topic,)).fetchone()[
            0
        ]
    return out


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
        self._batches: BatchWriter | None = None
        self._rconn: sqlite3.Connection | None = None
        self._pending: list[Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._closed = False
        self.last_offset = 0
        self.last_of_topic: dict[str, int] = {}
        """The newest offset of each topic, so a consumer's lag counts its own topics only."""
        """The highest offset in the log as this process knows it (for consumer lag)."""

    async def __aenter__(self) -> EmbeddedLog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lifecycle -------------------------------------------------------------------------

    def _open_writer(self) -> None:
        conn = open_writer(
            self.path,
            create=self._create,
            synchronous=self._synchronous,
            busy_timeout_ms=self._busy_timeout_ms,
        )
        self._batches = BatchWriter(conn)
        self.last_offset = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        self.last_of_topic = _last_of_topics(conn)
        self._wconn = conn

    def _open_reader(self) -> None:
        self._rconn = open_reader(self.path, self._busy_timeout_ms)

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
        dedup_latest: Sequence[tuple[str, str]] | None = None,
    ) -> AppendResult:
        if self._closed:
            raise LogClosed("event log is closed")
        check_dedup(len(events), dedup_keys, dedup_latest)
        none = [None] * len(events)
        keys: Sequence[str | None] = dedup_keys if dedup_keys is not None else none
        latest: Sequence[tuple[str, str] | None] = (
            dedup_latest if dedup_latest is not None else none
        )
        rows = [to_row(*each) for each in zip(events, keys, latest, strict=True)]
        del events  # serialised: not kept alive (and aging in the GC) while the commit runs
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._pending.append(Pending(topic, rows, future))
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
                newest = max((o or 0 for o in result.offsets), default=0)
                self.last_offset = max(self.last_offset, newest)
                self.last_of_topic[p.topic] = max(self.last_of_topic.get(p.topic, 0), newest)
                if not p.future.done():
                    p.future.set_result(result)
            self._wakeup.set()
            self._wakeup = asyncio.Event()

    def _write(self, batch: list[Pending]) -> list[AppendResult]:
        assert self._batches is not None, "log not started"  # noqa: S101
        return self._batches.write(batch)

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

    def _tail_start(self, topic: str, last: int) -> int:
        """The seq after which the last ``last`` records of ``topic`` lie."""
        assert self._rconn is not None, "log not started"  # noqa: S101
        if last < 1:
            return 1 << 62  # past everything
        row = self._rconn.execute(
            "SELECT seq FROM events WHERE topic = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (topic, last - 1),
        ).fetchone()
        return 0 if row is None else int(row[0]) - 1

    async def read(
        self,
        topics: Sequence[str] | None = None,
        *,
        from_offset: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        last: int | None = None,
    ) -> AsyncIterator[Record]:
        after = (from_offset - 1) if from_offset is not None else 0
        if last is not None:
            # One partition per topic here: the tail of two topics interleaved is no tail.
            if topics is None or len(topics) != 1:
                raise ValueError("read(last=...) takes exactly one topic on the embedded log")
            topic = topics[0]
            after = max(after, await self._in_reader(lambda: self._tail_start(topic, last)))
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

    async def group_lag(self, group: str, topics: Sequence[str]) -> GroupLag:
        try:
            return await self._in_reader(lambda: self._group_lag(group, topics))
        except sqlite3.Error as exc:
            raise LogUnavailable(f"event log read failed: {exc}") from exc

    def _group_lag(self, group: str, topics: Sequence[str]) -> GroupLag:
        assert self._rconn is not None  # noqa: S101
        behind = committed = 0
        for topic in topics:
            row = self._rconn.execute(
                "SELECT next_seq FROM group_offsets WHERE grp = ? AND topic = ?", (group, topic)
            ).fetchone()
            next_seq = int(row[0]) if row else 0
            committed += next_seq
            (count,) = self._rconn.execute(
                "SELECT COUNT(*) FROM events WHERE topic = ? AND seq >= ?", (topic, next_seq)
            ).fetchone()
            behind += int(count)
        return GroupLag(behind, committed)

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
