"""The embedded store: SQLite in the data dir, one writer thread, never the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from schemas import Envelope
from schemas.alertmanager import AlertStatus
from schemas.incidents import Incident, IncidentAlert, IncidentEventData
from store.actions_embedded import EmbeddedActions
from store.base import (
    GroupState,
    IncidentQuery,
    IncidentWrite,
    OutboxEvent,
    StoredEvent,
)
from store.embedded_rows import (
    load_alerts,
    load_marks,
    ms,
    restore_event,
    write_group,
    write_incident,
)
from store.embedded_schema import create_or_upgrade
from store.sqlite_worker import SqliteWorker

_RELAY_LOCKS: dict[tuple[str, int], asyncio.Lock] = {}


def _relay_lock(path: Path) -> asyncio.Lock:
    key = (str(path.resolve()), id(asyncio.get_running_loop()))
    lock = _RELAY_LOCKS.get(key)
    if lock is None:
        lock = _RELAY_LOCKS[key] = asyncio.Lock()
    return lock


class EmbeddedStore(SqliteWorker, EmbeddedActions):
    NAME = "store"
    THREAD = "sevpipe-store"

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        create_or_upgrade(conn)

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
                group.marks = load_marks(conn, key, fps)
                if incident is not None:
                    group.alerts = load_alerts(conn, incident.id, fps)
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
            args.append(ms(query.since))
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
                write_group(conn, group)
            for w in incidents:
                write_incident(conn, w)
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
        relayer holds the relay. The embedded store is one process's (``sevpipe run``), so a
        lock per file and event loop makes its relayers (the stage, replicas of it in tests)
        take turns; the embedded log drops a repeat by id, should one die mid-way."""
        lock = _relay_lock(self.path)
        if lock.locked():
            return None
        async with lock:
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
                restore_event(conn, data)
                conn.execute(
                    "INSERT OR IGNORE INTO incident_events"
                    " (incident_id, topic, event_id, envelope, relayed) VALUES (?, ?, ?, ?, 1)",
                    (data.incident.id, topic, envelope.id, envelope.json_bytes()),
                )

        await self._run(write, write=True)
