"""The embedded store: SQLite in the data dir, one writer thread, never the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Literal, TypeVar

import orjson

from schemas import Envelope
from schemas.incidents import Incident, IncidentEventData
from store.base import (
    AlertMark,
    GroupState,
    IncidentQuery,
    IncidentWrite,
    OutboxEvent,
    StoreConflict,
    StoredEvent,
    StoreUnavailable,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    key          TEXT PRIMARY KEY,
    version      INTEGER NOT NULL,
    incident_id  TEXT,
    marks        BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS incidents (
    id           TEXT PRIMARY KEY,
    key          TEXT NOT NULL,
    status       TEXT NOT NULL,
    severity     TEXT NOT NULL,
    opened_ms    INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    doc          BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_updated ON incidents (updated_ms);
CREATE TABLE IF NOT EXISTS incident_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id  TEXT NOT NULL,
    topic        TEXT NOT NULL,
    event_id     TEXT NOT NULL UNIQUE,
    envelope     BLOB NOT NULL,
    relayed      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS incident_events_by_incident ON incident_events (incident_id, seq);
CREATE INDEX IF NOT EXISTS incident_events_unrelayed ON incident_events (seq) WHERE relayed = 0;
"""


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _marks_blob(marks: dict[str, AlertMark]) -> bytes:
    return orjson.dumps({fp: [m.starts_at, m.status] for fp, m in marks.items()})


def _marks(blob: bytes) -> dict[str, AlertMark]:
    return {fp: AlertMark(s, st) for fp, (s, st) in orjson.loads(blob).items()}


class EmbeddedStore:
    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["full", "normal"] = "full",
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = path
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sevpipe-store")
        self._conn: sqlite3.Connection | None = None

    async def __aenter__(self) -> EmbeddedStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_timeout
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
        conn.executescript(_SCHEMA)
        self._conn = conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        def call() -> T:
            conn = self._conn
            if conn is None:
                raise StoreUnavailable("store is closed")
            if not write:
                return fn(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return result

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store {self.path}: {exc}") from exc
        except RuntimeError as exc:  # the pool was shut down: the store is closed
            raise StoreUnavailable(f"store {self.path} is closed") from exc

    async def start(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._open)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open store {self.path}: {exc}") from exc

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, conn.close)
        self._pool.shutdown(wait=True)

    # -- reads -----------------------------------------------------------------------------

    async def load_groups(self, keys: Sequence[str]) -> dict[str, GroupState]:
        def load(conn: sqlite3.Connection) -> dict[str, GroupState]:
            out = {k: GroupState(k) for k in keys}
            for key in out:
                row = conn.execute(
                    "SELECT g.version, g.marks, i.doc FROM groups g"
                    " LEFT JOIN incidents i ON i.id = g.incident_id WHERE g.key = ?",
                    (key,),
                ).fetchone()
                if row is not None:
                    incident = Incident.model_validate_json(row[2]) if row[2] else None
                    out[key] = GroupState(key, row[0], incident, _marks(row[1]))
            return out

        return await self._run(load)

    async def get_incident(self, incident_id: str) -> Incident | None:
        def get(conn: sqlite3.Connection) -> Incident | None:
            row = conn.execute("SELECT doc FROM incidents WHERE id = ?", (incident_id,)).fetchone()
            return Incident.model_validate_json(row[0]) if row else None

        return await self._run(get)

    async def list_incidents(self, query: IncidentQuery) -> list[Incident]:
        sql = "SELECT doc FROM incidents WHERE 1 = 1"
        args: list[object] = []
        if query.status is not None:
            sql += " AND status = ?"
            args.append(query.status)
        if query.severity is not None:
            sql += " AND severity = ?"
            args.append(query.severity)
        if query.since is not None:
            sql += " AND updated_ms >= ?"
            args.append(int(query.since.timestamp() * 1000))
        sql += " ORDER BY updated_ms DESC, id DESC LIMIT ?"
        args.append(query.limit)

        def select(conn: sqlite3.Connection) -> list[Incident]:
            return [Incident.model_validate_json(r[0]) for r in conn.execute(sql, args)]

        return await self._run(select)

    async def timeline(self, incident_id: str) -> list[Envelope]:
        def select(conn: sqlite3.Connection) -> list[Envelope]:
            rows = conn.execute(
                "SELECT envelope FROM incident_events WHERE incident_id = ? ORDER BY seq",
                (incident_id,),
            )
            return [Envelope.model_validate_json(r[0]) for r in rows]

        return await self._run(select)

    async def unrelayed(self, limit: int = 500) -> list[StoredEvent]:
        def select(conn: sqlite3.Connection) -> list[StoredEvent]:
            rows = conn.execute(
                "SELECT seq, topic, envelope FROM incident_events WHERE relayed = 0"
                " ORDER BY seq LIMIT ?",
                (limit,),
            )
            return [StoredEvent(r[0], r[1], Envelope.model_validate_json(r[2])) for r in rows]

        return await self._run(select)

    # -- writes ----------------------------------------------------------------------------

    async def save(
        self,
        groups: Sequence[GroupState],
        incidents: Sequence[IncidentWrite],
        outbox: Sequence[OutboxEvent],
    ) -> None:
        def write(conn: sqlite3.Connection) -> None:
            for group in groups:
                _write_group(conn, group)
            for w in incidents:
                _write_incident(conn, w)
            conn.executemany(
                "INSERT OR IGNORE INTO incident_events (incident_id, topic, event_id, envelope)"
                " VALUES (?, ?, ?, ?)",
                [
                    (e.incident_id, e.topic, e.envelope.id, e.envelope.model_dump_json())
                    for e in outbox
                ],
            )

        await self._run(write, write=True)

    async def mark_relayed(self, seqs: Sequence[int]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE incident_events SET relayed = 1 WHERE seq = ?", [(s,) for s in seqs]
            )

        await self._run(write, write=True)

    async def reset(self) -> None:
        def write(conn: sqlite3.Connection) -> None:
            for table in ("groups", "incidents", "incident_events"):
                conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names

        await self._run(write, write=True)

    async def restore(self, events: Sequence[tuple[str, Envelope]]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            for topic, envelope in events:
                incident = IncidentEventData.model_validate(envelope.data).incident
                _restore_incident(conn, incident)
                conn.execute(
                    "INSERT OR IGNORE INTO incident_events"
                    " (incident_id, topic, event_id, envelope, relayed) VALUES (?, ?, ?, ?, 1)",
                    (incident.id, topic, envelope.id, envelope.model_dump_json()),
                )

        await self._run(write, write=True)


def _write_group(conn: sqlite3.Connection, group: GroupState) -> None:
    incident_id = group.incident.id if group.incident else None
    if group.version == 0:
        cur = conn.execute(
            "INSERT OR IGNORE INTO groups (key, version, incident_id, marks) VALUES (?, 1, ?, ?)",
            (group.key, incident_id, _marks_blob(group.marks)),
        )
    else:
        cur = conn.execute(
            "UPDATE groups SET version = version + 1, incident_id = ?, marks = ?"
            " WHERE key = ? AND version = ?",
            (incident_id, _marks_blob(group.marks), group.key, group.version),
        )
    if cur.rowcount != 1:
        raise StoreConflict(f"group {group.key!r} changed since it was loaded")


def _write_incident(conn: sqlite3.Connection, w: IncidentWrite) -> None:
    inc = w.incident
    doc = inc.model_dump_json()
    if w.expected_version == 0:
        cur = conn.execute(
            "INSERT OR IGNORE INTO incidents"
            " (id, key, status, severity, opened_ms, updated_ms, version, doc)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                inc.id,
                inc.key,
                inc.status,
                inc.severity,
                _ms(inc.opened_at),
                _ms(inc.updated_at),
                inc.version,
                doc,
            ),
        )
    else:
        cur = conn.execute(
            "UPDATE incidents SET status = ?, severity = ?, updated_ms = ?, version = ?, doc = ?"
            " WHERE id = ? AND version = ?",
            (
                inc.status,
                inc.severity,
                _ms(inc.updated_at),
                inc.version,
                doc,
                inc.id,
                w.expected_version,
            ),
        )
    if cur.rowcount != 1:
        raise StoreConflict(f"incident {inc.id} changed since it was loaded")


def _restore_incident(conn: sqlite3.Connection, inc: Incident) -> None:
    conn.execute(
        "INSERT INTO incidents (id, key, status, severity, opened_ms, updated_ms, version, doc)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET status = excluded.status,"
        " severity = excluded.severity, updated_ms = excluded.updated_ms,"
        " version = excluded.version, doc = excluded.doc"
        " WHERE excluded.version > incidents.version",
        (
            inc.id,
            inc.key,
            inc.status,
            inc.severity,
            _ms(inc.opened_at),
            _ms(inc.updated_at),
            inc.version,
            inc.model_dump_json(),
        ),
    )
    marks = {
        a.fingerprint: AlertMark(a.starts_at.isoformat() if a.starts_at else "-", a.status)
        for a in inc.alerts
    }
    # A late event about an older incident of the key (say, a severity set by hand after
    # the group moved on) must not make that incident the group's current one again.
    conn.execute(
        "INSERT INTO groups (key, version, incident_id, marks) VALUES (?, 1, ?, ?)"
        " ON CONFLICT (key) DO UPDATE SET version = groups.version + 1,"
        " incident_id = excluded.incident_id, marks = excluded.marks"
        " WHERE groups.incident_id = excluded.incident_id OR ? >= COALESCE("
        " (SELECT opened_ms FROM incidents WHERE id = groups.incident_id), 0)",
        (inc.key, inc.id, _marks_blob(marks), _ms(inc.opened_at)),
    )
