"""The application's PostgreSQL (an inventory ``Database``, never sevpipe's own store): the
connection every ``postgres.*`` action makes, its errors, and ``postgres.connections``.
``terminate_idle``: :mod:`actions.postgres_terminate`; ``slow_queries`` and
``blocking_locks``: :mod:`actions.postgres_queries`.

Each action opens one short-lived connection (asyncpg) with the DSN read from the entry's
``dsn_file`` at run time; connect timeout ``CONNECT_TIMEOUT``, every statement bounded by the
server's ``statement_timeout`` and the client's ``command_timeout``; the session is named
``sevpipe`` (``application_name``) in ``pg_stat_activity``. Plans are the exact SQL with its
parameters, one ``ApiRequest(method="SQL", path="databases/<name>", body={sql, params})``
per statement; plans read no secret and make no connection.

Errors: a connection that cannot be made or is lost, a timeout, and SQLSTATE classes 08
(connection), 40 (rollback), 53 (insufficient resources, e.g. too many connections), 57
(operator intervention, e.g. statement timeout, shutdown) and 55P03 (lock not available) are
:class:`DatabaseUnavailable` (``retriable``); anything else (authentication, privileges, a
missing database or secret file) is :class:`DatabaseError`: the action's failed outcome.

The role the DSN names needs ``pg_read_all_stats`` (or ``pg_monitor``) to see other roles'
sessions (without it their state is hidden, and the actions count them as ``hidden``) and
``pg_signal_backend`` to terminate them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from actions.app_common import AppActionError, entry_of, read_secret
from actions.catalogue import Outcome
from actions.inventory import Inventory
from actions.inventory_services import DatabaseEntry
from actions.kubernetes_logs import redact
from schemas.actions import ApiRequest, Target

CONNECT_TIMEOUT: Final = 10.0
STATEMENT_TIMEOUT_MS: Final = 30_000
COMMAND_TIMEOUT: Final = 35.0
APPLICATION_NAME: Final = "sevpipe"
QUERY_CHARS: Final = 500
_RETRIABLE_CLASSES: Final = ("08", "40", "53", "57")


class DatabaseError(AppActionError):
    """A PostgreSQL action's failed outcome: reported, not retried."""


class DatabaseUnavailable(DatabaseError):
    """No connection, a lost one, a timeout, too many connections: retried later."""

    retriable = True


def sql_request(target: Target, sql: str, *params: Any) -> ApiRequest:
    return ApiRequest(
        method="SQL", path=f"databases/{target.name}", body={"sql": sql, "params": list(params)}
    )


def mapped(exc: BaseException, what: str, *, connecting: bool = False) -> DatabaseError:
    """EXC as this module's error (see the module doc)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        text = f"{what}: {type(exc).__name__} ({state}): {exc}"
        if state[:2] in _RETRIABLE_CLASSES or state == "55P03":
            return DatabaseUnavailable(text)
        return DatabaseError(text)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return DatabaseError(f"{what}: TLS verification failed: {exc.verify_message}")
    if isinstance(exc, TimeoutError | OSError | asyncpg.exceptions.ConnectionDoesNotExistError):
        return DatabaseUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    if connecting:
        # A bad DSN's message may quote the DSN, credential and all: never repeat it.
        return DatabaseError(f"{what}: {type(exc).__name__} (the DSN is unusable)")
    return DatabaseError(f"{what}: {type(exc).__name__}: {exc}")


@asynccontextmanager
async def connected(inventory: Inventory, target: Target) -> AsyncIterator[asyncpg.Connection]:
    """One connection to the target's database for one action, closed after it."""
    try:
        entry = entry_of(inventory, target, "Database", DatabaseEntry)
        dsn = await read_secret(entry.dsn_file, "DSN")
    except AppActionError as exc:
        raise DatabaseError(str(exc)) from None
    where = f"database {target.name}"
    try:
        conn = await asyncpg.connect(
            dsn,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
            statement_cache_size=0,
            server_settings={
                "application_name": APPLICATION_NAME,
                "statement_timeout": str(STATEMENT_TIMEOUT_MS),
                "lock_timeout": "5000",
                "idle_in_transaction_session_timeout": str(STATEMENT_TIMEOUT_MS),
            },
        )
    except Exception as exc:  # noqa: BLE001 - every failure is mapped, none leaks the DSN
        raise mapped(exc, f"connect to {where}", connecting=True) from None
    try:
        yield conn
    except AppActionError:
        raise
    except Exception as exc:
        raise mapped(exc, where) from exc
    finally:
        try:
            await asyncio.wait_for(conn.close(), timeout=CONNECT_TIMEOUT)
        except Exception:  # noqa: BLE001 - a close that fails leaves nothing to do
            conn.terminate()


class TopParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top: int = Field(10, ge=1, le=100, description="how many of each ranking to show")


# postgres.connections ---------------------------------------------------------------------

LIMITS_SQL: Final = """\
SELECT current_database() AS database,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved,
       nullif(current_setting('reserved_connections', true), '')::int AS reserved"""
COUNTS_SQL: Final = """\
SELECT datname, usename, application_name, state, count(*)::int AS n
FROM pg_stat_activity
WHERE backend_type = 'client backend'
GROUP BY datname, usename, application_name, state"""
HIDDEN_SQL: Final = "SELECT count(*)::int FROM pg_stat_activity WHERE backend_type IS NULL"
OLDEST_IDLE_TX_SQL: Final = """\
SELECT pid, datname, usename, application_name, state,
       extract(epoch FROM clock_timestamp() - state_change)::float8 AS idle_seconds,
       extract(epoch FROM clock_timestamp() - xact_start)::float8 AS transaction_seconds,
       left(query, $1) AS last_query
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND state LIKE 'idle in transaction%'
  AND datname = current_database()
ORDER BY state_change
LIMIT 1"""
SCOPE: Final = (
    "counts, by_database, by_application, by_user: the whole server's client backends "
    "(max_connections is per server); this_database and oldest_idle_in_transaction: the "
    "target database"
)
HIDDEN_NOTE: Final = (
    "{n} rows of pg_stat_activity (other roles' sessions, server processes) are hidden from "
    "this role: grant it pg_read_all_stats (or pg_monitor) to see their state"
)


def _ranked(counts: Counter[str], top: int) -> list[dict[str, Any]]:
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"name": name, "connections": n} for name, n in ordered[:top]]


def connections_summary(
    limits: Any, rows: Sequence[Any], hidden: int, oldest: Any, top: int
) -> dict[str, Any]:
    """The outcome of postgres.connections from its queries' rows. Pure."""
    database = limits["database"]
    by_state: Counter[str] = Counter()
    here: Counter[str] = Counter()
    dbs: Counter[str] = Counter()
    apps: Counter[str] = Counter()
    users: Counter[str] = Counter()
    for row in rows:
        state, n = row["state"] or "unknown", row["n"]
        by_state[state] += n
        dbs[row["datname"] or "(none)"] += n
        if row["datname"] == database:
            here[state] += n
        apps[row["application_name"] or "(unnamed)"] += n
        users[row["usename"] or "(unknown)"] += n
    total, maximum = sum(by_state.values()), limits["max_connections"]
    reserved = (limits["superuser_reserved"] or 0) + (limits["reserved"] or 0)
    ordinary = maximum - reserved
    old = None
    if oldest is not None:
        old = {
            "pid": oldest["pid"],
            "database": oldest["datname"],
            "user": oldest["usename"],
            "application_name": oldest["application_name"],
            "state": oldest["state"],
            "idle_seconds": round(oldest["idle_seconds"], 1),
            "transaction_seconds": round(oldest["transaction_seconds"] or 0.0, 1),
            "last_query": redact(oldest["last_query"] or ""),
        }
    return {
        "scope": SCOPE,
        "database": database,
        "max_connections": maximum,
        "superuser_reserved_connections": limits["superuser_reserved"],
        "reserved_connections": limits["reserved"],
        "client_backends": total,
        "used_percent": round(100.0 * total / maximum, 1) if maximum else None,
        "free_for_ordinary_roles": max(0, ordinary - total),
        "by_state": dict(sorted(by_state.items())),
        "this_database": {
            "client_backends": sum(here.values()),
            "by_state": dict(sorted(here.items())),
        },
        "by_database": _ranked(dbs, top),
        "by_application": _ranked(apps, top),
        "by_user": _ranked(users, top),
        "oldest_idle_in_transaction": old,
        "hidden": hidden,
        "notes": [HIDDEN_NOTE.format(n=hidden)] if hidden else [],
    }


class Connections:
    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    async def plan(self, target: Target, params: TopParams) -> tuple[ApiRequest, ...]:
        return (
            sql_request(target, LIMITS_SQL),
            sql_request(target, COUNTS_SQL),
            sql_request(target, HIDDEN_SQL),
            sql_request(target, OLDEST_IDLE_TX_SQL, QUERY_CHARS),
        )

    async def execute(self, target: Target, params: TopParams, token: int) -> Outcome:
        async with connected(self.inventory, target) as conn:
            limits = await conn.fetchrow(LIMITS_SQL)
            rows = await conn.fetch(COUNTS_SQL)
            hidden = await conn.fetchval(HIDDEN_SQL)
            oldest = await conn.fetchrow(OLDEST_IDLE_TX_SQL, QUERY_CHARS)
        return connections_summary(limits, rows, hidden, oldest, params.top)
