"""The ``redis.*`` actions against real Redis servers (the application's Redis, never
sevpipe's coordination one).

- On the shared server of ``scripts/test-services`` (database 0, keys under a prefix of the
  test's own): ``info`` and ``ttl_sample``, run as an ACL user that may neither write nor
  call KEYS, so an action that did either would fail.
- On a Redis of this module's own (``redis-server`` on a Unix socket in a temp dir, no TCP):
  what needs the whole server: maxmemory and evictions, FLUSHDB of one database number (the
  shared server's databases 1..15 are claimed by other tests while empty, see
  tests/e2e/act_support.py), and FLUSHDB when memory is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError
from services import Services, unique_name

from actions.catalogue import ACTION_ID, Catalogue
from actions.databases import database_catalogue
from actions.inventory import Inventory
from actions.redis_app import RedisActionError, RedisUnavailable
from actions.redis_flush import MARKER_PREFIX, MARKER_TTL
from runtime.effects import perform
from schemas.actions import Target
from store.effects_embedded import EmbeddedEffectsLedger

TARGET = Target(kind="Redis", name="origin-cache")
FLUSH_DB = 9


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL (no database) of a redis-server of this module's own."""
    exe = shutil.which("redis-server")
    assert exe, "redis-server not found (scripts/test-services installs it)"
    root = tmp_path_factory.mktemp("redis")
    sock = root / "redis.sock"
    proc = subprocess.Popen(
        [
            *(exe, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"),
            *("--save", "", "--appendonly", "no", "--dir", str(root), "--databases", "16"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if sock.exists():
                break
            assert proc.poll() is None, "redis-server exited"
            subprocess.run(["sleep", "0.02"], check=True)
        assert sock.exists(), "redis-server did not open its socket"
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def db_url(base: str, db: int) -> str:
    return f"{base}?db={db}" if base.startswith("unix://") else f"{base.rsplit('/', 1)[0]}/{db}"


def inventory_for(tmp_path: Path, url: str, **entry: Any) -> Inventory:
    """An inventory whose Redis origin-cache has URL in a secret file."""
    secret = tmp_path / f"url-{uuid.uuid4().hex[:8]}"
    secret.write_text(url + "\n")
    return Inventory.model_validate({"redis": {"origin-cache": {"url_file": str(secret), **entry}}})


def catalogue_for(tmp_path: Path, url: str, **entry: Any) -> Catalogue:
    return database_catalogue(inventory_for(tmp_path, url, **entry))


async def run(cat: Catalogue, action: str, **params: Any) -> dict[str, Any]:
    spec = cat.get(action)
    return dict(await spec.execute(TARGET, spec.params.model_validate(params), 1))


@asynccontextmanager
async def client(url: str) -> AsyncIterator[aioredis.Redis]:
    conn = aioredis.from_url(url)
    try:
        yield conn
    finally:
        await conn.aclose()


SETUP = ("HELLO", "CLIENT", "SELECT", "AUTH")


@asynccontextmanager
async def monitored(base: str, db: int) -> AsyncIterator[list[str]]:
    """The commands sent to database DB of the server at BASE meanwhile (MONITOR), without
    the connection set-up (HELLO, CLIENT SETNAME, SELECT); as MONITOR shows them, unquoted."""
    seen: list[str] = []
    ready = asyncio.Event()

    async def watch(conn: aioredis.Redis) -> None:
        async with conn.monitor() as mon:
            ready.set()
            async for cmd in mon.listen():
                if cmd["db"] == db and not cmd["command"].startswith(SETUP):
                    seen.append(cmd["command"])

    async with client(base) as conn:
        task = asyncio.create_task(watch(conn))
        await asyncio.wait_for(ready.wait(), 5)
        await asyncio.sleep(0.1)
        try:
            yield seen
            await asyncio.sleep(0.2)  # MONITOR's feed lags the commands a little
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def as_monitor_shows(command: list[Any]) -> str:
    return " ".join(str(part) for part in command)


@asynccontextmanager
async def read_only_user(services: Services) -> AsyncIterator[str]:
    """The shared server's URL (database 0) as an ACL user without writes or KEYS."""
    user, password = unique_name("sevpipe-ro"), uuid.uuid4().hex
    async with client(services.redis_url) as admin:
        await admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-@write", "-keys"
        )
        try:
            host_part = services.redis_url.split("://", 1)[1]
            yield f"redis://{user}:{password}@{host_part.rsplit('/', 1)[0]}/0"
        finally:
            await admin.execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]


@asynccontextmanager
async def prefixed_keys(services: Services) -> AsyncIterator[tuple[aioredis.Redis, str]]:
    prefix = unique_name("sevpipe-test")
    async with client(db_url(services.redis_url, 0)) as conn:
        try:
            yield conn, prefix
        finally:
            async for key in conn.scan_iter(match=f"{prefix}:*", count=500):
                await conn.delete(key)


# -- redis.info -----------------------------------------------------------------------------


async def test_info_reports_the_servers_real_figures(services: Services, tmp_path: Path) -> None:
    async with prefixed_keys(services) as (conn, prefix), read_only_user(services) as url:
        for i in range(10):
            await conn.set(f"{prefix}:k{i}", "x" * 1000)
        before = await conn.info("stats")
        for i in range(4):
            assert await conn.get(f"{prefix}:k{i}")
        for i in range(3):
            assert await conn.get(f"{prefix}:missing{i}") is None
        cat = catalogue_for(tmp_path, url)
        result = await run(cat, "redis.info")
        after = await conn.info("stats")
        memory = await conn.info("memory")
    assert result["used_memory"] > 10 * 1000
    assert result["maxmemory"] == memory["maxmemory"]
    assert result["maxmemory_policy"] == memory["maxmemory_policy"]
    assert result["used_memory_percent"] is None  # maxmemory 0: no limit
    assert isinstance(result["mem_fragmentation_ratio"], float)
    hits, misses = result["keyspace_hits"], result["keyspace_misses"]
    assert before["keyspace_hits"] + 4 <= hits <= after["keyspace_hits"]
    assert before["keyspace_misses"] + 3 <= misses <= after["keyspace_misses"]
    assert result["hit_ratio"] == round(hits / (hits + misses), 4)
    assert before["evicted_keys"] <= result["evicted_keys"] <= after["evicted_keys"]
    assert before["expired_keys"] <= result["expired_keys"] <= after["expired_keys"]
    assert result["connected_clients"] >= 2  # the test's and the action's
    assert result["keyspace"]["db0"]["keys"] >= 10


async def test_info_against_maxmemory_and_evictions(own_redis: str, tmp_path: Path) -> None:
    url = db_url(own_redis, 1)
    async with client(url) as conn:
        await conn.config_set("maxmemory", "4mb")
        await conn.config_set("maxmemory-policy", "allkeys-lru")
        try:
            for i in range(200):
                await conn.set(f"fill:{i}", "x" * 50_000)  # 10 MB into 4
            result = await run(catalogue_for(tmp_path, url), "redis.info")
        finally:
            await conn.config_set("maxmemory", "0")
            await conn.flushdb()
    assert result["maxmemory"] == 4 * 1024 * 1024
    assert result["maxmemory_policy"] == "allkeys-lru"
    assert result["evicted_keys"] > 0
    assert result["used_memory_percent"] == round(
        100 * result["used_memory"] / result["maxmemory"], 1
    )
    assert 50 < result["used_memory_percent"] <= 110
    assert result["keyspace"]["db1"]["keys"] < 200


# -- redis.ttl_sample -----------------------------------------------------------------------

TTLS = {"none": (3, None), "min": (4, 30), "hour": (5, 1800), "day": (6, 7200), "more": (2, 172800)}


async def test_ttl_sample_buckets_the_keys_of_each_pattern(
    services: Services, tmp_path: Path
) -> None:
    async with prefixed_keys(services) as (conn, prefix), read_only_user(services) as url:
        for kind, (n, ttl) in TTLS.items():
            for i in range(n):
                await conn.set(f"{prefix}:a:{kind}:{i}", "v", ex=ttl)
        for i in range(7):
            await conn.set(f"{prefix}:b:{i}", "v", ex=45)
        patterns = [f"{prefix}:a:*", f"{prefix}:b:*"]
        cat = catalogue_for(tmp_path, url, patterns=patterns, max_scan=1000)
        [scan_a, _, pttl] = await cat.get("redis.ttl_sample").plan(
            TARGET, cat.get("redis.ttl_sample").params()
        )
        result = await run(cat, "redis.ttl_sample")
    assert scan_a.body["command"][0] == "SCAN"
    assert scan_a.body["command"][2:] == ["MATCH", patterns[0], "COUNT", 100]
    assert pttl.body["command"][0] == "PTTL"
    a, b = result["patterns"]
    assert a == {
        "pattern": patterns[0],
        "sampled": 20,
        "stopped": "complete",
        "no_ttl": 3,
        "lt_1m": 4,
        "lt_1h": 5,
        "lt_1d": 6,
        "more": 2,
        "gone": 0,
    }
    assert (b["sampled"], b["lt_1m"], b["stopped"]) == (7, 7, "complete")
    assert result["sampled"] == 27
    assert result["histogram"]["lt_1m"] == 11


async def test_ttl_sample_stops_at_max_scan(services: Services, tmp_path: Path) -> None:
    async with prefixed_keys(services) as (conn, prefix), read_only_user(services) as url:
        for i in range(30):
            await conn.set(f"{prefix}:{i}", "v")
        cat = catalogue_for(tmp_path, url, patterns=[f"{prefix}:*"], max_scan=10)
        result = await run(cat, "redis.ttl_sample")
    assert result["sampled"] == 10
    assert result["patterns"][0]["stopped"] == "max_scan"
    assert result["histogram"]["no_ttl"] == 10


async def test_ttl_sample_sends_scan_and_pttl_only(own_redis: str, tmp_path: Path) -> None:
    async with client(db_url(own_redis, 2)) as conn:
        for i in range(250):
            await conn.set(f"s:{i}", "v", ex=90)
        await conn.set("other", "v")
        cat = catalogue_for(tmp_path, db_url(own_redis, 2), patterns=["s:*"], max_scan=200)
        spec = cat.get("redis.ttl_sample")
        [scan, pttl] = await spec.plan(TARGET, spec.params())
        try:
            async with monitored(own_redis, 2) as sent:
                result = await run(cat, "redis.ttl_sample")
        finally:
            await conn.flushdb()
    verbs = {cmd.split(" ", 1)[0] for cmd in sent}
    assert verbs == {"SCAN", "PTTL"}
    scans = [cmd.split(" ") for cmd in sent if cmd.startswith("SCAN")]
    assert scans[0][1] == "0"
    assert {tuple(c[2:]) for c in scans} == {tuple(str(x) for x in scan.body["command"][2:])}
    assert sum(cmd.startswith("PTTL") for cmd in sent) == 200
    assert result["sampled"] == 200
    assert result["histogram"]["lt_1h"] == 200
    assert pttl.body["command"][0] == "PTTL"


# -- redis.flushdb --------------------------------------------------------------------------


async def fill(base: str, db: int, n: int, prefix: str = "k") -> None:
    async with client(db_url(base, db)) as conn:
        for i in range(n):
            await conn.set(f"{prefix}:{i}", "v")


async def dbsize(base: str, db: int) -> int:
    async with client(db_url(base, db)) as conn:
        return int(await conn.dbsize())


async def test_flushdb_empties_only_its_database_and_marks_it(
    own_redis: str, tmp_path: Path
) -> None:
    await fill(own_redis, FLUSH_DB, 25)
    await fill(own_redis, 0, 3, "zero")
    await fill(own_redis, FLUSH_DB + 1, 4, "next")
    cat = catalogue_for(tmp_path, db_url(own_redis, FLUSH_DB))
    spec = cat.get("redis.flushdb")
    params = spec.params()
    action = unique_name("act")
    marked = ACTION_ID.set(action)
    try:
        planned = await spec.plan(TARGET, params)
        assert await spec.check(TARGET, params) is None
        async with monitored(own_redis, FLUSH_DB) as sent:
            result = await run(cat, "redis.flushdb")
        checked = await spec.check(TARGET, params)
    finally:
        ACTION_ID.reset(marked)
    marker = f"{MARKER_PREFIX}{action}"
    assert sent == [as_monitor_shows(r.body["command"]) for r in planned]
    assert [r.body["command"] for r in planned] == [
        ["DBSIZE"],
        ["MULTI"],
        ["FLUSHDB", "ASYNC"],
        ["SET", marker, "flushed by sevpipe", "EX", MARKER_TTL],
        ["EXEC"],
        ["DBSIZE"],
    ]
    assert result["keys_before"] == 25
    assert result["keys_after"] == 1  # the marker alone
    assert (result["marker"], result["marker_atomic"]) == (marker, True)
    assert checked is not None
    assert checked["marker"] == marker
    async with client(db_url(own_redis, FLUSH_DB)) as conn:
        assert await conn.keys("*") == [marker.encode()]
        assert 0 < await conn.ttl(marker) <= MARKER_TTL
        await conn.flushdb()
    assert await dbsize(own_redis, 0) == 3
    assert await dbsize(own_redis, FLUSH_DB + 1) == 4
    for db in (0, FLUSH_DB + 1):
        async with client(db_url(own_redis, db)) as conn:
            await conn.flushdb()


async def test_flushdb_after_a_crash_is_found_by_its_marker_not_run_again(
    own_redis: str, tmp_path: Path
) -> None:
    cat = catalogue_for(tmp_path, db_url(own_redis, FLUSH_DB))
    spec = cat.get("redis.flushdb")
    params = spec.params()
    async with EmbeddedEffectsLedger(tmp_path / "effects.db") as ledger:

        async def attempt(effect: str) -> Any:
            return await perform(
                ledger,
                effect,
                holder="next",
                lease=60,
                do=lambda token: spec.execute(TARGET, params, token),
                check=lambda: spec.check(TARGET, params),
            )

        # Flushed, then the holder died before recording it; the cache refilled since.
        flushed = unique_name("act")
        marked = ACTION_ID.set(flushed)
        try:
            await fill(own_redis, FLUSH_DB, 5)
            await ledger.claim(flushed, holder="dead", lease=0.2)
            await spec.execute(TARGET, params, 1)
            await fill(own_redis, FLUSH_DB, 8, "refilled")
            await asyncio.sleep(0.3)
            done = await attempt(flushed)
        finally:
            ACTION_ID.reset(marked)
        assert done.source == "checked"
        assert done.outcome["keys_after"] == 9  # the refill and the marker: not flushed again
        assert await dbsize(own_redis, FLUSH_DB) == 9

        # The holder died before flushing: the check finds no marker, and it flushes.
        unflushed = unique_name("act")
        marked = ACTION_ID.set(unflushed)
        try:
            await ledger.claim(unflushed, holder="dead", lease=0.2)
            await asyncio.sleep(0.3)
            done = await attempt(unflushed)
        finally:
            ACTION_ID.reset(marked)
        assert done.source == "performed"
        assert done.outcome["keys_before"] == 9
        assert await dbsize(own_redis, FLUSH_DB) == 1
    async with client(db_url(own_redis, FLUSH_DB)) as conn:
        await conn.flushdb()


async def test_flushdb_when_memory_is_full_still_flushes(own_redis: str, tmp_path: Path) -> None:
    url = db_url(own_redis, FLUSH_DB)
    async with client(url) as conn:
        await conn.config_set("maxmemory", "3mb")
        await conn.config_set("maxmemory-policy", "noeviction")
        try:
            with pytest.raises(OutOfMemoryError):  # noqa: PT012 - fill until refused
                for i in range(1000):
                    await conn.set(f"fill:{i}", "x" * 10_000)
            cat = catalogue_for(tmp_path, url)
            spec = cat.get("redis.flushdb")
            marked = ACTION_ID.set(unique_name("act"))
            try:
                result = await run(cat, "redis.flushdb")
                checked = await spec.check(TARGET, spec.params())
            finally:
                ACTION_ID.reset(marked)
            assert result["marker_atomic"] is False
            assert result["marker"] is not None
            assert result["keys_before"] > 100
            assert await conn.dbsize() == 1
            assert checked is not None
        finally:
            await conn.config_set("maxmemory", "0")
            await conn.flushdb()


# -- failures -------------------------------------------------------------------------------


async def test_failures_say_whether_to_retry_and_never_show_the_url(
    services: Services, tmp_path: Path
) -> None:
    missing = Inventory.model_validate({"redis": {"origin-cache": {"url_file": "/nonexistent"}}})
    with pytest.raises(RedisActionError) as exc:
        await run(database_catalogue(missing), "redis.info")
    assert not exc.value.retriable

    closed = "redis://sevpipe:hunter2-secret@127.0.0.1:1/0"
    with pytest.raises(RedisUnavailable) as down:
        await run(catalogue_for(tmp_path, closed), "redis.info")
    assert down.value.retriable
    assert "hunter2" not in str(down.value)

    host_part = services.redis_url.split("://", 1)[1].rsplit("/", 1)[0]
    wrong = f"redis://nobody-{uuid.uuid4().hex[:6]}:hunter2-secret@{host_part}/0"
    with pytest.raises(RedisActionError) as denied:
        await run(catalogue_for(tmp_path, wrong), "redis.info")
    assert not denied.value.retriable
    assert "hunter2" not in str(denied.value)

    with pytest.raises(RedisActionError) as bad:
        await run(catalogue_for(tmp_path, "http://hunter2-secret@nowhere/0"), "redis.info")
    assert "hunter2" not in str(bad.value)
