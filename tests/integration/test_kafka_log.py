"""What only the Kafka backend has: the wire format, topic creation, broker failures, lag.

The contract both backends share is in test_eventlog_contract.py. Each test here has topics
of its own (a unique topic prefix) on the real test broker.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from services import Services, unique_name

from eventlog import EventLogError, KafkaLog, LogUnavailable, Record
from schemas import TOPIC_ALERTS, TOPICS, Envelope, new_event_id


@pytest.fixture
def bootstrap(services: Services) -> str:
    return services.kafka_bootstrap


@pytest.fixture
def prefix() -> str:
    return unique_name("kafkalog") + "."


@pytest.fixture
async def kafka_log(bootstrap: str, prefix: str) -> AsyncIterator[KafkaLog]:
    async with KafkaLog(bootstrap, topic_prefix=prefix) as log:
        yield log


def event(n: int, *, subject: str = "group-1") -> Envelope:
    return Envelope(
        id=new_event_id(),
        type="alert.firing",
        source="/sevpipe/ingest",
        time=datetime.now(UTC),
        subject=subject,
        data={"n": n, "labels": {"alertname": "HighErrorRate"}},
    )


async def raw_messages(bootstrap: str, topic: str) -> list[Any]:
    """Every message of ``topic`` as aiokafka hands it over, without sevpipe in between."""
    partitions = (await describe(bootstrap, [topic]))[topic]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        messages: list[Any] = []
        async with asyncio.timeout(30):  # a hang guard, not a timing assertion
            while len(messages) < sum(ends.values()):
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    messages += batch
        return messages
    finally:
        await consumer.stop()


async def describe(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """Partition count per topic, for the topics that exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = await admin.describe_topics()
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in found if t["topic"] in topics}


async def fetch_until(sub: Any, count: int, max_records: int = 500) -> list[Record]:
    got: list[Record] = []
    async with asyncio.timeout(30):  # a hang guard, not a timing assertion
        while len(got) < count:
            got += await sub.fetch(max_records=max_records, max_wait=0.5)
    return got


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there now: connections are refused


# -- the wire format ----------------------------------------------------------------------------


async def test_events_travel_in_cloudevents_binary_mode(
    kafka_log: KafkaLog, bootstrap: str, prefix: str
) -> None:
    events = [event(i, subject="incident-7") for i in range(3)]
    result = await kafka_log.append(TOPIC_ALERTS, events)
    assert result.offsets == (0, 1, 2)  # one key, one partition: consecutive offsets there

    messages = await raw_messages(bootstrap, prefix + TOPIC_ALERTS)
    assert len(messages) == 3
    assert len({m.partition for m in messages}) == 1
    for msg, sent in zip(sorted(messages, key=lambda m: m.offset), events, strict=True):
        assert msg.key == b"incident-7"
        assert orjson.loads(msg.value) == sent.data
        headers = {name: value.decode() for name, value in msg.headers}
        assert datetime.fromisoformat(headers.pop("ce_time")) == sent.time
        assert headers == {
            "ce_specversion": "1.0",
            "ce_id": sent.id,
            "ce_type": "alert.firing",
            "ce_source": "/sevpipe/ingest",
            "ce_subject": "incident-7",
            "ce_schemaversion": sent.schemaversion,
            "content-type": "application/json",
        }


async def test_a_message_that_is_not_an_event_is_skipped_not_fatal(
    kafka_log: KafkaLog, bootstrap: str, prefix: str
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(prefix + TOPIC_ALERTS, b"not json", key=b"group-1")
    finally:
        await producer.stop()
    await kafka_log.append(TOPIC_ALERTS, [event(1)])

    assert [r.envelope.data["n"] async for r in kafka_log.read([TOPIC_ALERTS])] == [1]
    group = unique_name("g")
    sub = kafka_log.subscribe([TOPIC_ALERTS], group)
    assert [r.envelope.data["n"] for r in await fetch_until(sub, 1)] == [1]
    await sub.commit()  # past the foreign message too: it cannot block the group
    await sub.close()
    await kafka_log.append(TOPIC_ALERTS, [event(2)])
    sub = kafka_log.subscribe([TOPIC_ALERTS], group)
    assert [r.envelope.data["n"] for r in await fetch_until(sub, 1)] == [2]
    await sub.close()


# -- topics -------------------------------------------------------------------------------------


async def test_topics_are_created_with_the_configured_partitions(
    bootstrap: str, prefix: str
) -> None:
    names = [prefix + t for t in (*TOPICS, "sevpipe.custom")]
    async with KafkaLog(bootstrap, partitions=4, replication=1, topic_prefix=prefix) as log:
        assert await describe(bootstrap, names) == {prefix + t: 4 for t in TOPICS}
        await log.append("sevpipe.custom", [event(1)])  # a topic made on first append
        assert (await describe(bootstrap, names))[prefix + "sevpipe.custom"] == 4
    # Topics that exist are taken as they are.
    async with KafkaLog(bootstrap, partitions=2, topic_prefix=prefix) as log:
        await log.ping()
    assert set((await describe(bootstrap, names)).values()) == {4}


async def test_a_topic_kafka_refuses_is_an_event_log_error(bootstrap: str, prefix: str) -> None:
    # One broker cannot hold three replicas: no retry will help, so not LogUnavailable.
    with pytest.raises(EventLogError) as err:
        await KafkaLog(bootstrap, replication=3, topic_prefix=prefix).start()
    assert not isinstance(err.value, LogUnavailable)
    assert "replication" in str(err.value).lower()

    async with KafkaLog(bootstrap, topic_prefix=prefix) as log:
        with pytest.raises(EventLogError) as err:
            await log.append("no spaces allowed!", [event(1)])
        assert not isinstance(err.value, LogUnavailable)
        assert type(err.value).__module__ == "eventlog.base"  # never aiokafka's own


# -- an unreachable cluster ---------------------------------------------------------------------


async def test_an_unreachable_broker_is_unavailable_at_once() -> None:
    log = KafkaLog(f"127.0.0.1:{closed_port()}", request_timeout=1.0)
    async with asyncio.timeout(30):  # a hang guard: it is expected within request_timeout
        with pytest.raises(LogUnavailable) as err:
            await log.start()
        assert "cannot start" in str(err.value)
        with pytest.raises(LogUnavailable):
            await log.append(TOPIC_ALERTS, [event(1)])
        with pytest.raises(LogUnavailable):
            await log.ping()
        with pytest.raises(LogUnavailable):
            await log.subscribe([TOPIC_ALERTS], "g").fetch(max_wait=0)
        with pytest.raises(LogUnavailable):
            [r async for r in log.read()]
        await log.close()


# -- consumers ----------------------------------------------------------------------------------


async def test_lag_reports_the_backlog(bootstrap: str, prefix: str) -> None:
    async with KafkaLog(bootstrap, partitions=1, topic_prefix=prefix) as log:
        await log.append(TOPIC_ALERTS, [event(i) for i in range(10)])
        sub = log.subscribe([TOPIC_ALERTS], unique_name("g"))
        assert sub.lag() == {}  # nothing fetched yet
        assert len(await fetch_until(sub, 3, max_records=3)) == 3
        assert sub.lag() == {(TOPIC_ALERTS, 0): 7}
        assert len(await fetch_until(sub, 7)) == 7
        assert sub.lag() == {(TOPIC_ALERTS, 0): 0}

        await log.append(TOPIC_ALERTS, [event(i) for i in range(10, 15)])
        assert len(await fetch_until(sub, 1, max_records=1)) == 1
        assert sub.lag() == {(TOPIC_ALERTS, 0): 4}
        await sub.close()
        assert sub.lag() == {}


async def test_replay_stops_at_the_end_it_saw_when_it_started(kafka_log: KafkaLog) -> None:
    await kafka_log.append(TOPIC_ALERTS, [event(i, subject=f"g{i}") for i in range(5)])
    seen: list[int] = []
    async for record in kafka_log.read([TOPIC_ALERTS]):
        if not seen:
            await kafka_log.append(TOPIC_ALERTS, [event(i, subject=f"g{i}") for i in range(5, 9)])
        seen.append(record.envelope.data["n"])
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert len([r async for r in kafka_log.read([TOPIC_ALERTS])]) == 9


async def test_dedup_keys_are_remembered_per_process_only(bootstrap: str, prefix: str) -> None:
    async with KafkaLog(bootstrap, topic_prefix=prefix) as log:
        assert (await log.append(TOPIC_ALERTS, [event(1)], dedup_keys=["k"])).appended == 1
        assert (await log.append(TOPIC_ALERTS, [event(1)], dedup_keys=["k"])).appended == 0
    # A restarted process does not know the key: the repeat reaches the log, and consumers
    # recognise it by its idempotency key (DESIGN, delivery semantics).
    async with KafkaLog(bootstrap, topic_prefix=prefix) as log:
        assert (await log.append(TOPIC_ALERTS, [event(1)], dedup_keys=["k"])).appended == 1
        assert len([r async for r in log.read([TOPIC_ALERTS])]) == 2


async def test_a_fetch_that_outlives_max_wait_is_left_running_not_cancelled(
    kafka_log: KafkaLog,
) -> None:
    """During a rebalance getmany() waits for the new assignment, past any short max_wait. A
    cancelled getmany() leaves aiokafka's fetch context entered, so the consumer would count
    as polling forever and max_poll_interval could never evict it: the one poll must be kept
    and awaited again instead."""
    group = unique_name("g")
    await kafka_log.append(TOPIC_ALERTS, [event(1)])
    first = kafka_log.subscribe([TOPIC_ALERTS], group)
    second = kafka_log.subscribe([TOPIC_ALERTS], group)
    try:
        async with asyncio.timeout(30):
            while not await first.fetch(10, max_wait=0.2):
                pass
        consumer = first._consumer
        assert consumer is not None
        # A second member joins: the group rebalances while the first keeps fetching.
        joining = asyncio.create_task(second.fetch(10, max_wait=5.0))
        entered = []
        for _ in range(200):
            await first.fetch(10, max_wait=0.01)
            entered.append(consumer._subscription._fetch_count)
        await joining
        assert max(entered) <= 1, entered  # one poll in flight at most, never a leaked one
    finally:
        await first.close()
        await second.close()
