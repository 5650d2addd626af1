"""The PostgreSQL store's writes: versioned groups and incidents, marks, alerts, restore.

Every write of rows that several replicas may touch locks them in key order first: an UPDATE
... FROM unnest() visits rows in whatever order its plan picks, and two replicas writing
overlapping sets could then deadlock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg

from schemas.incidents import Incident, IncidentAlert, IncidentEventData
from store.base import AlertMark, GroupState, IncidentWrite, StoreConflict


def pg(text: str) -> str:
    """``text`` as a PostgreSQL ``text`` value can hold it: NUL escaped, reversibly.

    A label value, and so a group key or a fingerprint, may hold NUL, which PostgreSQL text
    refuses; one such alert must not stop the classifier (it did: every replica crash-looped).
    \x01 is the escape character: \x01 -> \x01\x01, NUL -> \x01\x02.
    """
    if "\x00" not in text and "\x01" not in text:
        return text
    return text.replace("\x01", "\x01\x01").replace("\x00", "\x01\x02")


def unpg(text: str) -> str:
    if "\x01" not in text:
        return text
    return re.sub("\x01(.)", lambda m: "\x00" if m[1] == "\x02" else m[1], text, flags=re.S)


def ms(at: datetime) -> int:
    # The embedded store's conversion, so both backends filter and order identically.
    return int(at.timestamp() * 1000)


def resolving_ms(inc: Incident) -> int | None:
    return ms(inc.resolving_since) if inc.status == "open" and inc.resolving_since else None


def _count(status: str) -> int:
    """Rows touched, from a command tag such as ``INSERT 0 3`` or ``UPDATE 2``."""
    return int(status.rsplit(" ", 1)[1])


async def _lock_rows(conn: asyncpg.Connection, table: str, column: str, ids: list[str]) -> None:
    await conn.execute(
        f"SELECT 1 FROM {table} WHERE {column} = ANY($1::text[])"  # noqa: S608 - fixed names
        f" ORDER BY {column} FOR UPDATE",
        ids,
    )


async def write_groups(conn: asyncpg.Connection, groups: Sequence[GroupState]) -> None:
    new = sorted((g for g in groups if g.version == 0), key=lambda g: g.key)
    old = sorted((g for g in groups if g.version != 0), key=lambda g: g.key)
    if new:
        status = await conn.execute(
            "INSERT INTO incident_groups (key, version, incident_id)"
            " SELECT u.key, 1, u.incident_id FROM unnest($1::text[], $2::text[])"
            " AS u(key, incident_id) ORDER BY u.key ON CONFLICT (key) DO NOTHING",
            [pg(g.key) for g in new],
            [g.incident.id if g.incident else None for g in new],
        )
        if _count(status) != len(new):
            raise StoreConflict("a group created here was created by someone else first")
    if old:
        await _lock_rows(conn, "incident_groups", "key", [pg(g.key) for g in old])
        status = await conn.execute(
            "UPDATE incident_groups g SET version = g.version + 1, incident_id = u.incident_id"
            " FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u(key, version, incident_id)"
            " WHERE g.key = u.key AND g.version = u.version",
            [pg(g.key) for g in old],
            [g.version for g in old],
            [g.incident.id if g.incident else None for g in old],
        )
        if _count(status) != len(old):
            raise StoreConflict("a group changed since it was loaded")
    # The group rows are locked (or new) now, so these rows are written by one replica only.
    marks = [(g.key, fp, g.marks[fp]) for g in groups for fp in sorted(g.changed_marks)]
    await write_marks(conn, marks)
    alerts: dict[tuple[str, str], IncidentAlert] = {}
    for g in groups:
        alerts.update(g.changed_alerts)
    await write_alerts(conn, alerts)


async def write_marks(
    conn: asyncpg.Connection, marks: Sequence[tuple[str, str, AlertMark]]
) -> None:
    if not marks:
        return
    await conn.execute(
        "INSERT INTO group_marks (key, fingerprint, starts_at, status, at, event_id)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
        " $6::text[]) ON CONFLICT (key, fingerprint) DO UPDATE SET starts_at = excluded.starts_at,"
        " status = excluded.status, at = excluded.at, event_id = excluded.event_id",
        [pg(k) for k, _, _ in marks],
        [pg(fp) for _, fp, _ in marks],
        [pg(m.starts_at) for _, _, m in marks],
        [m.status for _, _, m in marks],
        [pg(m.at) for _, _, m in marks],
        [m.event for _, _, m in marks],
    )


async def write_alerts(
    conn: asyncpg.Connection, alerts: Mapping[tuple[str, str], IncidentAlert]
) -> None:
    if not alerts:
        return
    keys = sorted(alerts)
    await conn.execute(
        "INSERT INTO incident_alerts (incident_id, fingerprint, status, doc)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::json[])"
        " ON CONFLICT (incident_id, fingerprint) DO UPDATE SET status = excluded.status,"
        " doc = excluded.doc",
        [iid for iid, _ in keys],
        [pg(fp) for _, fp in keys],
        [alerts[k].status for k in keys],
        [alerts[k].model_dump_json() for k in keys],
    )


async def write_incidents(conn: asyncpg.Connection, writes: Sequence[IncidentWrite]) -> None:
    new = sorted((w.incident for w in writes if w.expected_version == 0), key=lambda i: i.id)
    old = sorted((w for w in writes if w.expected_version != 0), key=lambda w: w.incident.id)
    if new:
        status = await conn.execute(
            "INSERT INTO incidents (id, key, status, severity, opened_ms, updated_ms,"
            " resolving_ms, version, doc)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
            " $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::json[])"
            " ORDER BY 1 ON CONFLICT (id) DO NOTHING",
            [i.id for i in new],
            [pg(i.key) for i in new],
            [i.status for i in new],
            [i.severity for i in new],
            [ms(i.opened_at) for i in new],
            [ms(i.updated_at) for i in new],
            [resolving_ms(i) for i in new],
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
            " updated_ms = u.updated_ms, resolving_ms = u.resolving_ms, version = u.version,"
            " doc = u.doc FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[],"
            " $5::bigint[], $6::bigint[], $7::bigint[], $8::json[]) AS u(id, expected, status,"
            " severity, updated_ms, resolving_ms, version, doc)"
            " WHERE i.id = u.id AND i.version = u.expected",
            [i.id for i in incs],
            [w.expected_version for w in old],
            [i.status for i in incs],
            [i.severity for i in incs],
            [ms(i.updated_at) for i in incs],
            [resolving_ms(i) for i in incs],
            [i.version for i in incs],
            [i.model_dump_json() for i in incs],
        )
        if _count(status) != len(old):
            raise StoreConflict("an incident changed since it was loaded")


# Restore one event's incident, only if newer than the stored one; says whether it was.
_RESTORE_INCIDENT = """
INSERT INTO incidents (id, key, status, severity, opened_ms, updated_ms, resolving_ms, version, doc)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (id) DO UPDATE SET status = excluded.status, severity = excluded.severity,
    updated_ms = excluded.updated_ms, resolving_ms = excluded.resolving_ms,
    version = excluded.version, doc = excluded.doc
WHERE excluded.version > incidents.version
RETURNING 1
"""
# The group follows the restored incident, unless that incident is older than the group's
# current one (a late event about an incident the group has moved on from, say a severity set
# by hand); says whether it followed.
_RESTORE_GROUP = """
INSERT INTO incident_groups (key, version, incident_id) VALUES ($1, 1, $2)
ON CONFLICT (key) DO UPDATE SET version = incident_groups.version + 1,
    incident_id = excluded.incident_id
WHERE incident_groups.incident_id = excluded.incident_id OR $3 >= COALESCE(
    (SELECT opened_ms FROM incidents i WHERE i.id = incident_groups.incident_id), 0)
RETURNING 1
"""


def mark_of(alert: IncidentAlert) -> AlertMark:
    starts = alert.starts_at.isoformat() if alert.starts_at else "-"
    at = alert.ends_at.isoformat() if alert.status == "resolved" and alert.ends_at else ""
    return AlertMark(starts, alert.status, at)


async def restore_event(conn: asyncpg.Connection, data: IncidentEventData) -> None:
    """Fold one incident event read back from the log into the store, in log order."""
    inc = data.incident
    newer = await conn.fetchval(
        _RESTORE_INCIDENT,
        inc.id,
        pg(inc.key),
        inc.status,
        inc.severity,
        ms(inc.opened_at),
        ms(inc.updated_at),
        resolving_ms(inc),
        inc.version,
        inc.model_dump_json(),
    )
    if newer is None:
        return  # older than what is stored: its alerts are older too
    await write_alerts(conn, {(inc.id, a.fingerprint): a for a in data.alerts})
    if await conn.fetchval(_RESTORE_GROUP, pg(inc.key), inc.id, ms(inc.opened_at)) is not None:
        await write_marks(conn, [(inc.key, a.fingerprint, mark_of(a)) for a in data.alerts])
