"""The embedded store's rows: how groups, marks, alerts and incidents are read and written."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime

from schemas.incidents import Incident, IncidentAlert, IncidentEventData
from store.base import AlertMark, GroupState, IncidentWrite, StoreConflict

_CHUNK = 500  # values per IN (...) list


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _resolvingms(inc: Incident) -> int | None:
    return ms(inc.resolving_since) if inc.status == "open" else None


def ms(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)


def load_marks(conn: sqlite3.Connection, key: str, fps: Sequence[str]) -> dict[str, AlertMark]:
    out: dict[str, AlertMark] = {}
    for chunk in _chunks(fps):
        rows = conn.execute(
            "SELECT fingerprint, starts_at, status, at, event_id FROM group_marks"  # noqa: S608
            f" WHERE key = ? AND fingerprint IN ({','.join('?' * len(chunk))})",
            (key, *chunk),
        )
        out.update((r[0], AlertMark(*r[1:])) for r in rows)
    return out


def load_alerts(
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


def write_group(conn: sqlite3.Connection, group: GroupState) -> None:
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
    write_marks(conn, group.key, {fp: group.marks[fp] for fp in group.changed_marks})
    write_alerts(conn, group.changed_alerts)


def write_marks(conn: sqlite3.Connection, key: str, marks: Mapping[str, AlertMark]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO group_marks (key, fingerprint, starts_at, status, at, event_id)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(key, fp, m.starts_at, m.status, m.at, m.event) for fp, m in marks.items()],
    )


def write_alerts(conn: sqlite3.Connection, alerts: Mapping[tuple[str, str], IncidentAlert]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO incident_alerts (incident_id, fingerprint, status, doc)"
        " VALUES (?, ?, ?, ?)",
        [(iid, fp, a.status, a.model_dump_json()) for (iid, fp), a in alerts.items()],
    )


def incident_row(inc: Incident) -> tuple[object, ...]:
    return (
        inc.id,
        inc.key,
        inc.status,
        inc.severity,
        ms(inc.opened_at),
        ms(inc.updated_at),
        _resolvingms(inc),
        inc.version,
        inc.model_dump_json(),
    )


def write_incident(conn: sqlite3.Connection, w: IncidentWrite) -> None:
    inc = w.incident
    if w.expected_version == 0:
        cur = conn.execute(
            "INSERT OR IGNORE INTO incidents (id, key, status, severity, opened_ms, updated_ms,"
            " resolving_ms, version, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            incident_row(inc),
        )
    else:
        cur = conn.execute(
            "UPDATE incidents SET status = ?, severity = ?, updated_ms = ?, resolving_ms = ?,"
            " version = ?, doc = ? WHERE id = ? AND version = ?",
            (
                inc.status,
                inc.severity,
                ms(inc.updated_at),
                _resolvingms(inc),
                inc.version,
                inc.model_dump_json(),
                inc.id,
                w.expected_version,
            ),
        )
    if cur.rowcount != 1:
        raise StoreConflict(f"incident {inc.id} changed since it was loaded")


def restore_event(conn: sqlite3.Connection, data: IncidentEventData) -> None:
    inc = data.incident
    cur = conn.execute(
        "INSERT INTO incidents (id, key, status, severity, opened_ms, updated_ms, resolving_ms,"
        " version, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
        " status = excluded.status, severity = excluded.severity,"
        " updated_ms = excluded.updated_ms, resolving_ms = excluded.resolving_ms,"
        " version = excluded.version, doc = excluded.doc"
        " WHERE excluded.version > incidents.version",
        incident_row(inc),
    )
    if cur.rowcount != 1:
        return  # an event older than what is stored: its alerts are older too
    write_alerts(conn, {(inc.id, a.fingerprint): a for a in data.alerts})
    # A late event about an older incident of the key (say, a severity set by hand after
    # the group moved on) must not make that incident the group's current one again.
    cur = conn.execute(
        "INSERT INTO groups (key, version, incident_id) VALUES (?, 1, ?)"
        " ON CONFLICT (key) DO UPDATE SET version = groups.version + 1,"
        " incident_id = excluded.incident_id"
        " WHERE groups.incident_id = excluded.incident_id OR ? >= COALESCE("
        " (SELECT opened_ms FROM incidents WHERE id = groups.incident_id), 0)",
        (inc.key, inc.id, ms(inc.opened_at)),
    )
    if cur.rowcount == 1:
        write_marks(conn, inc.key, {a.fingerprint: mark_of(a) for a in data.alerts})


def mark_of(alert: IncidentAlert) -> AlertMark:
    starts = alert.starts_at.isoformat() if alert.starts_at else "-"
    at = alert.ends_at.isoformat() if alert.status == "resolved" and alert.ends_at else ""
    return AlertMark(starts, alert.status, at)
