"""The catalogue's actions on the application's PostgreSQL and Redis (the inventory's
``databases`` and ``redis``, never sevpipe's own store): ``database_catalogue``.

| action | target | risk | after a crash (``check``) |
|---|---|---|---|
| postgres.connections | Database | read_only | runs again |
| postgres.terminate_idle | Database | mutating | none idle past the bound remains: done |
| postgres.slow_queries | Database | read_only | runs again |
| postgres.blocking_locks | Database | read_only | runs again |
| redis.info | Redis | read_only | runs again |
| redis.ttl_sample | Redis | read_only | runs again |
| redis.flushdb | Redis | destructive | its marker (set with the flush) is there: done |

See :mod:`actions.postgres_app`, :mod:`actions.postgres_terminate`,
:mod:`actions.postgres_queries`, :mod:`actions.redis_app` and :mod:`actions.redis_flush`.
"""

from __future__ import annotations

from typing import Any

from actions.catalogue import ActionSpec, Catalogue
from actions.inventory import Inventory
from actions.kubernetes_reads import no_check
from actions.postgres_app import Connections, TopParams
from actions.postgres_queries import BlockingLocks, LockParams, SlowQueries, SlowQueryParams
from actions.postgres_terminate import TerminateIdle, TerminateParams
from actions.redis_app import NoParams, RedisActions
from actions.redis_flush import RedisFlush


def database_catalogue(inventory: Inventory, cat: Catalogue | None = None) -> Catalogue:
    """The ``postgres.*`` and ``redis.*`` actions, registered in CAT (a new one by default);
    each reads its target's entry (and secret file) from INVENTORY when it runs."""
    cat = cat if cat is not None else Catalogue()
    connections = Connections(inventory)
    terminate = TerminateIdle(inventory)
    slow = SlowQueries(inventory)
    locks = BlockingLocks(inventory)
    rd = RedisActions(inventory)
    flush = RedisFlush(rd)
    specs: list[ActionSpec[Any]] = [
        ActionSpec(
            "postgres.connections",
            TopParams,
            "read_only",
            "Database",
            connections.plan,
            connections.execute,
            no_check,
            "client backends by state (server-wide and this database) against max_connections "
            "and reserved slots; the oldest idle in transaction; top applications and users",
        ),
        ActionSpec(
            "postgres.terminate_idle",
            TerminateParams,
            "mutating",
            "Database",
            terminate.plan,
            terminate.execute,
            terminate.check,
            "terminate this database's client sessions idle past the inventory's idle_after "
            "(at most max_terminate; never superusers' or sevpipe's own)",
        ),
        ActionSpec(
            "postgres.slow_queries",
            SlowQueryParams,
            "read_only",
            "Database",
            slow.plan,
            slow.execute,
            no_check,
            "top statements of pg_stat_statements by mean or total exec time (or why not)",
        ),
        ActionSpec(
            "postgres.blocking_locks",
            LockParams,
            "read_only",
            "Database",
            locks.plan,
            locks.execute,
            no_check,
            "sessions waiting on locks, pg_blocking_pids, the blockers' queries, wait times",
        ),
        ActionSpec(
            "redis.info",
            NoParams,
            "read_only",
            "Redis",
            rd.plan_info,
            rd.info,
            no_check,
            "memory against maxmemory, eviction policy, fragmentation, evictions, hit ratio",
        ),
        ActionSpec(
            "redis.ttl_sample",
            NoParams,
            "read_only",
            "Redis",
            rd.plan_ttl,
            rd.ttl_sample,
            no_check,
            "a bounded SCAN of the inventory's patterns: TTLs of the sampled keys in buckets",
        ),
        ActionSpec(
            "redis.flushdb",
            NoParams,
            "destructive",
            "Redis",
            flush.plan,
            flush.flushdb,
            flush.flushed,
            "FLUSHDB ASYNC of the URL's database (every key, cache or not)",
        ),
    ]
    for spec in specs:
        cat.register(spec)
    return cat
