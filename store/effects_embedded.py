"""The embedded effects ledger: SQLite in the data dir, one writer thread, never the loop.

Leases run on this machine's wall clock (``time.time``): every process that shares the file
runs on the same machine, and the clock must mean the same in all of them and after a
restart, which a monotonic clock does not.

Always ``synchronous=FULL``, whatever the store uses: a claim lost to a power cut would let
the effect run again as a first attempt, without its check.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from store.effects import (
    Claim,
    Claimed,
    CompletedStatus,
    EffectRecord,
    Outcome,
    answer,
    check_claim,
    check_id,
    check_lease,
    clean_error,
    decide,
    dump_outcome,
    fence,
)
from store.sqlite_worker import SqliteWorker

_SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (
    effect_id    TEXT PRIMARY KEY,
    state        TEXT NOT NULL CHECK (state IN ('held', 'released', 'succeeded', 'failed')),
    token        INTEGER NOT NULL,
    holder       TEXT,
    lease_until  REAL,
    attempts     INTEGER NOT NULL,
    outcome      BLOB,
    error        TEXT,
    updated_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS effect_tokens (
    one   INTEGER PRIMARY KEY CHECK (one = 1),
    last  INTEGER NOT NULL
);
INSERT OR IGNORE INTO effect_tokens (one, last) VALUES (1, 0);
"""
_COLUMNS = "effect_id, state, token, holder, lease_until, attempts, outcome, error, updated_at"


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _record(row: tuple[Any, ...]) -> EffectRecord:
    effect_id, state, token, holder, lease_until, attempts, outcome, error, updated_at = row
    return EffectRecord(
        effect_id=effect_id,
        state=state,
        token=token,
        holder=holder,
        lease_until=_at(lease_until) if lease_until is not None else None,
        attempts=attempts,
        outcome=orjson.loads(outcome) if outcome is not None else None,
        error=error,
        updated_at=_at(updated_at),
    )


def _load(conn: sqlite3.Connection, effect_id: str) -> EffectRecord | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM effects WHERE effect_id = ?",  # noqa: S608 - fixed columns
        (effect_id,),
    ).fetchone()
    return _record(row) if row is not None else None


def _next_token(conn: sqlite3.Connection) -> int:
    row = conn.execute("UPDATE effect_tokens SET last = last + 1 RETURNING last").fetchone()
    return int(row[0])


class EmbeddedEffectsLedger(SqliteWorker):
    NAME = "effects ledger"
    THREAD = "sevpipe-effects"

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        # FULL whatever the store uses: see the module's docstring.
        super().__init__(path, synchronous="full", busy_timeout=busy_timeout)

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.executescript(_SCHEMA)

    async def get(self, effect_id: str) -> EffectRecord | None:
        check_id(effect_id)
        return await self._run(lambda conn: _load(conn, effect_id))

    async def claim(self, effect_id: str, *, holder: str, lease: float) -> Claim:
        check_claim(effect_id, holder, lease)

        def write(conn: sqlite3.Connection) -> Claim:
            now = time.time()
            before = _load(conn, effect_id)
            if before is None:
                token = _next_token(conn)
                conn.execute(
                    f"INSERT INTO effects ({_COLUMNS})"  # noqa: S608 - fixed columns
                    " VALUES (?, 'held', ?, ?, ?, 1, NULL, NULL, ?)",
                    (effect_id, token, holder, now + lease, now),
                )
                return Claimed(effect_id, token, _at(now + lease), 1)
            decision = decide(before, _at(now))
            if decision in ("done", "in_progress"):
                return answer(decision, before, before)
            conn.execute(
                "UPDATE effects SET state = 'held', token = ?, holder = ?, lease_until = ?,"
                " attempts = attempts + 1, updated_at = ? WHERE effect_id = ?",
                (_next_token(conn), holder, now + lease, now, effect_id),
            )
            after = _load(conn, effect_id)
            assert after is not None  # noqa: S101 - updated under this transaction's lock
            return answer(decision, before, after)

        return await self._run(write, write=True)

    async def complete(
        self,
        effect_id: str,
        token: int,
        outcome: Outcome,
        *,
        status: CompletedStatus = "succeeded",
    ) -> None:
        check_id(effect_id)
        doc = dump_outcome(outcome)

        def write(conn: sqlite3.Connection) -> None:
            if fence(effect_id, _load(conn, effect_id), token, "complete"):
                conn.execute(
                    "UPDATE effects SET state = ?, outcome = ?, lease_until = NULL,"
                    " updated_at = ? WHERE effect_id = ?",
                    (status, doc, time.time(), effect_id),
                )

        await self._run(write, write=True)

    async def release(self, effect_id: str, token: int, error: str) -> None:
        check_id(effect_id)
        error = clean_error(error)

        def write(conn: sqlite3.Connection) -> None:
            if fence(effect_id, _load(conn, effect_id), token, "release"):
                conn.execute(
                    "UPDATE effects SET state = 'released', lease_until = NULL, error = ?,"
                    " updated_at = ? WHERE effect_id = ?",
                    (error, time.time(), effect_id),
                )

        await self._run(write, write=True)

    async def extend(self, effect_id: str, token: int, lease: float) -> datetime:
        check_id(effect_id)
        check_lease(lease)

        def write(conn: sqlite3.Connection) -> datetime:
            fence(effect_id, _load(conn, effect_id), token, "extend")
            now = time.time()
            conn.execute(
                "UPDATE effects SET lease_until = ?, updated_at = ? WHERE effect_id = ?",
                (now + lease, now, effect_id),
            )
            return _at(now + lease)

        return await self._run(write, write=True)
