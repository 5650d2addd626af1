"""A store written before incidents were bounded (marks and alerts inside one document each)
opens on the new code with every mark, alert and count in place, on both backends."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from services import Services, fresh_database

from store import EmbeddedStore, IncidentStore, PostgresStore
from store.base import AlertMark
from store.migrations import MIGRATION_LOCK, migrations

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = '{}:{alertname="Old"}'

# The embedded store's tables as sevpipe wrote them before (schema version 0/1).
V1_SQLITE = """
CREATE TABLE groups (key TEXT PRIMARY KEY, version INTEGER NOT NULL, incident_id TEXT,
    marks BLOB NOT NULL);
CREATE TABLE incidents (id TEXT PRIMARY KEY, key TEXT NOT NULL, status TEXT NOT NULL,
    severity TEXT NOT NULL, opened_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    version INTEGER NOT NULL, doc BLOB NOT NULL);
CREATE INDEX incidents_updated ON incidents (updated_ms);
CREATE TABLE incident_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, incident_id TEXT NOT NULL,
    topic TEXT NOT NULL, event_id TEXT NOT NULL UNIQUE, envelope BLOB NOT NULL,
    relayed INTEGER NOT NULL DEFAULT 0);
"""


def old_incident() -> dict[str, Any]:
    alerts: list[dict[str, Any]] = [
        {
            "fingerprint": f,
            "alertname": "Old",
            "status": s,
            "starts_at": T0.isoformat(),
            "ends_at": None,
            "severity": "SEV-1",
            "reasons": [],
            "summary": "",
            "labels": {},
        }
        for f, s in (("a", "firing"), ("b", "resolved"), ("c", "firing"))
    ]
    return {
        "id": "inc-old",
        "key": KEY,
        "severity": "SEV-1",
        "severity_source": "policy",
        "status": "open",
        "title": "Old",
        "reasons": ["Old: x"],
        "alerts": alerts,
        "opened_at": T0.isoformat(),
        "updated_at": T0.isoformat(),
        "resolved_at": None,
        "resolving_since": None,
        "version": 4,
    }


OLD_MARKS = {"a": [T0.isoformat(), "firing"], "b": [T0.isoformat(), "resolved"],
             "c": [T0.isoformat(), "firing"]}  # fmt: skip


async def assert_upgraded(store: IncidentStore) -> None:
    inc = await store.get_incident("inc-old")
    assert inc is not None
    assert inc.counts.model_dump() == {"alerts": 3, "firing": 2, "resolved": 1}
    assert inc.version == 4
    alerts = await store.list_alerts("inc-old")
    assert [(a.fingerprint, a.status) for a in alerts] == [
        ("a", "firing"), ("b", "resolved"), ("c", "firing"),
    ]  # fmt: skip
    group = (await store.load_groups([KEY], {KEY: ["a", "b", "c"]}))[KEY]
    assert group.version == 4
    assert group.incident == inc
    assert group.marks == {
        "a": AlertMark(T0.isoformat(), "firing"),
        "b": AlertMark(T0.isoformat(), "resolved"),
        "c": AlertMark(T0.isoformat(), "firing"),
    }
    assert set(group.alerts) == {"a", "b", "c"}


async def test_an_embedded_store_of_the_old_shape_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SQLITE)
    conn.execute("INSERT INTO groups VALUES (?, 4, 'inc-old', ?)", (KEY, orjson.dumps(OLD_MARKS)))
    conn.execute(
        "INSERT INTO incidents VALUES ('inc-old', ?, 'open', 'SEV-1', 0, 0, 4, ?)",
        (KEY, orjson.dumps(old_incident())),
    )
    conn.commit()
    conn.close()

    async with EmbeddedStore(path) as store:
        await assert_upgraded(store)
    async with EmbeddedStore(path) as store:  # and opening it again changes nothing
        await assert_upgraded(store)


async def test_a_postgres_store_of_the_old_shape_is_migrated(services: Services) -> None:
    async with fresh_database(services, "sevpipe_upgrade") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            first = migrations()[0]
            assert first.version == 1
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                await conn.execute(
                    "CREATE TABLE sevpipe_schema_migrations (version integer PRIMARY KEY,"
                    " name text NOT NULL, checksum text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                await conn.execute(first.sql)
                await conn.execute(
                    "INSERT INTO sevpipe_schema_migrations (version, name, checksum)"
                    " VALUES (1, $1, $2)",
                    first.name,
                    first.checksum,
                )
            await conn.execute(
                "INSERT INTO incident_groups VALUES ($1, 4, 'inc-old', $2)",
                KEY,
                orjson.dumps(OLD_MARKS).decode(),
            )
            await conn.execute(
                "INSERT INTO incidents VALUES ('inc-old', $1, 'open', 'SEV-1', 0, 0, 4, $2)",
                KEY,
                orjson.dumps(old_incident()).decode(),
            )
        finally:
            await conn.close()

        async with PostgresStore(dsn) as store:
            await assert_upgraded(store)
