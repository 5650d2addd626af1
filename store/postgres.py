"""The production store: PostgreSQL through an asyncpg pool.

It keeps the embedded store's semantics (the same contract tests run on both). Several
classifier replicas may share one database: every write checks versions under row locks, so
a replica that lost a race gets ``StoreConflict`` and decides again instead of overwriting.
Outages surface as ``StoreUnavailable`` (retriable); the pool reconnects on its own once the
server answers again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Any

import asyncpg
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
    StoreError,
    StoreUnavailable,
)
from store.migrations import migrate

# The server or the network is (for now) not there: wait and try again.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, cannot connect now, timeouts
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.InterfaceError,  # the connection was closed under us
    OSError,  # ConnectionRefusedError, resets, and TimeoutError
)


@contextmanager
def _translated() -> Iterator[None]:
    """asyncpg's and the network's errors as the store's (retriable or not)."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"postgres unavailable: {type(exc).__name__}: {exc}") from exc
    except asyncpg.exceptions.TransactionRollbackError as exc:
        # A deadlock or serialisation failure: the transaction wrote nothing; decide again.
        raise StoreConflict(f"postgres rolled back: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise StoreError(f"postgres: {type(exc).__name__}: {exc}") from exc


def _ms(at: datetime) -> int:
    # The embedded store's conversion, so both backends filter and order identically.
    return int(at.timestamp() * 1000)


def _marks_json(marks: dict[str, AlertMark]) -> str:
    return orjson.dumps({fp: [m.starts_at, m.status] for fp, m in marks.items()}).decode()


def _marks(text: str) -> dict[str, AlertMark]:
    return {fp: AlertMark(s, st) for fp, (s, st) in orjson.loads(text).items()}


def _count(status: str) -> int:
    """Rows touched, from a command tag such as ``INSERT 0 3`` or ``UPDATE 2``."""
    return int(status.rsplit(" ", 1)[1])


class PostgresStore:
    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float = 5.0,
        migration_timeout: float = 300.0,
    ) -> None:
        self._dsn = dsn  # may hold a password: never logged
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout = command_timeout
        self._migration_timeout = migration_timeout
        self._pool: asyncpg.Pool | None = None

    async def __aenter__(self) -> PostgresStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the pool and bring the schema up to date; ``StoreUnavailable`` if unreachable."""
        if self._pool is not None:
            return
        with _translated():
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                command_timeout=self._command_timeout,
                timeout=self._command_timeout,  # connecting, too, must not hang the stage
            )
        try:
            with _translated():
                async with pool.acquire(timeout=self._command_timeout) as conn:
                    await migrate(conn, statement_timeout=self._migration_timeout)
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self._command_timeout)
        except _UNAVAILABLE:  # TimeoutError is an OSError
            # Shutdown must finish: whatever did not close politely is cut.
            pool.terminate()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("store is closed")
        with _translated():
            async with pool.acquire(timeout=self._command_timeout) as conn:
                yield conn

    # -- reads -----------------------------------------------------------------------------

    async def load_groups(self, keys: Sequence[str]) -> dict[str, GroupState]:
        out = {k: GroupState(k) for k in keys}
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT g.key, g.version, g.marks, i.doc FROM incident_groups g"
                " LEFT JOIN incidents i ON i.id = g.incident_id WHERE g.key = ANY($1::text[])",
                list(out),
            )
        for key, version, marks, doc in rows:
            incident = Incident.model_validate_json(doc) if doc is not None else None
            out[key] = GroupState(key, version, incident, _marks(marks))
        return out

    async def get_incident(self, incident_id: str) -> Incident | None:
        async with self._connection() as conn:
            doc = await conn.fetchval("SELECT doc FROM incidents WHERE id = $1", incident_id)
        return Incident.model_validate_json(doc) if doc is not None else None

    async def list_incidents(self, query: IncidentQuery) -> list[Incident]:
        where: list[str] = []
        args: list[Any] = []
        if query.status is not None:
            args.append(query.status)
            where.append(f"status = ${len(args)}")
        if query.severity is not None:
            args.append(query.severity)
            where.append(f"severity = ${len(args)}")
        if query.since is not None:
            args.append(_ms(query.since))
            where.append(f"updated_ms >= ${len(args)}")
        args.append(query.limit)
        sql = (
            "SELECT doc FROM incidents"  # noqa: S608 - fixed fragments, values are parameters
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY updated_ms DESC, id DESC LIMIT ${len(args)}"
        )
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *args)
        return [Incident.model_validate_json(r[0]) for r in rows]

    async def timeline(self, incident_id: str) -> list[Envelope]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT envelope FROM incident_events WHERE incident_id = $1 ORDER BY seq",
                incident_id,
            )
        return [Envelope.model_validate_json(r[0]) for r in rows]

    async def unrelayed(self, limit: int = 500) -> list[StoredEvent]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT seq, topic, envelope FROM incident_events WHERE NOT relayed"
                " ORDER BY seq LIMIT $1",
                limit,
            )
        return [
            StoredEvent(seq, topic, Envelope.model_validate_json(env)) for seq, topic, env in rows
        ]

    # -- writes ----------------------------------------------------------------------------

    async def save(
        self,
        groups: Sequence[GroupState],
        incidents: Sequence[IncidentWrite],
        outbox: Sequence[OutboxEvent],
    ) -> None:
        async with self._connection() as conn, conn.transaction():
            await _write_groups(conn, groups)
            await _write_incidents(conn, incidents)
            if outbox:
                await conn.execute(
                    "INSERT INTO incident_events (incident_id, topic, event_id, envelope)"
                    " SELECT u.incident_id, u.topic, u.event_id, u.envelope"
                    " FROM unnest($1::text[], $2::text[], $3::text[], $4::json[])"
                    " WITH ORDINALITY AS u(incident_id, topic, event_id, envelope, n)"
                    # In the given order, so seq (the timeline's order) follows the decisions.
                    " ORDER BY u.n ON CONFLICT (event_id) DO NOTHING",
                    [e.incident_id for e in outbox],
                    [e.topic for e in outbox],
                    [e.envelope.id for e in outbox],
                    [e.envelope.model_dump_json() for e in outbox],
                )

    async def mark_relayed(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE incident_events SET relayed = true WHERE seq = ANY($1::bigint[])",
                list(seqs),
            )

    async def reset(self) -> None:
        async with self._connection() as conn:
            await conn.execute("TRUNCATE incident_groups, incidents, incident_events")

    async def restore(self, events: Sequence[tuple[str, Envelope]]) -> None:
        rows = []
        for topic, envelope in events:
            inc = IncidentEventData.model_validate(envelope.data).incident
            marks = {
                a.fingerprint: AlertMark(a.starts_at.isoformat() if a.starts_at else "-", a.status)
                for a in inc.alerts
            }
            rows.append(
                (
                    inc.id,
                    inc.key,
                    inc.status,
                    inc.severity,
                    _ms(inc.opened_at),
                    _ms(inc.updated_at),
                    inc.version,
                    inc.model_dump_json(),
                    _marks_json(marks),
                    topic,
                    envelope.id,
                    envelope.model_dump_json(),
                )
            )
        if not rows:
            return
        async with self._connection() as conn, conn.transaction():
            # One statement per event, in log order: each sees what the earlier ones wrote.
            await conn.executemany(_RESTORE, rows)


# Restore one event: the incident (only if newer), the group, and the event as relayed.
# A late event about an older incident of the key (say, a severity set by hand after the
# group moved on) must not make that incident the group's current one again. The group's
# subquery reads the statement's snapshot, which is right: it asks about the group's current
# incident, and the only incident this statement changes is $1 (covered by the first test).
_RESTORE = """
WITH incident AS (
    INSERT INTO incidents (id, key, status, severity, opened_ms, updated_ms, version, doc)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (id) DO UPDATE SET status = excluded.status, severity = excluded.severity,
        updated_ms = excluded.updated_ms, version = excluded.version, doc = excluded.doc
    WHERE excluded.version > incidents.version
    RETURNING 1
), grp AS (
    INSERT INTO incident_groups (key, version, incident_id, marks) VALUES ($2, 1, $1, $9)
    ON CONFLICT (key) DO UPDATE SET version = incident_groups.version + 1,
        incident_id = excluded.incident_id, marks = excluded.marks
    WHERE incident_groups.incident_id = excluded.incident_id OR $5 >= COALESCE(
        (SELECT opened_ms FROM incidents i WHERE i.id = incident_groups.incident_id), 0)
    RETURNING 1
)
INSERT INTO incident_events (incident_id, topic, event_id, envelope, relayed)
VALUES ($1, $10, $11, $12, true) ON CONFLICT (event_id) DO NOTHING
"""


async def _lock_rows(conn: asyncpg.Connection, table: str, column: str, ids: list[str]) -> None:
    """Lock rows in key order before updating them in bulk.

    An UPDATE ... FROM unnest() visits rows in whatever order its plan picks; two replicas
    writing overlapping sets could then deadlock. Locking in one global order first avoids it.
    """
    await conn.execute(
        f"SELECT 1 FROM {table} WHERE {column} = ANY($1::text[])"  # noqa: S608 - fixed names
        f" ORDER BY {column} FOR UPDATE",
        ids,
    )


async def _write_groups(conn: asyncpg.Connection, groups: Sequence[GroupState]) -> None:
    new = sorted((g for g in groups if g.version == 0), key=lambda g: g.key)
    old = sorted((g for g in groups if g.version != 0), key=lambda g: g.key)
    if new:
        status = await conn.execute(
            "INSERT INTO incident_groups (key, version, incident_id, marks)"
            " SELECT u.key, 1, u.incident_id, u.marks"
            " FROM unnest($1::text[], $2::text[], $3::json[]) AS u(key, incident_id, marks)"
            " ORDER BY u.key ON CONFLICT (key) DO NOTHING",
            [g.key for g in new],
            [g.incident.id if g.incident else None for g in new],
            [_marks_json(g.marks) for g in new],
        )
        if _count(status) != len(new):
            raise StoreConflict("a group created here was created by someone else first")
    if old:
        await _lock_rows(conn, "incident_groups", "key", [g.key for g in old])
        status = await conn.execute(
            "UPDATE incident_groups g SET version = g.version + 1,"
            " incident_id = u.incident_id, marks = u.marks"
            " FROM unnest($1::text[], $2::bigint[], $3::text[], $4::json[])"
            " AS u(key, version, incident_id, marks)"
            " WHERE g.key = u.key AND g.version = u.version",
            [g.key for g in old],
            [g.version for g in old],
            [g.incident.id if g.incident else None for g in old],
            [_marks_json(g.marks) for g in old],
        )
        if _count(status) != len(old):
            raise StoreConflict("a group changed since it was loaded")


async def _write_incidents(conn: asyncpg.Connection, writes: Sequence[IncidentWrite]) -> None:
    new = sorted((w.incident for w in writes if w.expected_version == 0), key=lambda i: i.id)
    old = sorted((w for w in writes if w.expected_version != 0), key=lambda w: w.incident.id)
    if new:
        status = await conn.execute(
            "INSERT INTO incidents (id, key, status, severity, opened_ms, updated_ms, version, doc)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
            " $5::bigint[], $6::bigint[], $7::bigint[], $8::json[])"
            " ORDER BY 1 ON CONFLICT (id) DO NOTHING",
            [i.id for i in new],
            [i.key for i in new],
            [i.status for i in new],
            [i.severity for i in new],
            [_ms(i.opened_at) for i in new],
            [_ms(i.updated_at) for i in new],
            [i.version for i in new],
            [i.model_dump_json() for i in new],
        )
        if _count(status) != len(new):
            raise StoreConflict("an incident created here exists already")
    if old:
        incs = [w.incident for w in old]
        await _lock_rows(conn, "incidents", "id", [i.id for i in incs])
        status = await conn.execute(
            "UPDATE incidents i SET status = u.status, severity = u.severity,"
            " updated_ms = u.updated_ms, version = u.version, doc = u.doc"
            " FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[],"
            " $6::bigint[], $7::json[]) AS u(id, expected, status, severity, updated_ms,"
            " version, doc) WHERE i.id = u.id AND i.version = u.expected",
            [i.id for i in incs],
            [w.expected_version for w in old],
            [i.status for i in incs],
            [i.severity for i in incs],
            [_ms(i.updated_at) for i in incs],
            [i.version for i in incs],
            [i.model_dump_json() for i in incs],
        )
        if _count(status) != len(old):
            raise StoreConflict("an incident changed since it was loaded")
