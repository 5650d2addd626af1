"""The embedded log's SQLite database: its tables, and opening connections to it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

from eventlog.base import LogUnavailable

PAGE_SIZE = 8192

# Two kinds of repeats (EventLog.append): "seen ever" by ``dedup_key`` under a unique
# index; "same as the latest" by ``latest_key`` and ``state``, where the trigger refuses an
# event whose state is that of the latest event under its key (the partial index finds it).
# A refused row fails its INSERT statement as a unique index would, so both kinds cost one
# statement while nothing repeats, and the writer sorts out the rows only when one does.
TABLES = (
    """CREATE TABLE IF NOT EXISTS events (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        topic      TEXT NOT NULL,
        key        TEXT NOT NULL,
        id         TEXT NOT NULL,
        type       TEXT NOT NULL,
        time_ms    INTEGER NOT NULL,
        dedup_key  TEXT,
        envelope   BLOB NOT NULL,
        latest_key TEXT,
        state      TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS repeats (
        topic      TEXT NOT NULL,
        dedup_key  TEXT NOT NULL,
        count      INTEGER NOT NULL,
        last_ms    INTEGER NOT NULL,
        PRIMARY KEY (topic, dedup_key)
    )""",
    """CREATE TABLE IF NOT EXISTS group_offsets (
        grp        TEXT NOT NULL,
        topic      TEXT NOT NULL,
        next_seq   INTEGER NOT NULL,
        PRIMARY KEY (grp, topic)
    )""",
)
# Columns a log made before them lacks; ADD COLUMN puts them last, as TABLES does.
ADDED_COLUMNS = (("events", "latest_key", "TEXT"), ("events", "state", "TEXT"))
INDEXES = (
    "CREATE INDEX IF NOT EXISTS events_topic_seq ON events (topic, seq)",
    "CREATE INDEX IF NOT EXISTS events_time ON events (time_ms)",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_dedup ON events (topic, dedup_key)",
    """CREATE INDEX IF NOT EXISTS events_latest ON events (topic, latest_key)
        WHERE latest_key IS NOT NULL""",
    """CREATE TRIGGER IF NOT EXISTS events_latest_repeat BEFORE INSERT ON events
        WHEN NEW.latest_key IS NOT NULL AND NEW.state = (
            SELECT state FROM events WHERE topic = NEW.topic AND latest_key = NEW.latest_key
            ORDER BY seq DESC LIMIT 1
        )
        BEGIN SELECT RAISE(ABORT, 'same state as the latest under this latest_key'); END""",
)


def connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """A connection for a thread of our own: autocommit (we BEGIN ourselves), no same-thread
    check (the executor's thread is not the one that opened it)."""
    conn = sqlite3.connect(
        path,
        isolation_level=None,
        check_same_thread=False,
        timeout=busy_timeout_ms / 1000,
    )
    conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    return conn


def open_writer(
    path: Path,
    *,
    create: bool,
    synchronous: Literal["full", "normal"],
    busy_timeout_ms: int,
) -> sqlite3.Connection:
    """The writer's connection, with the tables made if missing (``create``) or required."""
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.exists():
        raise LogUnavailable(f"no event log at {path}")
    conn = connect(path, busy_timeout_ms)
    # Before the first write only (a no-op on an existing log): an alert event is ~2 KB,
    # and 8 KiB pages halve SQLite's work per event against the default 4 KiB.
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    _create(conn)
    return conn


def _create(conn: sqlite3.Connection) -> None:
    """Make what is missing, all or nothing (a log from before gets its new columns)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in TABLES:
            conn.execute(statement)
        for table, column, kind in ADDED_COLUMNS:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        for statement in INDEXES:
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def open_reader(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = connect(path, busy_timeout_ms)
    conn.execute("PRAGMA query_only=ON")
    return conn
