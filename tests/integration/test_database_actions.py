"""The ``postgres.*`` actions against the real PostgreSQL of ``scripts/test-services``, on
databases and roles of this module's own (the application's database, never sevpipe's store).

Roles: ``app`` (the application's sessions, not a superuser), ``ops`` (what sevpipe connects
as: pg_signal_backend and pg_read_all_stats, not a superuser), ``blind`` (pg_signal_backend
only: other roles' sessions are hidden from it) and ``nosig`` (pg_read_all_stats only: it
sees other roles' sessions but may not terminate them). The test server trusts every local role, so
a DSN needs no password. ``main`` has pg_stat_statements created, ``other`` does not.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from services import Services, fresh_database, fresh_database_sync, unique_name

from actions.catalogue import Catalogue
from actions.databases import database_catalogue
from actions.inventory import Inventory
from actions.postgres_app import DatabaseError, DatabaseUnavailable
from runtime.effects import perform
from schemas.actions import Target
from store.effects_embedded import EmbeddedEffectsLedger

TARGET = Target(kind="Database", name="origin-db")
GONE = (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)


def as_role(dsn: str, role: str) -> str:
    parts = urlsplit(dsn)
    return parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}").geturl()


async def admin_sql(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


@dataclass(frozen=True)
class Pg:
    main: str  # superuser DSNs of the two databases
    other: str
    app: str
    ops: str
    blind: str
    nosig: str

    def dsn(self, role: str, db: str | None = None) -> str:
        return as_role(db or self.main, role)


@pytest.fixture(scope="module")
def pg(services: Services) -> Iterator[Pg]:
    tag = uuid.uuid4().hex[:10]
    app, ops, blind, nosig = f"app_{tag}", f"ops_{tag}", f"blind_{tag}", f"nosig_{tag}"
    asyncio.run(
        admin_sql(
            services.postgres_dsn,
            f"CREATE ROLE {app} LOGIN",
            f"CREATE ROLE {ops} LOGIN IN ROLE pg_signal_backend, pg_read_all_stats",
            f"CREATE ROLE {blind} LOGIN IN ROLE pg_signal_backend",
            f"CREATE ROLE {nosig} LOGIN IN ROLE pg_read_all_stats",
        )
    )
    try:
        with (
            fresh_database_sync(services, "dbactions") as main,
            fresh_database_sync(services, "dbactions_other") as other,
        ):
            asyncio.run(
                admin_sql(
                    main,
                    "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
                    "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)",
                    "INSERT INTO accounts VALUES (1, 100), (2, 200)",
                    f"GRANT SELECT, UPDATE ON accounts TO {app}",
                )
            )
            # scripts/test-services creates it in template1, so new databases have it.
            asyncio.run(admin_sql(other, "DROP EXTENSION IF EXISTS pg_stat_statements"))
            yield Pg(main, other, app, ops, blind, nosig)
    finally:
        drops = [f"DROP ROLE {role}" for role in (app, ops, blind, nosig)]
        asyncio.run(admin_sql(services.postgres_dsn, *drops))


def catalogue_for(tmp_path: Path, dsn: str, **entry: Any) -> Catalogue:
    secret = tmp_path / f"dsn-{uuid.uuid4().hex[:8]}"
    secret.write_text(dsn + "\n")
    inventory = Inventory.model_validate(
        {"databases": {"origin-db": {"dsn_file": str(secret), **entry}}}
    )
    return database_catalogue(inventory)


async def run(cat: Catalogue, action: str, **params: Any) -> dict[str, Any]:
    spec = cat.get(action)
    return dict(await spec.execute(TARGET, spec.params.model_validate(params), 1))


@asynccontextmanager
async def sessions(dsn: str, n: int, app: str = "") -> AsyncIterator[list[asyncpg.Connection]]:
    conns = [
        await asyncpg.connect(dsn, server_settings={"application_name": app} if app else None)
        for _ in range(n)
    ]
    try:
        yield conns
    finally:
        for conn in conns:
            conn.terminate()


async def present(dsn: str, pids: list[int]) -> set[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1)", pids)
    finally:
        await conn.close()
    return {r["pid"] for r in rows}


async def until_waiting(dsn: str, pid: int, what: str) -> None:
    """Until session PID is active and waiting on a lock (WHAT 'Lock') or sleeping."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(200):
            row = await conn.fetchrow(
                "SELECT state, wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
            )
            if row and row["state"] == "active" and row["wait_event_type"] == what:
                return
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise AssertionError(f"session {pid} never waited on {what}")


# -- postgres.terminate_idle ----------------------------------------------------------------


async def test_terminate_idle_ends_only_idle_client_sessions_of_ordinary_roles(
    pg: Pg, tmp_path: Path
) -> None:
    cat = catalogue_for(tmp_path, pg.dsn(pg.ops), idle_after="1s", max_terminate=10)
    app = unique_name("idle")
    async with (
        sessions(pg.dsn(pg.app), 2, app) as idle,
        sessions(pg.main, 1, app) as (superuser,),
        sessions(pg.dsn(pg.app, pg.other), 1, app) as (elsewhere,),
        sessions(pg.dsn(pg.app), 2, app) as (in_tx, active),
    ):
        await in_tx.execute("BEGIN; SELECT balance FROM accounts WHERE id = 1")
        await asyncio.sleep(1.3)  # every one of them idle past the bound (1 s)
        sleeping = asyncio.create_task(active.fetchval("SELECT pg_sleep(30)"))
        await until_waiting(pg.main, active.get_server_pid(), "Timeout")
        kept = [c.get_server_pid() for c in (superuser, elsewhere, in_tx, active)]
        idle_pids = [c.get_server_pid() for c in idle]

        spec = cat.get("postgres.terminate_idle")
        params = spec.params.model_validate({})
        [planned] = await spec.plan(TARGET, params)
        result = await run(cat, "postgres.terminate_idle")

        assert {t["pid"] for t in result["terminated"]} == set(idle_pids)
        assert all(t["gone"] and t["application_name"] == app for t in result["terminated"])
        assert {t["user"] for t in result["terminated"]} == {pg.app}
        assert result["count"] == 2
        assert result["remaining"] == 0
        assert result["hidden"] == 0
        assert result["request"] == planned.model_dump(mode="json")
        assert planned.method == "SQL"
        assert planned.body["params"] == [1.0, 10]
        assert "pg_terminate_backend(pid)" in planned.body["sql"]
        assert await present(pg.main, idle_pids + kept) == set(kept)
        for conn in idle:
            with pytest.raises(GONE):
                await conn.fetchval("SELECT 1")
        assert await superuser.fetchval("SELECT 1") == 1
        assert await elsewhere.fetchval("SELECT 1") == 1
        assert await in_tx.fetchval("SELECT balance FROM accounts WHERE id = 1") == 100
        await admin_sql(pg.main, f"SELECT pg_cancel_backend({active.get_server_pid()})")
        with pytest.raises(asyncpg.QueryCanceledError):
            await sleeping
        assert await active.fetchval("SELECT 1") == 1


async def test_terminate_idle_takes_the_oldest_first_at_most_max_terminate(
    pg: Pg, tmp_path: Path
) -> None:
    cat = catalogue_for(tmp_path, pg.dsn(pg.ops), idle_after="1s", max_terminate=2)
    spec = cat.get("postgres.terminate_idle")
    params = spec.params.model_validate({"max_terminate": 5})
    async with sessions(pg.dsn(pg.app), 3) as conns:
        for conn in conns:  # idle since one after the other
            await conn.fetchval("SELECT 1")
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.1)
        pids = [c.get_server_pid() for c in conns]
        assert await spec.check(TARGET, params) is None  # three past the bound remain

        first = dict(await spec.execute(TARGET, params, 1))
        assert [t["pid"] for t in first["terminated"]] == pids[:2]
        assert first["max_terminate"] == 2
        assert first["notes"] == ["max_terminate 5 capped to the inventory's 2"]
        assert first["limited"] is True
        assert first["remaining"] == 1
        assert await spec.check(TARGET, params) is None

        second = dict(await spec.execute(TARGET, params, 2))
        assert [t["pid"] for t in second["terminated"]] == pids[2:]
        assert second["remaining"] == 0
        checked = await spec.check(TARGET, params)
        assert checked is not None
        assert checked["remaining"] == 0
        assert checked["count"] is None  # what the interrupted run did is not known
        assert await present(pg.main, pids) == set()


async def test_terminate_idle_params_are_only_more_cautious_than_the_inventory(
    pg: Pg, tmp_path: Path
) -> None:
    cat = catalogue_for(tmp_path, pg.dsn(pg.ops), idle_after="1s", max_terminate=10)
    spec = cat.get("postgres.terminate_idle")
    async with sessions(pg.dsn(pg.app), 1) as (conn,):
        await asyncio.sleep(1.3)
        patient = spec.params.model_validate({"idle_after": "1h"})
        [planned] = await spec.plan(TARGET, patient)
        assert planned.body["params"] == [3600.0, 10]
        result = await run(cat, "postgres.terminate_idle", idle_after="1h")
        assert result["terminated"] == []
        assert await conn.fetchval("SELECT 1") == 1

        eager = spec.params.model_validate({"idle_after": "0s"})
        [planned] = await spec.plan(TARGET, eager)
        assert planned.body["params"] == [1.0, 10]
        await asyncio.sleep(1.3)
        result = await run(cat, "postgres.terminate_idle", idle_after="0s")
        assert result["notes"] == ["idle_after 0s raised to the inventory's 1s"]
        assert [t["pid"] for t in result["terminated"]] == [conn.get_server_pid()]


async def test_terminate_idle_without_pg_read_all_stats_sees_and_ends_nothing(
    pg: Pg, tmp_path: Path
) -> None:
    cat = catalogue_for(tmp_path, pg.dsn(pg.blind), idle_after="1s")
    async with sessions(pg.dsn(pg.app), 2) as conns:
        await asyncio.sleep(1.3)
        result = await run(cat, "postgres.terminate_idle")
        assert result["terminated"] == []
        assert result["hidden"] >= 2
        assert any("pg_read_all_stats" in note for note in result["notes"])
        for conn in conns:
            assert await conn.fetchval("SELECT 1") == 1


async def test_terminate_idle_skips_and_counts_sessions_it_may_not_signal(
    pg: Pg, tmp_path: Path
) -> None:
    cat = catalogue_for(tmp_path, pg.dsn(pg.nosig), idle_after="1s")
    async with (
        sessions(pg.dsn(pg.app), 2) as conns,
        sessions(pg.dsn(pg.nosig), 1) as (own,),
    ):
        await asyncio.sleep(1.3)
        result = await run(cat, "postgres.terminate_idle")
        assert [t["pid"] for t in result["terminated"]] == [own.get_server_pid()]
        assert result["unsignallable"] >= 2
        assert any("pg_signal_backend" in note for note in result["notes"])
        for conn in conns:
            assert await conn.fetchval("SELECT 1") == 1


async def test_terminate_idle_after_a_crash_is_found_done_by_its_check(
    pg: Pg, tmp_path: Path
) -> None:
    cat = catalogue_for(tmp_path, pg.dsn(pg.ops), idle_after="1s")
    spec = cat.get("postgres.terminate_idle")
    params = spec.params.model_validate({})
    async with (
        EmbeddedEffectsLedger(tmp_path / "effects.db") as ledger,
        sessions(pg.dsn(pg.app), 2) as conns,
    ):
        await asyncio.sleep(1.3)
        effect = unique_name("terminate")
        # A holder claims, terminates, and dies before recording the outcome.
        await ledger.claim(effect, holder="dead", lease=0.2)
        await spec.execute(TARGET, params, 1)
        await asyncio.sleep(0.3)
        late = await asyncpg.connect(pg.dsn(pg.app))  # idle, but not past the bound yet
        try:
            done = await perform(
                ledger,
                effect,
                holder="next",
                lease=60,
                do=lambda token: spec.execute(TARGET, params, token),
                check=lambda: spec.check(TARGET, params),
            )
            assert done.source == "checked"
            assert done.outcome["remaining"] == 0
            assert await present(pg.main, [c.get_server_pid() for c in conns]) == set()
            assert await late.fetchval("SELECT 1") == 1
        finally:
            await late.close()


# -- postgres.connections -------------------------------------------------------------------


async def test_connections_counts_states_against_max_connections(
    pg: Pg, services: Services, tmp_path: Path
) -> None:
    app = unique_name("checkout")
    async with fresh_database(services, "dbactions_conns") as db:
        cat = catalogue_for(tmp_path, as_role(db, pg.ops))
        async with (
            sessions(pg.dsn(pg.app, pg.other), 1, app) as (elsewhere,),
            sessions(as_role(db, pg.app), 4, app) as conns,
            sessions(as_role(db, pg.app), 1) as (unnamed,),
        ):
            await elsewhere.execute("BEGIN")  # idle in a transaction for longer, elsewhere
            await asyncio.sleep(0.1)
            await conns[0].execute("BEGIN")
            await conns[0].fetchval("SELECT 42")
            in_tx = conns[0].get_server_pid()
            await asyncio.sleep(0.2)
            result = await run(cat, "postgres.connections", top=100)
            admin = await asyncpg.connect(db)
            try:
                maximum = int(await admin.fetchval("SHOW max_connections"))
                reserved = int(await admin.fetchval("SHOW superuser_reserved_connections"))
            finally:
                await admin.close()
        assert unnamed is not None
    assert result["database"] == urlsplit(db).path.lstrip("/")
    assert result["max_connections"] == maximum
    assert result["superuser_reserved_connections"] == reserved
    assert result["reserved_connections"] is None  # PostgreSQL 16+ only
    # Here: 4 + 1 of the application, and the action's own (active).
    assert result["this_database"] == {
        "client_backends": 6,
        "by_state": {"active": 1, "idle": 4, "idle in transaction": 1},
    }
    assert {"name": app, "connections": 5} in result["by_application"]  # server-wide
    assert {"name": result["database"], "connections": 6} in result["by_database"]
    assert any(u["name"] == pg.app and u["connections"] >= 5 for u in result["by_user"])
    assert result["client_backends"] >= 6
    assert result["used_percent"] == round(100 * result["client_backends"] / maximum, 1)
    assert result["free_for_ordinary_roles"] == maximum - reserved - result["client_backends"]
    oldest = result["oldest_idle_in_transaction"]
    assert oldest["pid"] == in_tx
    assert oldest["application_name"] == app
    assert oldest["last_query"] == "SELECT 42"
    assert oldest["transaction_seconds"] >= oldest["idle_seconds"] >= 0.1
    assert result["hidden"] == 0


async def test_connections_says_what_a_role_without_stats_cannot_see(
    pg: Pg, tmp_path: Path
) -> None:
    cat = catalogue_for(tmp_path, pg.dsn(pg.blind))
    async with sessions(pg.dsn(pg.app), 2):
        result = await run(cat, "postgres.connections")
    assert result["hidden"] >= 2
    assert "pg_read_all_stats" in result["notes"][0]


# -- postgres.slow_queries ------------------------------------------------------------------


async def test_slow_queries_ranks_this_databases_statements(pg: Pg, tmp_path: Path) -> None:
    admin = await asyncpg.connect(pg.main)
    try:
        preload = await admin.fetchval("SHOW shared_preload_libraries")
    finally:
        await admin.close()
    assert "pg_stat_statements" in preload, (
        "scripts/test-services starts PostgreSQL with shared_preload_libraries = "
        f"pg_stat_statements; this server has {preload!r}"
    )
    probe = f"probe_{uuid.uuid4().hex[:10]}"
    async with (
        sessions(pg.dsn(pg.app), 1) as (conn,),
        sessions(pg.dsn(pg.app, pg.other), 1) as (elsewhere,),
    ):
        for _ in range(5):
            await conn.fetchval(f"SELECT pg_sleep(0.02) AS {probe}")
        for _ in range(2):
            await elsewhere.fetchval(f"SELECT pg_sleep(0.02) AS {probe}")
    cat = catalogue_for(tmp_path, pg.dsn(pg.ops))
    result = await run(cat, "postgres.slow_queries", top=100, query_chars=60)
    assert result["available"] is True
    assert result["order"] == "mean_exec_time"
    mine = [s for s in result["statements"] if probe in s["query"]]
    assert len(mine) == 1, result["statements"]  # the other database's are not here
    [stmt] = mine
    assert (stmt["calls"], stmt["rows"], stmt["user"]) == (5, 5, pg.app)
    assert stmt["mean_exec_time_ms"] >= 20
    assert stmt["total_exec_time_ms"] >= 100
    assert len(stmt["query"]) <= 60
    means = [s["mean_exec_time_ms"] for s in result["statements"]]
    assert means == sorted(means, reverse=True)

    by_total = await run(cat, "postgres.slow_queries", order="total", top=100)
    totals = [s["total_exec_time_ms"] for s in by_total["statements"]]
    assert totals == sorted(totals, reverse=True)
    assert by_total["order"] == "total_exec_time"


async def test_slow_queries_without_the_extension_says_so_and_succeeds(
    pg: Pg, tmp_path: Path
) -> None:
    other = urlsplit(pg.other).path.lstrip("/")
    result = await run(catalogue_for(tmp_path, pg.dsn(pg.ops, pg.other)), "postgres.slow_queries")
    assert result["available"] is False
    assert f"not created in database {other}" in result["why"]
    assert result["statements"] == []
    assert result["shared_preload_libraries"] is None  # ops may not read the setting
    as_superuser = await run(catalogue_for(tmp_path, pg.other), "postgres.slow_queries")
    assert as_superuser["shared_preload_libraries"] is True


# -- postgres.blocking_locks ----------------------------------------------------------------


async def test_blocking_locks_finds_a_chain_and_its_root(pg: Pg, tmp_path: Path) -> None:
    cat = catalogue_for(tmp_path, pg.dsn(pg.ops))
    assert (await run(cat, "postgres.blocking_locks"))["blocked"] == []
    async with sessions(pg.dsn(pg.app), 3, unique_name("locks")) as (root, middle, last):
        root_pid, middle_pid, last_pid = (c.get_server_pid() for c in (root, middle, last))
        await root.execute("BEGIN")
        await root.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 2")
        await middle.execute("BEGIN")
        await middle.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        waits = [
            asyncio.create_task(
                middle.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 2")
            )
        ]
        await until_waiting(pg.main, middle_pid, "Lock")
        await asyncio.sleep(0.3)
        waits.append(
            asyncio.create_task(last.execute("UPDATE accounts SET balance = 0 WHERE id = 1"))
        )
        await until_waiting(pg.main, last_pid, "Lock")
        result = await run(cat, "postgres.blocking_locks")
        await root.execute("ROLLBACK")
        await waits[0]
        await middle.execute("ROLLBACK")
        await waits[1]
    first, second = result["blocked"]  # the longest waiting first
    assert (first["pid"], first["blocked_by"]) == (middle_pid, [root_pid])
    assert (second["pid"], second["blocked_by"]) == (last_pid, [middle_pid])
    assert first["wait_event_type"] == "Lock"
    assert first["query"] == "UPDATE accounts SET balance = balance - 1 WHERE id = 2"
    assert first["waiting_seconds"] >= 0.3 > second["waiting_seconds"]
    blockers = {b["pid"]: b for b in result["blockers"]}
    assert set(blockers) == {root_pid, middle_pid}
    assert blockers[root_pid]["state"] == "idle in transaction"
    assert blockers[root_pid]["query"] == "UPDATE accounts SET balance = balance + 1 WHERE id = 2"
    assert blockers[root_pid]["root"] is True
    assert blockers[middle_pid]["root"] is False
    assert blockers[middle_pid]["state"] == "active"
    assert blockers[root_pid]["transaction_seconds"] >= first["waiting_seconds"]
    assert result["roots"] == [root_pid]


# -- failures -------------------------------------------------------------------------------


async def test_failures_say_whether_to_retry_and_never_show_the_dsn(pg: Pg, tmp_path: Path) -> None:
    missing = Inventory.model_validate(
        {"databases": {"origin-db": {"dsn_file": str(tmp_path / "absent")}}}
    )
    with pytest.raises(DatabaseError) as exc:
        await run(database_catalogue(missing), "postgres.connections")
    assert not exc.value.retriable

    nobody = as_role(pg.main, f"nobody_{uuid.uuid4().hex[:8]}")
    with pytest.raises(DatabaseError) as exc:
        await run(catalogue_for(tmp_path, nobody), "postgres.connections")
    assert not exc.value.retriable  # authentication: a person must fix it

    closed = "postgresql://sevpipe:hunter2-secret@127.0.0.1:1/app"
    with pytest.raises(DatabaseUnavailable) as down:
        await run(catalogue_for(tmp_path, closed), "postgres.connections")
    assert down.value.retriable
    assert "hunter2" not in str(down.value)

    garbled = "postgresql://sevpipe:hunter2-secret@127.0.0.1:notaport/app"
    with pytest.raises(DatabaseError) as bad:
        await run(catalogue_for(tmp_path, garbled), "postgres.connections")
    assert "hunter2" not in str(bad.value)
    assert not bad.value.retriable
