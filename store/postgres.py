"""The production store: PostgreSQL through an asyncpg pool.

It keeps the embedded store's semantics (the same contract tests run on both). Several
classifier replicas may share one database: every write checks versions under row locks, so
a replica that lost a race gets ``StoreConflict`` and decides again instead of overwriting.
Outages surface as ``StoreUnavailable`` (retriable); the pool reconnects on its own once the
server answers again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from schemas import Envelope
from schemas.alertmanager import AlertStatus
from schemas.incidents import Incident, IncidentAlert, IncidentEventData
from store.actions_postgres import PostgresActions
from store.base import (
    AlertMark,
    GroupState,
    IncidentQuery,
    IncidentWrite,
    OutboxEvent,
    StoredEvent,
)
from store.pg_pool import PgPool
from store.postgres_writes import ms, pg, restore_event, unpg, write_groups, write_incidents

# Key of the advisory lock a relayer holds while it publishes the outbox ("relay" + 1).
RELAY_LOCK = 0x72656C617901


class PostgresStore(PgPool, PostgresActions):
    NAME = "store"

    # -- reads -----------------------------------------------------------------------------

    async def load_groups(
        self, keys: Sequence[str], fingerprints: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, GroupState]:
        out = {k: GroupState(k) for k in keys}
        wanted = [(k, fp) for k in keys for fp in (fingerprints or {}).get(k, ())]
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT g.key, g.version, i.doc FROM incident_groups g"
                " LEFT JOIN incidents i ON i.id = g.incident_id WHERE g.key = ANY($1::text[])",
                [pg(k) for k in out],
            )
            for stored_key, version, doc in rows:
                key = unpg(stored_key)
                incident = Incident.model_validate_json(doc) if doc is not None else None
                out[key] = GroupState(key, version, incident)
            if wanted:
                await _load_marks_and_alerts(conn, out, wanted)
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
            args.append(ms(query.since))
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

    async def list_alerts(
        self,
        incident_id: str,
        *,
        status: AlertStatus | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[IncidentAlert]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT doc FROM incident_alerts WHERE incident_id = $1 AND fingerprint > $2"
                " AND ($3::text IS NULL OR status = $3) ORDER BY fingerprint LIMIT $4",
                incident_id,
                pg(after or ""),
                status,
                limit,
            )
        return [IncidentAlert.model_validate_json(r[0]) for r in rows]

    async def due_graces(self, now: datetime, grace: timedelta, limit: int = 500) -> list[str]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT key FROM incidents WHERE resolving_ms IS NOT NULL AND resolving_ms <= $1"
                " AND status = 'open' ORDER BY resolving_ms LIMIT $2",
                ms(now - grace),
                limit,
            )
        return [unpg(r[0]) for r in rows]

    async def timeline(self, incident_id: str) -> list[Envelope]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT envelope FROM incident_events WHERE incident_id = $1 ORDER BY seq",
                incident_id,
            )
        return [Envelope.model_validate_json(r[0]) for r in rows]

    async def caused(self, incident_id: str, cause_id: str) -> bool:
        async with self._connection() as conn:
            found = await conn.fetchval(
                "SELECT 1 FROM incident_events WHERE incident_id = $1"
                " AND envelope->'data'->>'cause' = $2 LIMIT 1",
                incident_id,
                cause_id,
            )
        return found is not None

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
            await write_groups(conn, groups)
            await write_incidents(conn, incidents)
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

    async def relay(
        self, publish: Callable[[Sequence[StoredEvent]], Awaitable[None]], *, limit: int = 500
    ) -> int | None:
        """Publish up to ``limit`` unrelayed events in order and mark them; None if another
        relayer holds the relay.

        One relayer at a time, under a transaction-scoped advisory lock, so replicas never
        publish the same rows and an incident's events reach the log in version order. A
        relayer that dies mid-way loses its connection, and with it the lock and the marks.
        """
        async with self._connection() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RELAY_LOCK):
                return None
            rows = await conn.fetch(
                "SELECT seq, topic, envelope, relay_attempts FROM incident_events"
                " WHERE NOT relayed ORDER BY seq LIMIT $1",
                limit,
            )
            if not rows:
                return 0
            seqs = [r[0] for r in rows]
            # Counted outside this transaction, so that it outlives a relayer killed after
            # publishing and before its marks commit.
            async with self._connection() as other:
                await other.execute(
                    "UPDATE incident_events SET relay_attempts = relay_attempts + 1"
                    " WHERE seq = ANY($1::bigint[])",
                    seqs,
                )
            await publish(
                [StoredEvent(q, t, Envelope.model_validate_json(e), n) for q, t, e, n in rows]
            )
            await conn.execute(
                "UPDATE incident_events SET relayed = true WHERE seq = ANY($1::bigint[])", seqs
            )
            return len(rows)

    async def reset(self) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "TRUNCATE incident_groups, group_marks, incidents, incident_alerts, incident_events"
            )

    async def restore(self, events: Sequence[tuple[str, Envelope]]) -> None:
        if not events:
            return
        async with self._connection() as conn, conn.transaction():
            # One event after another, in log order: each sees what the earlier ones wrote.
            for topic, envelope in events:
                data = IncidentEventData.model_validate(envelope.data)
                await restore_event(conn, data)
                await conn.execute(
                    "INSERT INTO incident_events (incident_id, topic, event_id, envelope, relayed)"
                    " VALUES ($1, $2, $3, $4, true) ON CONFLICT (event_id) DO NOTHING",
                    data.incident.id,
                    topic,
                    envelope.id,
                    envelope.model_dump_json(),
                )


async def _load_marks_and_alerts(
    conn: asyncpg.Connection, groups: dict[str, GroupState], wanted: list[tuple[str, str]]
) -> None:
    keys = [pg(k) for k, _ in wanted]
    fps = [pg(fp) for _, fp in wanted]
    marks = await conn.fetch(
        "SELECT m.key, m.fingerprint, m.starts_at, m.status, m.at, m.event_id FROM group_marks m"
        " JOIN unnest($1::text[], $2::text[]) AS u(key, fp)"
        " ON m.key = u.key AND m.fingerprint = u.fp",
        keys,
        fps,
    )
    for key, fp, starts, status, at, event in marks:
        groups[unpg(key)].marks[unpg(fp)] = AlertMark(unpg(starts), status, unpg(at), event)
    current = {k: g.incident.id for k, g in groups.items() if g.incident is not None}
    pairs = [(current[k], fp) for k, fp in wanted if k in current]
    if not pairs:
        return
    by_incident = {iid: k for k, iid in current.items()}
    alerts = await conn.fetch(
        "SELECT a.incident_id, a.fingerprint, a.doc FROM incident_alerts a"
        " JOIN unnest($1::text[], $2::text[]) AS u(iid, fp)"
        " ON a.incident_id = u.iid AND a.fingerprint = u.fp",
        [iid for iid, _ in pairs],
        [pg(fp) for _, fp in pairs],
    )
    for iid, fp, doc in alerts:
        groups[by_incident[iid]].alerts[unpg(fp)] = IncidentAlert.model_validate_json(doc)
