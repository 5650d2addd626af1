"""The embedded store: SQLite in the data dir, one writer thread, never the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal, TypeVar

from schemas import Envelope
from schemas.alertmanager import AlertStatus
from schemas.incidents import Incident, IncidentAlert, IncidentEventData
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
from store.embedded_schema import create_or_upgrade

T = TypeVar("T")
_CHUNK = 500  # values per IN (...) list


def _ms(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)


def _resolving_ms(inc: Incident) -> int | None:
    return _ms(inc.resolving_since) if inc.status == "open" else None


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


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
        self._relay_lock = asyncio.Lock()

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
        create_or_upgrade(conn)
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

    async def load_groups(
        self, keys: Sequence[str], fingerprints: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, GroupState]:
        wanted = fingerprints or {}

        def load(conn: sqlite3.Connection) -> dict[str, GroupState]:
            out = {k: GroupState(k) for k in keys}
            for key in out:
                row = conn.execute(
                    "SELECT g.version, i.doc FROM groups g"
                    " LEFT JOIN incidents i ON i.id = g.incident_id WHERE g.key = ?",
                    (key,),
                ).fetchone()
                if row is None:
                    continue
                incident = Incident.model_validate_json(row[1]) if row[1] else None
                group = out[key] = GroupState(key, row[0], incident)
                fps = list(wanted.get(key, ()))
                group.marks = _load_marks(conn, key, fps)
                if incident is not None:
                    group.alerts = _load_alerts(conn, incident.id, fps)
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
            args.append(_ms(query.since))
        sql += " ORDER BY updated_ms DESC, id DESC LIMIT ?"
        args.append(query.limit)

        def select(conn: sqlite3.Connection) -> list[Incident]:
            return [Incident.model_validate_json(r[0]) for r in conn.execute(sql, args)]

        return await self._run(select)

    async def list_alerts(
        self,
        incident_id: str,
        *,
        status: AlertStatus | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[IncidentAlert]:
        sql = "SELECT doc FROM incident_alerts WHERE incident_id = ? AND fingerprint > ?"
        args: list[object] = [incident_id, after or ""]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        sql += " ORDER BY fingerprint LIMIT ?"
        args.append(limit)

        def select(conn: sqlite3.Connection) -> list[IncidentAlert]:
            return [IncidentAlert.model_validate_json(r[0]) for r in conn.execute(sql, args)]

        return await self._run(select)

    async def due_graces(self, now: datetime, grace: timedelta, limit: int = 500) -> list[str]:
        before = int((now - grace).timestamp() * 1000)

        def select(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT key FROM incidents WHERE resolving_ms IS NOT NULL AND resolving_ms <= ?"
                " AND status = 'open' ORDER BY resolving_ms LIMIT ?",
                (before, limit),
            )
            return [r[0] for r in rows]

        return await self._run(select)

    async def timeline(self, incident_id: str) -> list[Envelope]:
        def select(conn: sqlite3.Connection) -> list[Envelope]:
            rows = conn.execute(
                "SELECT envelope FROM incident_events WHERE incident_id = ? ORDER BY seq",
                (incident_id,),
            )
            return [Envelope.model_validate_json(r[0]) for r in rows]

        return await self._run(select)

    async def caused(self, incident_id: str, cause_id: str) -> bool:
        def select(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM incident_events WHERE incident_id = ?"
                " AND json_extract(envelope, '$.data.cause') = ? LIMIT 1",
                (incident_id, cause_id),
            ).fetchone()
            return row is not None

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
                [(e.incident_id, e.topic, e.envelope.id, e.envelope.json_bytes()) for e in outbox],
            )

        await self._run(write, write=True)

    async def mark_relayed(self, seqs: Sequence[int]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE incident_events SET relayed = 1 WHERE seq = ?", [(s,) for s in seqs]
            )

        await self._run(write, write=True)

    async def relay(
        self, publish: Callable[[Sequence[StoredEvent]], Awaitable[None]], *, limit: int = 500
    ) -> int | None:
        """Publish up to ``limit`` unrelayed events in order and mark them; None if another
        relayer of this process holds the relay (the embedded store has one process)."""
        if self._relay_lock.locked():
            return None
        async with self._relay_lock:
            pending = await self.unrelayed(limit)
            if pending:
                await publish(pending)
                await self.mark_relayed([p.seq for p in pending])
            return len(pending)

    async def reset(self) -> None:
        def write(conn: sqlite3.Connection) -> None:
            for table in (
                "groups",
                "group_marks",
                "incidents",
                "incident_alerts",
                "incident_events",
            ):
                conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names

        await self._run(write, write=True)

    async def restore(self, events: Sequence[tuple[str, Envelope]]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            for topic, envelope in events:
                data = IncidentEventData.model_validate(envelope.data)
                _restore_event(conn, data)
                conn.execute(
                    "INSERT OR IGNORE INTO incident_events"
                    " (incident_id, topic, event_id, envelope, relayed) VALUES (?, ?, ?, ?, 1)",
                    (data.incident.id, topic, envelope.id, envelope.json_bytes()),
                )

        await self._run(write, write=True)


def _load_marks(conn: sqlite3.Connection, key: str, fps: Sequence[str]) -> dict[str, AlertMark]:
    out: dict[str, AlertMark] = {}
    for chunk in _chunks(fps):
        rows = conn.execute(
            "SELECT fingerprint, starts_at, status, at, event_id FROM group_marks"  # noqa: S608
            f" WHERE key = ? AND fingerprint IN ({','.join('?' * len(chunk))})",
            (key, *chunk),
        )
        out.update((r[0], AlertMark(*r[1:])) for r in rows)
    return out


def _load_alerts(
    conn: sqlite3.Connection, incident_id: str, fps: Sequence[str]
) -> dict[str, IncidentAlert]:
    out: dict[str, IncidentAlert] = {}
    for chunk in _chunks(fps):
        rows = conn.execute(
            "SELECT fingerprint, doc FROM incident_alerts"  # noqa: S608 - placeholders only
            f" WHERE incident_id = ? AND fingerprint IN ({','.join('?' * len(chunk))})",
            (incident_id, *chunk),
        )
        out.update((fp, IncidentAlert.model_validate_json(doc)) for fp, doc in rows)
    return out


def _write_group(conn: sqlite3.Connection, group: GroupState) -> None:
    incident_id = group.incident.id if group.incident else None
    if group.version == 0:
        cur = conn.execute(
            "INSERT OR IGNORE INTO groups (key, version, incident_id) VALUES (?, 1, ?)",
            (group.key, incident_id),
        )
    else:
        cur = conn.execute(
            "UPDATE groups SET version = version + 1, incident_id = ?"
            " WHERE key = ? AND version = ?",
            (incident_id, group.key, group.version),
        )
    if cur.rowcount != 1:
        raise StoreConflict(f"group {group.key!r} changed since it was loaded")
    _write_marks(conn, group.key, {fp: group.marks[fp] for fp in group.changed_marks})
    _write_alerts(conn, group.changed_alerts)


def _write_marks(conn: sqlite3.Connection, key: str, marks: Mapping[str, AlertMark]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO group_marks (key, fingerprint, starts_at, status, at, event_id)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(key, fp, m.starts_at, m.status, m.at, m.event) for fp, m in marks.items()],
    )


def _write_alerts(
    conn: sqlite3.Connection, alerts: Mapping[tuple[str, str], IncidentAlert]
) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO incident_alerts (incident_id, fingerprint, status, doc)"
        " VALUES (?, ?, ?, ?)",
        [(iid, fp, a.status, a.model_dump_json()) for (iid, fp), a in alerts.items()],
    )


def _incident_row(inc: Incident) -> tuple[object, ...]:
    return (
        inc.id,
        inc.key,
        inc.status,
        inc.severity,
        _ms(inc.opened_at),
        _ms(inc.updated_at),
        _resolving_ms(inc),
        inc.version,
        inc.model_dump_json(),
    )


def _write_incident(conn: sqlite3.Connection, w: IncidentWrite) -> None:
    inc = w.incident
    if w.expected_version == 0:
        cur = conn.execute(
            "INSERT OR IGNORE INTO incidents (id, key, status, severity, opened_ms, updated_ms,"
            " resolving_ms, version, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _incident_row(inc),
        )
    else:
        cur = conn.execute(
            "UPDATE incidents SET status = ?, severity = ?, updated_ms = ?, resolving_ms = ?,"
            " version = ?, doc = ? WHERE id = ? AND version = ?",
            (
                inc.status,
                inc.severity,
                _ms(inc.updated_at),
                _resolving_ms(inc),
                inc.version,
                inc.model_dump_json(),
                inc.id,
                w.expected_version,
            ),
        )
    if cur.rowcount != 1:
        raise StoreConflict(f"incident {inc.id} changed since it was loaded")


def _restore_event(conn: sqlite3.Connection, data: IncidentEventData) -> None:
    inc = data.incident
    cur = conn.execute(
        "INSERT INTO incidents (id, key, status, severity, opened_ms, updated_ms, resolving_ms,"
        " version, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
        " status = excluded.status, severity = excluded.severity,"
        " updated_ms = excluded.updated_ms, resolving_ms = excluded.resolving_ms,"
        " version = excluded.version, doc = excluded.doc"
        " WHERE excluded.version > incidents.version",
        _incident_row(inc),
    )
    if cur.rowcount != 1:
        return  # an event older than what is stored: its alerts are older too
    _write_alerts(conn, {(inc.id, a.fingerprint): a for a in data.alerts})
    # A late event about an older incident of the key (say, a severity set by hand after
    # the group moved on) must not make that incident the group's current one again.
    cur = conn.execute(
        "INSERT INTO groups (key, version, incident_id) VALUES (?, 1, ?)"
        " ON CONFLICT (key) DO UPDATE SET version = groups.version + 1,"
        " incident_id = excluded.incident_id"
        " WHERE groups.incident_id = excluded.incident_id OR ? >= COALESCE("
        " (SELECT opened_ms FROM incidents WHERE id = groups.incident_id), 0)",
        (inc.key, inc.id, _ms(inc.opened_at)),
    )
    if cur.rowcount == 1:
        _write_marks(conn, inc.key, {a.fingerprint: _mark_of(a) for a in data.alerts})


def _mark_of(alert: IncidentAlert) -> AlertMark:
    starts = alert.starts_at.isoformat() if alert.starts_at else "-"
    at = alert.ends_at.isoformat() if alert.status == "resolved" and alert.ends_at else ""
    return AlertMark(starts, alert.status, at)
