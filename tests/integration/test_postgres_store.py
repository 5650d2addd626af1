"""PostgresStore beyond the shared contract: migrations, concurrent replicas, outages.

Each test gets a database of its own on the real test server, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import asyncpg
import pytest
from services import Services, fresh_database
from tcp_proxy import TcpProxy

from schemas import TOPIC_INCIDENTS, Envelope, new_event_id
from schemas.incidents import Incident, IncidentEventData
from store import (
    AlertMark,
    GroupState,
    IncidentWrite,
    OutboxEvent,
    PostgresStore,
    StoreConflict,
    StoreUnavailable,
)
from store.migrations import migrate, migrations

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def dsn(services: Services) -> AsyncIterator[str]:
    async with fresh_database(services, "sevpipe_pgstore") as url:
        yield url


def incident(version: int) -> Incident:
    return Incident(
        id="inc-1",
        key="k",
        severity="SEV-2",
        status="open",
        title="incident",
        reasons=("r",),
        opened_at=T0,
        updated_at=T0,
        version=version,
    )


def event(inc: Incident) -> OutboxEvent:
    data = IncidentEventData(incident=inc, change=f"v{inc.version}")
    env = Envelope(
        id=new_event_id(),
        type="incident.updated",
        source="/test",
        time=T0,
        subject=inc.id,
        data=data.model_dump(mode="json"),
    )
    return OutboxEvent(TOPIC_INCIDENTS, inc.id, env)


# -- migrations -------------------------------------------------------------------------------


async def test_migrations_are_recorded_and_a_second_start_is_a_no_op(dsn: str) -> None:
    expected = [(m.version, m.name, m.checksum) for m in migrations()]
    assert expected[0][:2] == (1, "0001_init.sql")
    async with PostgresStore(dsn) as store:
        await store.save([GroupState("k", 0)], [], [])
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT version, name, checksum, applied_at FROM sevpipe_schema_migrations"
            " ORDER BY version"
        )
        assert [tuple(r)[:3] for r in rows] == expected
        async with PostgresStore(dsn) as again:
            assert (await again.load_groups(["k"]))["k"].version == 1  # data kept
        assert await migrate(conn) == []
        assert (
            await conn.fetch(
                "SELECT version, name, checksum, applied_at FROM sevpipe_schema_migrations"
                " ORDER BY version"
            )
            == rows
        )
    finally:
        await conn.close()


async def test_replicas_starting_together_apply_each_migration_once(dsn: str) -> None:
    conns = [await asyncpg.connect(dsn) for _ in range(6)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(applied, key=len) == [[]] * 5 + [[m.version for m in migrations()]]
        stores = [PostgresStore(dsn, max_size=2) for _ in range(6)]
        await asyncio.gather(*(s.start() for s in stores))  # and stores: all start
        await asyncio.gather(*(s.close() for s in stores))
        count = await conns[0].fetchval("SELECT count(*) FROM sevpipe_schema_migrations")
        assert count == len(migrations())
    finally:
        for c in conns:
            await c.close()


# -- concurrent writers -----------------------------------------------------------------------


async def _add_mark(store: PostgresStore, n: int) -> int:
    """One replica's decision: reload and decide again on every conflict. Returns conflicts."""
    conflicts = 0
    while True:
        group = (await store.load_groups(["k"], {"k": [f"fp-{n}"]}))["k"]
        current = group.incident
        inc = incident(current.version + 1 if current else 1)
        group.incident = inc
        group.marks[f"fp-{n}"] = AlertMark(T0.isoformat(), "firing")
        group.changed_marks.add(f"fp-{n}")
        write = IncidentWrite(inc, current.version if current else 0)
        try:
            await store.save([group], [write], [event(inc)])
        except StoreConflict:
            conflicts += 1
            await asyncio.sleep(0)
        else:
            return conflicts


async def test_concurrent_writers_of_one_group_lose_no_update(dsn: str) -> None:
    replicas = [PostgresStore(dsn, max_size=5) for _ in range(3)]
    await asyncio.gather(*(r.start() for r in replicas))
    try:
        conflicts = await asyncio.gather(*(_add_mark(replicas[n % 3], n) for n in range(20)))
        every = [f"fp-{n}" for n in range(20)]
        group = (await replicas[0].load_groups(["k"], {"k": every}))["k"]
        assert set(group.marks) == set(every)
        assert group.version == 20
        assert group.incident is not None
        assert group.incident.version == 20
        # Every decision is in the timeline exactly once, in the order it was made.
        timeline = await replicas[1].timeline("inc-1")
        assert [e.data["incident"]["version"] for e in timeline] == list(range(1, 21))
        assert sum(conflicts) > 0  # the race really happened
    finally:
        await asyncio.gather(*(r.close() for r in replicas))


async def test_writers_of_overlapping_groups_in_any_order_do_not_deadlock(dsn: str) -> None:
    keys = ["a", "b", "c", "d"]

    causes: list[BaseException | None] = []

    async def bump(store: PostgresStore, order: list[str]) -> None:
        while True:
            groups = await store.load_groups(order)
            try:
                await store.save([groups[k] for k in order], [], [])
            except StoreConflict as exc:
                causes.append(exc.__cause__)
                await asyncio.sleep(0)
            else:
                return

    async with PostgresStore(dsn, max_size=10) as store:
        await store.save([GroupState(k, 0) for k in keys], [], [])
        orders = [keys if n % 2 else keys[::-1] for n in range(16)]
        await asyncio.gather(*(bump(store, order) for order in orders))
        versions = {k: g.version for k, g in (await store.load_groups(keys)).items()}
    assert versions == dict.fromkeys(keys, 17)
    # Lost races, fine; but never a deadlock (which PostgreSQL only breaks after a second).
    assert not [c for c in causes if isinstance(c, asyncpg.exceptions.DeadlockDetectedError)]


# -- outages ----------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_an_unreachable_server_is_store_unavailable() -> None:
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{_closed_port()}/x", command_timeout=2)
    with pytest.raises(StoreUnavailable) as caught:
        await store.start()
    assert caught.value.retriable
    with pytest.raises(StoreUnavailable):
        await store.load_groups(["k"])  # never started: unavailable, not a crash
    await store.close()


async def test_a_query_stuck_behind_a_lock_times_out_as_unavailable(dsn: str) -> None:
    async with PostgresStore(dsn, command_timeout=0.3) as store:
        await store.save([GroupState("k", 0)], [], [])
        group = (await store.load_groups(["k"]))["k"]
        blocker = await asyncpg.connect(dsn)
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT 1 FROM incident_groups WHERE key = 'k' FOR UPDATE")
            with pytest.raises(StoreUnavailable):
                await store.save([group], [], [])
            await tx.rollback()
        finally:
            await blocker.close()
        await store.save([group], [], [])  # the same decision goes through afterwards
        assert (await store.load_groups(["k"]))["k"].version == 2


async def test_the_pool_recovers_when_the_server_comes_back(dsn: str) -> None:
    proxy = TcpProxy(int(urlsplit(dsn).port or 5432))
    await proxy.start()
    parts = urlsplit(dsn)
    proxied = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
    async with PostgresStore(proxied, min_size=2, max_size=2, command_timeout=2) as store:
        await store.save([GroupState("k", 0)], [], [])

        await proxy.cut()
        for _ in range(3):  # every pooled connection is dead, and new ones are refused
            with pytest.raises(StoreUnavailable):
                await store.load_groups(["k"])

        await proxy.start()
        for _ in range(50):  # as the stage's backoff does, without its waiting
            try:
                groups = await store.load_groups(["k"])
                break
            except StoreUnavailable:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the store did not recover")
        assert groups["k"].version == 1
        await store.save([groups["k"]], [], [])
        assert (await store.load_groups(["k"]))["k"].version == 2
    await proxy.cut()
