"""Two read-only ``postgres.*`` actions on the application's database (connections, errors and
plans as :mod:`actions.postgres_app` says):

- ``postgres.slow_queries``: the top statements of ``pg_stat_statements`` in the target
  database, by ``mean_exec_time`` or ``total_exec_time`` (PostgreSQL 13+ names; extension
  1.8+), query text normalised by the extension, cut to ``query_chars`` and redacted. When
  the extension cannot answer the outcome says ``available: false`` and why (not created in
  this database; not in ``shared_preload_libraries``; too old): a success, not a failure.
  The first statement points ``search_path`` at the extension's schema, so the second is the
  same SQL wherever the extension was created.
- ``postgres.blocking_locks``: the target database's sessions waiting on a lock, each with
  ``pg_blocking_pids(pid)``, how long it has waited (``pg_locks.waitstart`` on 14+, else
  since its statement began), and the blockers' sessions (their last query, how long their
  transaction has run, and ``root``: a blocker that waits on nobody).
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from actions.catalogue import Outcome
from actions.inventory import Inventory
from actions.kubernetes_logs import redact
from actions.postgres_app import QUERY_CHARS, connected, sql_request
from schemas.actions import ApiRequest, Target

EXTENSION: Final = "pg_stat_statements"
MIN_VERSION: Final = (1, 8)
"""pg_stat_statements 1.8 (PostgreSQL 13) renamed total_time/mean_time to *_exec_time."""

EXTENSION_SQL: Final = """\
SELECT e.extversion, n.nspname,
       set_config('search_path', quote_ident(n.nspname), false) AS search_path
FROM pg_extension e
JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'pg_stat_statements'"""
PRELOAD_SQL: Final = """\
SELECT current_database() AS database,
       (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries') AS preload"""
_STATEMENTS: Final = """\
SELECT s.queryid, r.rolname AS username, s.calls, s.rows,
       s.total_exec_time, s.mean_exec_time, s.max_exec_time,
       left(s.query, $2) AS query
FROM pg_stat_statements s
LEFT JOIN pg_roles r ON r.oid = s.userid
WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY s.{order} DESC
LIMIT $1"""
STATEMENTS_SQL: Final = {
    "mean": _STATEMENTS.format(order="mean_exec_time"),
    "total": _STATEMENTS.format(order="total_exec_time"),
}


class SlowQueryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top: int = Field(10, ge=1, le=100)
    order: Literal["mean", "total"] = Field("mean", description="by mean or total exec time")
    query_chars: int = Field(300, ge=20, le=QUERY_CHARS)


def preloaded(setting: str | None) -> bool | None:
    """Whether shared_preload_libraries names pg_stat_statements; None: hidden from us."""
    if setting is None:
        return None
    names = (part.strip().strip('"').rsplit("/", 1)[-1] for part in setting.split(","))
    return EXTENSION in {n.removesuffix(".so").lower() for n in names}


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return (0,)


def unavailable(database: str, why: str, preload: bool | None) -> dict[str, Any]:
    return {
        "available": False,
        "why": why,
        "database": database,
        "shared_preload_libraries": preload,
        "statements": [],
    }


NOT_CREATED: Final = (
    "pg_stat_statements is not created in database {db} (CREATE EXTENSION pg_stat_statements)"
)
NOT_PRELOADED: Final = (
    "pg_stat_statements is not in shared_preload_libraries: add it and restart the server"
)


class SlowQueries:
    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    async def plan(self, target: Target, params: SlowQueryParams) -> tuple[ApiRequest, ...]:
        return (
            sql_request(target, PRELOAD_SQL),
            sql_request(target, EXTENSION_SQL),
            sql_request(target, STATEMENTS_SQL[params.order], params.top, params.query_chars),
        )

    async def execute(self, target: Target, params: SlowQueryParams, token: int) -> Outcome:
        async with connected(self.inventory, target) as conn:
            first = await conn.fetchrow(PRELOAD_SQL)
            database, preload = first["database"], preloaded(first["preload"])
            ext = await conn.fetchrow(EXTENSION_SQL)
            if ext is None:
                why = NOT_CREATED.format(db=database)
                if preload is False:
                    why += "; and " + NOT_PRELOADED
                return unavailable(database, why, preload)
            if _version(ext["extversion"]) < MIN_VERSION:
                why = (
                    f"pg_stat_statements {ext['extversion']} predates the PostgreSQL 13 column "
                    "names: ALTER EXTENSION pg_stat_statements UPDATE"
                )
                return unavailable(database, why, preload)
            sql = STATEMENTS_SQL[params.order]
            try:
                rows = await conn.fetch(sql, params.top, params.query_chars)
            except asyncpg.ObjectNotInPrerequisiteStateError:
                # "pg_stat_statements must be loaded via shared_preload_libraries"
                return unavailable(database, NOT_PRELOADED, False)
        total = sum(r["total_exec_time"] for r in rows) or None
        return {
            "available": True,
            "database": database,
            "extension_version": ext["extversion"],
            "schema": ext["nspname"],
            "shared_preload_libraries": True if preload is None else preload,
            "order": f"{params.order}_exec_time",
            "statements": [
                {
                    "queryid": r["queryid"],
                    "user": r["username"],
                    "calls": r["calls"],
                    "rows": r["rows"],
                    "total_exec_time_ms": round(r["total_exec_time"], 3),
                    "mean_exec_time_ms": round(r["mean_exec_time"], 3),
                    "max_exec_time_ms": round(r["max_exec_time"], 3),
                    "share_of_listed_percent": (
                        round(100.0 * r["total_exec_time"] / total, 1) if total else None
                    ),
                    "query": redact(r["query"] or ""),
                }
                for r in rows
            ],
        }


BLOCKING_SQL: Final = """\
WITH blocked AS (
  SELECT a.pid, a.usename, a.application_name, a.state, a.wait_event_type, a.wait_event,
         left(a.query, $2) AS query,
         pg_blocking_pids(a.pid) AS blocked_by,
         coalesce((SELECT min((to_jsonb(l) ->> 'waitstart')::timestamptz)
                   FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted),
                  a.query_start) AS waiting_since
  FROM pg_stat_activity a
  WHERE a.datname = current_database()
    AND cardinality(pg_blocking_pids(a.pid)) > 0
  ORDER BY waiting_since
  LIMIT $1
), blockers AS (
  SELECT DISTINCT unnest(blocked_by) AS pid FROM blocked
)
SELECT current_database() AS database,
  (SELECT coalesce(jsonb_agg(jsonb_build_object(
     'pid', b.pid, 'user', b.usename, 'application_name', b.application_name,
     'state', b.state, 'wait_event_type', b.wait_event_type, 'wait_event', b.wait_event,
     'query', b.query, 'blocked_by', to_jsonb(b.blocked_by),
     'waiting_seconds',
       round(extract(epoch FROM clock_timestamp() - b.waiting_since)::numeric, 1))
     ORDER BY b.waiting_since), '[]'::jsonb) FROM blocked b) AS blocked,
  (SELECT coalesce(jsonb_agg(jsonb_build_object(
     'pid', k.pid, 'user', a.usename, 'application_name', a.application_name,
     'database', a.datname, 'state', a.state, 'query', left(a.query, $2),
     'transaction_seconds',
       round(extract(epoch FROM clock_timestamp() - a.xact_start)::numeric, 1),
     'state_seconds',
       round(extract(epoch FROM clock_timestamp() - a.state_change)::numeric, 1),
     'root', cardinality(pg_blocking_pids(k.pid)) = 0)
     ORDER BY k.pid), '[]'::jsonb)
   FROM blockers k LEFT JOIN pg_stat_activity a ON a.pid = k.pid) AS blockers"""


class LockParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top: int = Field(50, ge=1, le=500, description="blocked sessions shown, longest first")
    query_chars: int = Field(300, ge=20, le=QUERY_CHARS)


def _redacted(sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**s, "query": redact(s["query"] or "") if s.get("query") else None} for s in sessions]


class BlockingLocks:
    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    async def plan(self, target: Target, params: LockParams) -> tuple[ApiRequest, ...]:
        return (sql_request(target, BLOCKING_SQL, params.top, params.query_chars),)

    async def execute(self, target: Target, params: LockParams, token: int) -> Outcome:
        async with connected(self.inventory, target) as conn:
            row = await conn.fetchrow(BLOCKING_SQL, params.top, params.query_chars)
        blocked, blockers = json.loads(row["blocked"]), json.loads(row["blockers"])
        return {
            "database": row["database"],
            "blocked": _redacted(blocked),
            "blockers": _redacted(blockers),
            "roots": [b["pid"] for b in blockers if b["root"]],
            "limited": len(blocked) >= params.top,
        }
