"""The production effects ledger: PostgreSQL through an asyncpg pool.

Leases run on the server's clock (``clock_timestamp()``), the one clock every replica
shares. A claim is one short transaction: insert the effect, or lock its row and decide
(``store.effects.decide``, as the embedded ledger does). ``complete``, ``release`` and
``extend`` are one conditional UPDATE each; only when it matches nothing is the row read to
tell a repeated call (no-op) from a stale token.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
import orjson

from store.base import StoreConflict
from store.effects import (
    Claim,
    Claimed,
    CompletedStatus,
    EffectRecord,
    Operation,
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
from store.pg_pool import PgPool

_COLUMNS = "effect_id, state, token, holder, lease_until, attempts, outcome, error, updated_at"
_LEASE = "clock_timestamp() + make_interval(secs => $3::float8)"

_INSERT = f"""
INSERT INTO effects ({_COLUMNS})
VALUES ($1, 'held', nextval('effect_tokens'), $2, {_LEASE}, 1, NULL, NULL, clock_timestamp())
ON CONFLICT (effect_id) DO NOTHING
RETURNING token, lease_until
"""  # noqa: S608 - fixed fragments, values are parameters
# ``now`` is read with the row. When the lock had to be waited for, it may be a little
# early, which can only make a lease look live longer: never a wrong grant.
_LOCK = (
    f"SELECT {_COLUMNS}, clock_timestamp() AS now"  # noqa: S608 - fixed columns
    " FROM effects WHERE effect_id = $1 FOR UPDATE"
)
_TAKE = f"""
UPDATE effects SET state = 'held', token = nextval('effect_tokens'), holder = $2,
    lease_until = {_LEASE}, attempts = attempts + 1, updated_at = clock_timestamp()
WHERE effect_id = $1
RETURNING {_COLUMNS}
"""  # noqa: S608
_GET = f"SELECT {_COLUMNS} FROM effects WHERE effect_id = $1"  # noqa: S608
_COMPLETE = """
UPDATE effects SET state = $3, outcome = $4::json, lease_until = NULL,
    updated_at = clock_timestamp()
WHERE effect_id = $1 AND token = $2 AND state = 'held'
RETURNING true
"""
_RELEASE = """
UPDATE effects SET state = 'released', lease_until = NULL, error = $3,
    updated_at = clock_timestamp()
WHERE effect_id = $1 AND token = $2 AND state = 'held'
RETURNING true
"""
_EXTEND = """
UPDATE effects SET lease_until = clock_timestamp() + make_interval(secs => $3::float8),
    updated_at = clock_timestamp()
WHERE effect_id = $1 AND token = $2 AND state = 'held'
RETURNING lease_until
"""


def _record(row: asyncpg.Record) -> EffectRecord:
    outcome = row["outcome"]
    return EffectRecord(
        effect_id=row["effect_id"],
        state=row["state"],
        token=row["token"],
        holder=row["holder"],
        lease_until=row["lease_until"],
        attempts=row["attempts"],
        outcome=orjson.loads(outcome) if outcome is not None else None,
        error=row["error"],
        updated_at=row["updated_at"],
    )


class PostgresEffectsLedger(PgPool):
    NAME = "effects ledger"

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 5,  # smaller than the store's 10: what this __init__ is here for
        command_timeout: float = 5.0,
        migration_timeout: float = 300.0,
    ) -> None:
        super().__init__(
            dsn,
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            migration_timeout=migration_timeout,
        )

    async def get(self, effect_id: str) -> EffectRecord | None:
        check_id(effect_id)
        async with self._connection() as conn:
            row = await conn.fetchrow(_GET, effect_id)
        return _record(row) if row is not None else None

    async def claim(self, effect_id: str, *, holder: str, lease: float) -> Claim:
        check_claim(effect_id, holder, lease)
        async with self._connection() as conn, conn.transaction():
            # Insert first: a first claim is the common case, and one statement.
            row = await conn.fetchrow(_INSERT, effect_id, holder, float(lease))
            if row is not None:
                return Claimed(effect_id, row["token"], row["lease_until"], 1)
            # Someone claimed it before (or just now: the insert waited for their commit).
            row = await conn.fetchrow(_LOCK, effect_id)
            before = _record(row)
            decision = decide(before, row["now"])
            if decision in ("done", "in_progress"):
                return answer(decision, before, before)
            after = _record(await conn.fetchrow(_TAKE, effect_id, holder, float(lease)))
            return answer(decision, before, after)

    async def complete(
        self,
        effect_id: str,
        token: int,
        outcome: Outcome,
        *,
        status: CompletedStatus = "succeeded",
    ) -> None:
        check_id(effect_id)
        doc = dump_outcome(outcome).decode()
        async with self._connection() as conn:
            if await conn.fetchval(_COMPLETE, effect_id, token, status, doc) is None:
                await self._refused(conn, effect_id, token, "complete")

    async def release(self, effect_id: str, token: int, error: str) -> None:
        check_id(effect_id)
        async with self._connection() as conn:
            if await conn.fetchval(_RELEASE, effect_id, token, clean_error(error)) is None:
                await self._refused(conn, effect_id, token, "release")

    async def extend(self, effect_id: str, token: int, lease: float) -> datetime:
        check_id(effect_id)
        check_lease(lease)
        async with self._connection() as conn:
            until: datetime | None = await conn.fetchval(_EXTEND, effect_id, token, float(lease))
            if until is None:
                await self._refused(conn, effect_id, token, "extend")
                raise AssertionError("extend is never a no-op")  # pragma: no cover
        return until

    @staticmethod
    async def _refused(
        conn: asyncpg.Connection, effect_id: str, token: int, operation: Operation
    ) -> None:
        """After a conditional UPDATE matched nothing: return if it was done already under
        this token (a retried call), else raise ``StaleToken``."""
        row = await conn.fetchrow(_GET, effect_id)
        if fence(effect_id, _record(row) if row else None, token, operation):
            # Held under this very token, yet the UPDATE missed it: only a concurrent change
            # by the same holder can do that. Nothing was written; let it decide again.
            raise StoreConflict(f"effect {effect_id} changed during {operation}")
