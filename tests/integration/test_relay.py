"""The claimed, ordered relay of the outbox, on the embedded pair and on Kafka + PostgreSQL.

Every event of the outbox reaches the log once, counted raw on the topic: with relayers
racing (replicas, and the API's process) and with a relayer that dies between publishing and
marking; and each incident's versions reach the log in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from services import Services, fresh_database_sync, unique_name

from eventlog import EmbeddedLog, EventLog, KafkaLog
from runtime.relay import relay_outbox
from schemas import TOPIC_INCIDENTS, Envelope, new_event_id
from schemas.incidents import Incident, IncidentEventData
from store import EmbeddedStore, IncidentStore, IncidentWrite, OutboxEvent, PostgresStore
from store.base import StoredEvent

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Pair:
    name: str
    open_log: Callable[[], EventLog]
    open_store: Callable[[], IncidentStore]


@pytest.fixture(scope="module")
def pg_dsn(services: Services) -> Iterator[str]:
    with fresh_database_sync(services, "sevpipe_relay") as dsn:
        yield dsn


@pytest.fixture(params=["embedded", "kafka+postgres"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Pair:
    if request.param == "embedded":
        return Pair(
            "embedded",
            lambda: EmbeddedLog(tmp_path / "events.db"),
            lambda: EmbeddedStore(tmp_path / "store.db"),
        )
    services: Services = request.getfixturevalue("services")
    dsn: str = request.getfixturevalue("pg_dsn")
    prefix = unique_name("relay") + "."
    return Pair(
        "kafka+postgres",
        lambda: KafkaLog(services.kafka_bootstrap, topic_prefix=prefix),
        lambda: PostgresStore(dsn, max_size=4),
    )


@contextlib.asynccontextmanager
async def opened(pair: Pair) -> AsyncIterator[tuple[EventLog, IncidentStore]]:
    log, store = pair.open_log(), pair.open_store()
    await log.start()
    await store.start()
    try:
        await store.reset()  # the module's database is shared by its tests
        yield log, store
    finally:
        await store.close()
        await log.close()


def incident(n: int, version: int) -> Incident:
    return Incident(
        id=f"inc-{n:03d}",
        key=f"k{n}",
        severity="SEV-2",
        status="open",
        title=f"incident {n}",
        reasons=(),
        opened_at=T0,
        updated_at=T0 + timedelta(seconds=version),
        version=version,
    )


def event(inc: Incident) -> OutboxEvent:
    env = Envelope(
        id=new_event_id(),
        type="incident.opened" if inc.version == 1 else "incident.updated",
        source="/test",
        time=inc.updated_at,
        subject=inc.id,
        data=IncidentEventData(incident=inc, change=f"v{inc.version}").model_dump(mode="json"),
    )
    return OutboxEvent(TOPIC_INCIDENTS, inc.id, env)


async def decide(store: IncidentStore, incidents: int, versions: int) -> None:
    """``versions`` versions of each of ``incidents`` incidents, stored with their events."""
    for v in range(1, versions + 1):
        writes = [IncidentWrite(incident(n, v), v - 1) for n in range(incidents)]
        await store.save([], writes, [event(w.incident) for w in writes])


async def on_topic(log: EventLog) -> list[Envelope]:
    return [r.envelope async for r in log.read([TOPIC_INCIDENTS])]


def assert_once_and_in_order(events: Sequence[Envelope], incidents: int, versions: int) -> None:
    ids = Counter(e.id for e in events)
    assert [i for i, n in ids.items() if n > 1] == []  # raw: nothing twice
    seen: dict[str, list[int]] = defaultdict(list)
    for e in events:
        seen[e.subject].append(IncidentEventData.model_validate(e.data).incident.version)
    want = list(range(1, versions + 1))
    assert dict(seen) == {f"inc-{n:03d}": want for n in range(incidents)}


async def test_racing_relayers_publish_each_event_once_in_version_order(pair: Pair) -> None:
    async with opened(pair) as (log, store), opened(pair) as (_, other):
        await decide(store, incidents=20, versions=15)
        # Replicas and the API's process relaying at once, in small batches.
        relayed = await asyncio.gather(
            *(relay_outbox(s, log, batch=7) for s in (store, other, store, other))
        )
        relayed_after = await relay_outbox(store, log)
        assert sum(relayed) + relayed_after == 300
        assert await store.unrelayed() == []
        assert_once_and_in_order(await on_topic(log), incidents=20, versions=15)


class Died(Exception):
    """A relayer that stops dead after publishing (its process was killed)."""


async def test_a_relayer_that_died_after_publishing_is_not_repeated(pair: Pair) -> None:
    async with opened(pair) as (log, store):
        await decide(store, incidents=4, versions=3)

        async def publish_then_die(events: Sequence[StoredEvent]) -> None:
            envs = [e.envelope for e in events[:5]]  # it got part of its batch out
            await log.append(TOPIC_INCIDENTS, envs, dedup_keys=[e.id for e in envs])
            raise Died

        with pytest.raises(Died):
            await store.relay(publish_then_die, limit=8)
        assert len(await store.unrelayed()) == 12  # nothing was marked
        assert len(await on_topic(log)) == 5

    # A new process (no memory of what was sent) takes over.
    async with opened_again(pair) as (log, store):
        assert await relay_outbox(store, log) == 12
        assert_once_and_in_order(await on_topic(log), incidents=4, versions=3)


@contextlib.asynccontextmanager
async def opened_again(pair: Pair) -> AsyncIterator[tuple[EventLog, IncidentStore]]:
    """The same log and store, opened fresh, without resetting anything."""
    log, store = pair.open_log(), pair.open_store()
    await log.start()
    await store.start()
    try:
        yield log, store
    finally:
        await store.close()
        await log.close()


async def test_the_last_records_of_each_partition(pair: Pair) -> None:
    async with opened(pair) as (log, _):
        sent = [
            Envelope(
                id=new_event_id(),
                type="incident.updated",
                source="/test",
                time=T0,
                subject=f"inc-{n % 6}",
                data={},
            )
            for n in range(30)
        ]
        await log.append(TOPIC_INCIDENTS, sent)
        tail = [r async for r in log.read([TOPIC_INCIDENTS], last=2)]
        by_partition: dict[int, list[int]] = defaultdict(list)
        for r in tail:
            by_partition[r.partition].append(r.offset)
        assert all(len(v) <= 2 for v in by_partition.values())
        assert len(tail) == 2 * len(by_partition)
        everything = [r async for r in log.read([TOPIC_INCIDENTS])]
        for p, offsets in by_partition.items():
            assert offsets == [r.offset for r in everything if r.partition == p][-2:]
        assert [r async for r in log.read([TOPIC_INCIDENTS], last=0)] == []
