"""The application's Redis (an inventory ``Redis``, never sevpipe's coordination Redis):
``redis.info`` and ``redis.ttl_sample``; the client every ``redis.*`` action uses.

Each action opens one short-lived client (redis-py asyncio) on the URL read from the entry's
``url_file`` at run time (its database number is the URL's ``/<db>``; a single node or
primary, not Redis Cluster), with connect and socket timeouts of ``TIMEOUT`` seconds, no
retries of its own (the stage retries, checking first), named ``sevpipe`` (CLIENT LIST).
Plans are the commands, one ``ApiRequest(method="REDIS", path="redis/<name>",
body={"command": [...]})`` each; plans read no secret.

- ``redis.info`` (read-only): INFO memory, stats, clients, keyspace in one round trip:
  used_memory against maxmemory (percent; None when maxmemory is 0, no limit), the eviction
  policy, fragmentation, evicted and expired keys, the keyspace hit ratio, clients.
- ``redis.ttl_sample`` (read-only): per inventory pattern, SCAN (never KEYS) with MATCH and
  COUNT from cursor 0 until the pattern's share of the entry's ``max_scan`` keys is sampled,
  the scan completes, or ``MAX_SCAN_CALLS`` calls were made; PTTL of each sampled key
  (pipelined), in buckets: no TTL, < 1 min, < 1 h, < 1 day, longer (and ``gone``: deleted
  between SCAN and PTTL). Key names are not reported (they may hold session ids).
- ``redis.flushdb`` (destructive): :mod:`actions.redis_flush`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict
from redis import exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from actions.app_common import AppActionError, entry_of, read_secret
from actions.catalogue import Outcome
from actions.inventory import Inventory
from actions.inventory_services import RedisEntry
from schemas.actions import ApiRequest, Target

TIMEOUT: Final = 5.0
CLIENT_NAME: Final = "sevpipe"
SCAN_COUNT: Final = 100
MAX_SCAN_CALLS: Final = 1000
SCAN_DEADLINE: Final = 20.0
BUCKETS: Final = (("lt_1m", 60_000), ("lt_1h", 3_600_000), ("lt_1d", 86_400_000))
SECTIONS: Final = ("memory", "stats", "clients", "keyspace")


class RedisActionError(AppActionError):
    """A Redis action's failed outcome: reported, not retried."""


class RedisUnavailable(RedisActionError):
    """No connection, a lost one, a timeout, loading, TRYAGAIN: retried later."""

    retriable = True


def mapped(exc: Exception, what: str) -> RedisActionError:
    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError):
        return RedisActionError(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError | rex.TryAgainError | OSError):
        return RedisUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, rex.ClusterDownError):
        return RedisUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    return RedisActionError(f"{what}: {type(exc).__name__}: {exc}")


def command(target: Target, *args: str | int) -> ApiRequest:
    return ApiRequest(method="REDIS", path=f"redis/{target.name}", body={"command": list(args)})


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RedisActions:
    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    def entry(self, target: Target) -> RedisEntry:
        return entry_of(self.inventory, target, "Redis", RedisEntry)

    @asynccontextmanager
    async def client(self, target: Target) -> AsyncIterator[aioredis.Redis]:
        try:
            url = await read_secret(self.entry(target).url_file, "Redis URL")
        except AppActionError as exc:
            raise RedisActionError(str(exc)) from None
        where = f"redis {target.name}"
        try:
            conn = aioredis.from_url(
                url,
                socket_timeout=TIMEOUT,
                socket_connect_timeout=TIMEOUT,
                retry=Retry(NoBackoff(), 0),
                client_name=CLIENT_NAME,
            )
        except ValueError:
            # Its message may quote the URL, credential and all: never repeat it.
            raise RedisActionError(f"{where}: the Redis URL is not usable") from None
        try:
            yield conn
        except AppActionError:
            raise
        except (rex.RedisError, OSError) as exc:
            raise mapped(exc, where) from exc
        finally:
            await conn.aclose()

    # redis.info

    async def plan_info(self, target: Target, params: NoParams) -> tuple[ApiRequest, ...]:
        self.entry(target)
        return tuple(command(target, "INFO", s) for s in SECTIONS)

    async def info(self, target: Target, params: NoParams, token: int) -> Outcome:
        async with self.client(target) as conn:
            pipe = conn.pipeline(transaction=False)
            for section in SECTIONS:
                pipe.info(section)
            parts = await pipe.execute()
        merged: dict[str, Any] = {}
        for part in parts:
            merged.update(part)
        return info_summary(merged)

    # redis.ttl_sample

    async def plan_ttl(self, target: Target, params: NoParams) -> tuple[ApiRequest, ...]:
        entry = self.entry(target)
        scans = [
            command(target, "SCAN", "<0, then each reply's cursor>", "MATCH", p, "COUNT", n)
            for p, n in zip(entry.patterns, map(scan_count, shares(entry)), strict=True)
        ]
        return (*scans, command(target, "PTTL", "<each sampled key>"))

    async def ttl_sample(self, target: Target, params: NoParams, token: int) -> Outcome:
        entry = self.entry(target)
        per_pattern: list[dict[str, Any]] = []
        seen: dict[bytes, int] = {}
        deadline = time.monotonic() + SCAN_DEADLINE
        async with self.client(target) as conn:
            for pattern, budget in zip(entry.patterns, shares(entry), strict=True):
                keys, stopped = await _scan(conn, pattern, budget, deadline)
                ttls = await _pttls(conn, keys)
                seen.update(zip(keys, ttls, strict=True))
                per_pattern.append(
                    {
                        "pattern": pattern,
                        "sampled": len(keys),
                        "stopped": stopped,
                        **histogram(ttls),
                    }
                )
        return {
            "max_scan": entry.max_scan,
            "sampled": len(seen),
            "histogram": histogram(list(seen.values())),
            "patterns": per_pattern,
        }


def shares(entry: RedisEntry) -> list[int]:
    """Each pattern's part of max_scan (at least 1 key each)."""
    n = len(entry.patterns) or 1
    base, extra = divmod(entry.max_scan, n)
    return [max(1, base + (1 if i < extra else 0)) for i in range(len(entry.patterns))]


def scan_count(budget: int) -> int:
    """The COUNT hint of each SCAN call for a pattern's BUDGET of keys."""
    return min(SCAN_COUNT, max(10, budget))


async def _scan(
    conn: aioredis.Redis, pattern: str, budget: int, deadline: float
) -> tuple[list[bytes], str]:
    """Up to BUDGET distinct keys matching PATTERN, and why the scan stopped."""
    found: dict[bytes, None] = {}  # decode_responses is off: keys are bytes
    cursor, calls = 0, 0
    count = scan_count(budget)
    while True:
        cursor, batch = await conn.scan(cursor, match=pattern, count=count)
        calls += 1
        for key in batch:
            found.setdefault(key if isinstance(key, bytes) else key.encode())
            if len(found) >= budget:
                return list(found), "max_scan"
        if cursor == 0:
            return list(found), "complete"
        if calls >= MAX_SCAN_CALLS:
            return list(found), "max_calls"
        if time.monotonic() >= deadline:
            return list(found), "deadline"


async def _pttls(conn: aioredis.Redis, keys: list[bytes]) -> list[int]:
    ttls: list[int] = []
    for start in range(0, len(keys), 500):
        pipe = conn.pipeline(transaction=False)
        for key in keys[start : start + 500]:
            pipe.pttl(key)
        ttls.extend(int(t) for t in await pipe.execute())
    return ttls


def histogram(ttls: list[int]) -> dict[str, int]:
    """PTTL replies in buckets: -1 no TTL, -2 gone, else the first bucket under its bound."""
    counts = {"no_ttl": 0, "lt_1m": 0, "lt_1h": 0, "lt_1d": 0, "more": 0, "gone": 0}
    for ttl in ttls:
        if ttl == -1:
            counts["no_ttl"] += 1
        elif ttl < 0:
            counts["gone"] += 1
        else:
            counts[next((name for name, bound in BUCKETS if ttl < bound), "more")] += 1
    return counts


def _num(info: dict[str, Any], key: str) -> float | None:
    value = info.get(key)
    return float(value) if isinstance(value, int | float) else None


def info_summary(info: dict[str, Any]) -> dict[str, Any]:
    """The parts of INFO memory/stats/clients/keyspace a responder reads. Pure."""
    used, maximum = _num(info, "used_memory"), _num(info, "maxmemory")
    hits, misses = _num(info, "keyspace_hits") or 0.0, _num(info, "keyspace_misses") or 0.0
    keyspace = {
        k: {"keys": v.get("keys"), "expires": v.get("expires")}
        for k, v in info.items()
        if k.startswith("db") and isinstance(v, dict)
    }
    return {
        "used_memory": info.get("used_memory"),
        "used_memory_rss": info.get("used_memory_rss"),
        "used_memory_peak": info.get("used_memory_peak"),
        "maxmemory": info.get("maxmemory"),
        "used_memory_percent": (
            round(100.0 * used / maximum, 1) if used is not None and maximum else None
        ),
        "maxmemory_policy": info.get("maxmemory_policy"),
        "mem_fragmentation_ratio": info.get("mem_fragmentation_ratio"),
        "evicted_keys": info.get("evicted_keys"),
        "expired_keys": info.get("expired_keys"),
        "keyspace_hits": info.get("keyspace_hits"),
        "keyspace_misses": info.get("keyspace_misses"),
        "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
        "connected_clients": info.get("connected_clients"),
        "blocked_clients": info.get("blocked_clients"),
        "maxclients": info.get("maxclients"),
        "rejected_connections": info.get("rejected_connections"),
        "keyspace": keyspace,
    }
