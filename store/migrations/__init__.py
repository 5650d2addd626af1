"""Versioned SQL migrations of the PostgreSQL store, and the runner that applies them.

Files are ``NNNN_name.sql``, applied in version order, each exactly once per database, and
recorded in ``sevpipe_schema_migrations``. Never edit one that has shipped: add the next.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from store.base import StoreError

log = logging.getLogger(__name__)

# Key of the advisory lock that serialises migrations; any constant all replicas share
# (these are the bytes of "sevpipe").
MIGRATION_LOCK = 0x73657670697065

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS sevpipe_schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
_MIGRATION_FILE = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """The SQL files next to this module, in version order."""
    found = []
    for entry in resources.files(__name__).iterdir():
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise StoreError(f"two migrations share a version: {[m.name for m in found]}")
    return found


async def migrate(conn: asyncpg.Connection, *, statement_timeout: float | None = None) -> list[int]:
    """Apply the migrations not yet recorded, in one transaction; returns the versions applied.

    The advisory lock makes replicas that start together wait for each other: the first
    applies, the others then find everything recorded and do nothing.
    """
    applied_now = []
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK, timeout=statement_timeout
        )
        await conn.execute(_MIGRATIONS_TABLE, timeout=statement_timeout)
        rows = await conn.fetch("SELECT version, checksum FROM sevpipe_schema_migrations")
        applied = {r["version"]: r["checksum"] for r in rows}
        for m in migrations():
            if m.version in applied:
                if applied[m.version] != m.checksum:
                    log.warning("migration %s changed since it was applied", m.name)
                continue
            log.info("applying migration %s", m.name)
            await conn.execute(m.sql, timeout=statement_timeout)
            await conn.execute(
                "INSERT INTO sevpipe_schema_migrations (version, name, checksum)"
                " VALUES ($1, $2, $3)",
                m.version,
                m.name,
                m.checksum,
            )
            applied_now.append(m.version)
    return applied_now
