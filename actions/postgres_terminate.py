"""``postgres.terminate_idle`` (Database; mutating) on the application's database (connection,
errors and plans as :mod:`actions.postgres_app` says).

It terminates, with ``pg_terminate_backend``, the target database's sessions that are
``state = 'idle'`` (not active, not idle in a transaction) since longer than the inventory
entry's ``idle_after`` (``state_change``), oldest first, at most the entry's
``max_terminate``; only client backends (``backend_type = 'client backend'``), never a
superuser's session (``pg_roles.rolsuper``), never its own (``pg_backend_pid()``), never
another database's, and only sessions its role may signal (its own role's, or any with
``pg_signal_backend``): one it may not would fail the statement midway, after signalling
the rows before it; those are counted (``unsignallable``) and the notes say why. One
statement picks the candidates (a MATERIALIZED CTE, so the LIMIT bounds the terminations)
and signals them; the outcome then says which left ``pg_stat_activity`` within
``GONE_WAIT`` seconds and how many past the bound remain.

Params can only be more cautious than the inventory: ``idle_after`` below the entry's is
raised to it and ``max_terminate`` above the entry's lowered to it (the outcome's notes say
so). A session that turns active between the snapshot and the signal is still terminated:
PostgreSQL offers no atomic "terminate if still idle".

Idempotent by nature: a terminated backend is gone, and a second run finds only what is idle
past the bound by then. ``check`` (after a crash): when no session of the target database
is idle past the bound (of the kind this action would terminate), the outcome says so, and
that how many the interrupted run terminated is not known; otherwise None, and the action
runs again, with its own ``max_terminate`` (so a crash can let up to twice that many go).
A connection pool refills: sessions it opens anew are not idle past the bound yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from actions.app_common import entry_of
from actions.catalogue import Outcome
from actions.inventory import Inventory
from actions.inventory_services import DatabaseEntry
from actions.postgres_app import HIDDEN_NOTE, HIDDEN_SQL, connected, sql_request
from schemas.actions import ApiRequest, Target
from schemas.durations import Duration

GONE_WAIT: Final = 5.0
"""How long execute waits for the signalled backends to leave pg_stat_activity."""

_IDLE_PAST: Final = """\
  FROM pg_stat_activity a
  JOIN pg_roles r ON r.oid = a.usesysid
  WHERE a.datname = current_database()
    AND a.backend_type = 'client backend'
    AND a.state = 'idle'
    AND a.state_change < clock_timestamp() - make_interval(secs => $1)
    AND a.pid <> pg_backend_pid()
    AND NOT r.rolsuper"""
_MAY_SIGNAL: Final = (
    "(pg_has_role(a.usesysid, 'USAGE') OR pg_has_role('pg_signal_backend', 'USAGE'))"
)
_CANDIDATES: Final = f"""\
  SELECT a.pid, a.usename, a.application_name, host(a.client_addr) AS client_addr,
         a.backend_start, a.state_change
{_IDLE_PAST}
    AND {_MAY_SIGNAL}"""
TERMINATE_SQL: Final = f"""\
WITH candidates AS MATERIALIZED (
{_CANDIDATES}
  ORDER BY a.state_change
  LIMIT $2
)
SELECT pid, usename, application_name, client_addr, backend_start,
       extract(epoch FROM clock_timestamp() - state_change)::float8 AS idle_seconds,
       pg_terminate_backend(pid) AS signalled
FROM candidates
ORDER BY state_change"""  # noqa: S608 - composed of constants only
REMAINING_SQL: Final = f"SELECT count(*)::int FROM (\n{_CANDIDATES}\n) AS candidates"  # noqa: S608
UNSIGNALLABLE_SQL: Final = f"""\
SELECT count(*)::int
{_IDLE_PAST}
    AND NOT {_MAY_SIGNAL}"""
UNSIGNALLABLE_NOTE: Final = (
    "{n} sessions idle past the bound belong to roles this role may not signal: "
    "grant it pg_signal_backend"
)
STILL_THERE_SQL: Final = """\
SELECT a.pid
FROM pg_stat_activity a
JOIN unnest($1::int[], $2::timestamptz[]) AS t(pid, started)
  ON a.pid = t.pid AND a.backend_start = t.started"""


class TerminateParams(BaseModel):
    """Only more cautious than the inventory: ``idle_after`` below the entry's is raised to
    it, ``max_terminate`` above the entry's lowered to it (the outcome says so)."""

    model_config = ConfigDict(extra="forbid")
    idle_after: Duration | None = Field(None, description="default and floor: the inventory's")
    max_terminate: int | None = Field(None, ge=1, description="default and cap: the inventory's")


def bounds(entry: DatabaseEntry, params: TerminateParams) -> tuple[float, int, list[str]]:
    """(idle_after seconds, max_terminate, notes): the params within the entry's bounds."""
    floor = entry.idle_after.total_seconds()
    idle, cap, notes = floor, entry.max_terminate, []
    if params.idle_after is not None:
        asked = params.idle_after.total_seconds()
        if asked < floor:
            notes.append(f"idle_after {asked:g}s raised to the inventory's {floor:g}s")
        idle = max(asked, floor)
    if params.max_terminate is not None:
        if params.max_terminate > cap:
            notes.append(f"max_terminate {params.max_terminate} capped to the inventory's {cap}")
        cap = min(params.max_terminate, cap)
    return idle, cap, notes


class TerminateIdle:
    """plan, execute and check of postgres.terminate_idle (see the module doc)."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    def _bounds(self, target: Target, params: TerminateParams) -> tuple[float, int, list[str]]:
        return bounds(entry_of(self.inventory, target, "Database", DatabaseEntry), params)

    async def plan(self, target: Target, params: TerminateParams) -> tuple[ApiRequest, ...]:
        idle, cap, _ = self._bounds(target, params)
        return (sql_request(target, TERMINATE_SQL, idle, cap),)

    async def execute(self, target: Target, params: TerminateParams, token: int) -> Outcome:
        idle, cap, notes = self._bounds(target, params)
        async with connected(self.inventory, target) as conn:
            rows = await conn.fetch(TERMINATE_SQL, idle, cap)
            signalled = [r for r in rows if r["signalled"]]
            still = await self._wait_gone(conn, signalled)
            remaining = await conn.fetchval(REMAINING_SQL, idle)
            unsignallable = await conn.fetchval(UNSIGNALLABLE_SQL, idle)
            hidden = await conn.fetchval(HIDDEN_SQL)
        if unsignallable:
            notes.append(UNSIGNALLABLE_NOTE.format(n=unsignallable))
        if hidden:
            notes.append(
                HIDDEN_NOTE.format(n=hidden) + "; no idle session among them can be chosen"
            )
        return {
            "idle_after_seconds": idle,
            "max_terminate": cap,
            "terminated": [
                {
                    "pid": r["pid"],
                    "user": r["usename"],
                    "application_name": r["application_name"],
                    "client_addr": r["client_addr"],
                    "idle_seconds": round(r["idle_seconds"], 1),
                    "gone": r["pid"] not in still,
                }
                for r in signalled
            ],
            "count": len(signalled),
            "not_signalled": [r["pid"] for r in rows if not r["signalled"]],
            "limited": len(rows) >= cap,
            "remaining": remaining,
            "unsignallable": unsignallable,
            "hidden": hidden,
            "notes": notes,
            "request": sql_request(target, TERMINATE_SQL, idle, cap).model_dump(mode="json"),
        }

    @staticmethod
    async def _wait_gone(conn: asyncpg.Connection, rows: Sequence[Any]) -> set[int]:
        """The pids of ROWS still in pg_stat_activity after up to GONE_WAIT seconds."""
        pids = [r["pid"] for r in rows]
        starts = [r["backend_start"] for r in rows]
        deadline = time.monotonic() + GONE_WAIT
        still: set[int] = set(pids)
        while still:
            still = {r["pid"] for r in await conn.fetch(STILL_THERE_SQL, pids, starts)}
            if not still or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        return still

    async def check(self, target: Target, params: TerminateParams) -> Outcome | None:
        idle, cap, notes = self._bounds(target, params)
        async with connected(self.inventory, target) as conn:
            remaining = await conn.fetchval(REMAINING_SQL, idle)
        if remaining:
            return None
        return {
            "idle_after_seconds": idle,
            "max_terminate": cap,
            "remaining": 0,
            "count": None,
            "notes": [
                *notes,
                "found after an interrupted run: no idle session older than the bound "
                "remains; how many that run terminated is not known",
            ],
        }
