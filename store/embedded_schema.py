"""The embedded store's tables, and the upgrade of a data dir made before incidents were bounded.

``PRAGMA user_version`` is the schema version. Version 1 kept each group's marks, and each
incident's alerts, inside one document: every batch rewrote them whole, which made a group of
n alerts cost O(n^2). Version 2 keeps one row per mark and per alert. Version 3 adds the
actions book (``store.actions_embedded``), a new table only.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Final

import orjson

from store.actions_embedded import SCHEMA as ACTIONS_SCHEMA

VERSION: Final = 3

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS groups (
    key          TEXT PRIMARY KEY,
    version      INTEGER NOT NULL,
    incident_id  TEXT
);
CREATE TABLE IF NOT EXISTS group_marks (
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    starts_at    TEXT NOT NULL,
    status       TEXT NOT NULL,
    at           TEXT NOT NULL DEFAULT '',
    event_id     TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (key, fingerprint)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS incidents (
    id           TEXT PRIMARY KEY,
    key          TEXT NOT NULL,
    status       TEXT NOT NULL,
    severity     TEXT NOT NULL,
    opened_ms    INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    resolving_ms INTEGER,
    version      INTEGER NOT NULL,
    doc          BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_updated ON incidents (updated_ms);
CREATE INDEX IF NOT EXISTS incidents_resolving ON incidents (resolving_ms)
    WHERE resolving_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS incident_alerts (
    incident_id  TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    status       TEXT NOT NULL,
    doc          BLOB NOT NULL,
    PRIMARY KEY (incident_id, fingerprint)
) WITHOUT ROWID;
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


def create_or_upgrade(conn: sqlite3.Connection) -> None:
    """Bring the file to ``VERSION`` in one transaction (a crash leaves it as it was)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(groups)")}
        if "marks" in columns:
            _upgrade_from_1(conn)
        for statement in (SCHEMA + ACTIONS_SCHEMA).split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _upgrade_from_1(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE groups RENAME TO groups_v1")
    conn.execute("ALTER TABLE incidents ADD COLUMN resolving_ms INTEGER")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    for key, version, incident_id, marks in conn.execute(
        "SELECT key, version, incident_id, marks FROM groups_v1"
    ).fetchall():
        conn.execute(
            "INSERT INTO groups (key, version, incident_id) VALUES (?, ?, ?)",
            (key, version, incident_id),
        )
        conn.executemany(
            "INSERT INTO group_marks (key, fingerprint, starts_at, status) VALUES (?, ?, ?, ?)",
            [(key, fp, s, st) for fp, (s, st) in orjson.loads(marks).items()],
        )
    conn.execute("DROP TABLE groups_v1")
    for incident_id, doc in conn.execute("SELECT id, doc FROM incidents").fetchall():
        incident = orjson.loads(doc)
        alerts = incident.pop("alerts", [])
        firing = sum(1 for a in alerts if a.get("status") == "firing")
        incident["counts"] = {
            "alerts": len(alerts),
            "firing": firing,
            "resolved": len(alerts) - firing,
        }
        conn.executemany(
            "INSERT OR REPLACE INTO incident_alerts (incident_id, fingerprint, status, doc)"
            " VALUES (?, ?, ?, ?)",
            [(incident_id, a["fingerprint"], a["status"], orjson.dumps(a)) for a in alerts],
        )
        since = incident.get("resolving_since")
        resolving_ms = None
        if since and incident.get("status") == "open":
            resolving_ms = int(datetime.fromisoformat(since).timestamp() * 1000)
        conn.execute(
            "UPDATE incidents SET doc = ?, resolving_ms = ? WHERE id = ?",
            (orjson.dumps(incident), resolving_ms, incident_id),
        )
