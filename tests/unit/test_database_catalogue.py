"""The ``postgres.*`` and ``redis.*`` actions without a server: what is registered and how
risky, that a playbook may not make ``redis.flushdb`` automatic, that plans read no secret,
the inventory's bounds on terminate_idle, and the pure summaries."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from actions.app_common import AppActionError
from actions.databases import database_catalogue
from actions.inventory import Inventory
from actions.inventory_services import DatabaseEntry, RedisEntry
from actions.playbooks import PlaybookError, load_playbooks
from actions.postgres_app import (
    DatabaseError,
    DatabaseUnavailable,
    connections_summary,
    mapped,
)
from actions.postgres_queries import preloaded
from actions.postgres_terminate import TERMINATE_SQL, TerminateParams, bounds
from actions.redis_app import RedisActionError, histogram, info_summary, shares
from schemas.actions import Target

DB = Target(kind="Database", name="origin-db")
CACHE = Target(kind="Redis", name="origin-cache")
INVENTORY = Inventory.model_validate(
    {
        "databases": {
            "origin-db": {"dsn_file": "/nonexistent/dsn", "idle_after": "5m", "max_terminate": 20}
        },
        "redis": {"origin-cache": {"url_file": "/nonexistent/url", "patterns": ["a:*", "b:*"]}},
    }
)
EXPECTED = {
    "postgres.connections": ("read_only", "Database"),
    "postgres.terminate_idle": ("mutating", "Database"),
    "postgres.slow_queries": ("read_only", "Database"),
    "postgres.blocking_locks": ("read_only", "Database"),
    "redis.info": ("read_only", "Redis"),
    "redis.ttl_sample": ("read_only", "Redis"),
    "redis.flushdb": ("destructive", "Redis"),
}


def test_the_catalogue_registers_each_action_with_its_risk_and_kind() -> None:
    cat = database_catalogue(INVENTORY)
    assert {n: (s.risk, s.target_kind) for n, s in cat.actions.items()} == EXPECTED


def playbook(tmp_path: Path, mode: str, kind: str = "Redis") -> Path:
    path = tmp_path / "playbooks.yaml"
    path.write_text(
        "playbooks:\n"
        "  - name: cache\n"
        "    match: {min_severity: SEV-1}\n"
        "    steps:\n"
        "      - id: flush\n"
        "        action: redis.flushdb\n"
        f"        target: {{kind: {kind}, name: origin-cache}}\n"
        f"        mode: {mode}\n"
    )
    return path


def test_a_playbook_may_not_make_flushdb_automatic(tmp_path: Path) -> None:
    cat = database_catalogue(INVENTORY)
    with pytest.raises(PlaybookError) as exc:
        load_playbooks(playbook(tmp_path, "auto"), cat)
    assert "redis.flushdb is destructive: approve or never" in str(exc.value)
    assert ":8" in str(exc.value)  # the line of `mode: auto`
    for mode in ("approve", "never"):
        [book] = load_playbooks(playbook(tmp_path, mode), cat).playbooks
        assert book.steps[0].mode == mode
    with pytest.raises(PlaybookError, match="acts on a Redis, not a Database"):
        load_playbooks(playbook(tmp_path, "approve", "Database"), cat)


async def test_plans_read_no_secret_and_name_the_bounded_params() -> None:
    cat = database_catalogue(INVENTORY)  # its secret files do not exist
    spec = cat.get("postgres.terminate_idle")
    [request] = await spec.plan(DB, spec.params.model_validate({"max_terminate": 5}))
    assert (request.method, request.path) == ("SQL", "databases/origin-db")
    assert request.body == {"sql": TERMINATE_SQL, "params": [300.0, 5]}
    for name in EXPECTED:
        spec = cat.get(name)
        target = DB if spec.target_kind == "Database" else CACHE
        assert await spec.plan(target, spec.params.model_validate({}))


def test_terminate_params_are_only_more_cautious_than_the_inventory() -> None:
    entry = DatabaseEntry(dsn_file=Path("/x"), idle_after=timedelta(minutes=5), max_terminate=20)
    assert bounds(entry, TerminateParams()) == (300.0, 20, [])
    longer = TerminateParams(idle_after=timedelta(hours=1), max_terminate=3)
    assert bounds(entry, longer) == (3600.0, 3, [])
    shorter = TerminateParams(idle_after=timedelta(seconds=10), max_terminate=500)
    assert bounds(entry, shorter) == (
        300.0,
        20,
        [
            "idle_after 10s raised to the inventory's 300s",
            "max_terminate 500 capped to the inventory's 20",
        ],
    )


async def test_a_target_the_inventory_lacks_fails_without_retry() -> None:
    cat = database_catalogue(INVENTORY)
    for name, target in (
        ("postgres.connections", Target(kind="Database", name="elsewhere")),
        ("redis.info", Target(kind="Redis", name="elsewhere")),
    ):
        spec = cat.get(name)
        with pytest.raises(AppActionError, match="not in the inventory") as exc:
            await spec.execute(target, spec.params.model_validate({}), 1)
        assert not exc.value.retriable
    spec = cat.get("postgres.connections")
    with pytest.raises(DatabaseError, match="cannot read the DSN file /nonexistent/dsn"):
        await spec.execute(DB, spec.params.model_validate({}), 1)
    spec = cat.get("redis.info")
    with pytest.raises(RedisActionError, match="cannot read the Redis URL file"):
        await spec.execute(CACHE, spec.params.model_validate({}), 1)


def test_postgres_errors_are_retried_only_when_waiting_may_help() -> None:
    retried = [
        asyncpg.TooManyConnectionsError("too many"),
        asyncpg.QueryCanceledError("statement timeout"),
        asyncpg.AdminShutdownError("shutdown"),
        asyncpg.CannotConnectNowError("starting up"),
        asyncpg.DeadlockDetectedError("deadlock"),
        asyncpg.LockNotAvailableError("lock timeout"),
        ConnectionRefusedError("refused"),
        TimeoutError(),
    ]
    for exc in retried:
        assert isinstance(mapped(exc, "x"), DatabaseUnavailable), exc
    final = [
        asyncpg.InvalidPasswordError("bad password"),
        asyncpg.InsufficientPrivilegeError("permission denied"),
        asyncpg.InvalidCatalogNameError("no such database"),
        asyncpg.UndefinedTableError("no table"),
    ]
    for exc in final:
        got = mapped(exc, "x")
        assert not got.retriable, exc
    leaky = ValueError("invalid DSN postgresql://u:hunter2@h/db")
    assert "hunter2" not in str(mapped(leaky, "connect", connecting=True))


def test_preload_is_read_from_the_setting_or_unknown() -> None:
    assert preloaded("pg_stat_statements") is True
    assert preloaded('auto_explain,"$libdir/pg_stat_statements.so"') is True
    assert preloaded("auto_explain") is False
    assert preloaded("") is False
    assert preloaded(None) is None


def test_ttl_buckets_and_pattern_shares() -> None:
    ttls = [-1, -2, 0, 59_999, 60_000, 3_599_999, 3_600_000, 86_399_999, 86_400_000]
    assert histogram(ttls) == {
        "no_ttl": 1,
        "lt_1m": 2,
        "lt_1h": 2,
        "lt_1d": 2,
        "more": 1,
        "gone": 1,
    }
    entry = RedisEntry(url_file=Path("/x"), patterns=("a", "b", "c"), max_scan=10)
    assert shares(entry) == [4, 3, 3]
    assert shares(RedisEntry(url_file=Path("/x"), patterns=("a", "b"), max_scan=1)) == [1, 1]


def test_info_summary_reads_memory_against_maxmemory() -> None:
    info: dict[str, Any] = {
        "used_memory": 750,
        "maxmemory": 1000,
        "maxmemory_policy": "allkeys-lru",
        "mem_fragmentation_ratio": 1.4,
        "evicted_keys": 7,
        "expired_keys": 3,
        "keyspace_hits": 90,
        "keyspace_misses": 10,
        "connected_clients": 4,
        "db0": {"keys": 5, "expires": 2, "avg_ttl": 0},
    }
    got = info_summary(info)
    assert got["used_memory_percent"] == 75.0
    assert got["hit_ratio"] == 0.9
    assert got["keyspace"] == {"db0": {"keys": 5, "expires": 2}}
    unlimited = info_summary({**info, "maxmemory": 0, "keyspace_hits": 0, "keyspace_misses": 0})
    assert unlimited["used_memory_percent"] is None
    assert unlimited["hit_ratio"] is None


def test_connections_summary_counts_server_and_database() -> None:
    limits = {"database": "app", "max_connections": 100, "superuser_reserved": 3, "reserved": 2}
    rows = [
        {"datname": "app", "usename": "web", "application_name": "api", "state": "idle", "n": 40},
        {"datname": "app", "usename": "web", "application_name": "api", "state": "active", "n": 5},
        {"datname": "etl", "usename": "etl", "application_name": "", "state": "idle", "n": 30},
    ]
    got = connections_summary(limits, rows, hidden=0, oldest=None, top=1)
    assert got["client_backends"] == 75
    assert got["used_percent"] == 75.0
    assert got["free_for_ordinary_roles"] == 20  # 100 - 3 - 2 - 75
    assert got["by_state"] == {"active": 5, "idle": 70}
    assert got["this_database"] == {"client_backends": 45, "by_state": {"active": 5, "idle": 40}}
    assert got["by_application"] == [{"name": "api", "connections": 45}]  # top 1
    assert got["by_user"] == [{"name": "web", "connections": 45}]
    assert got["notes"] == []
