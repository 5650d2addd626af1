"""The stage runtime on both logs (embedded SQLite, real Kafka) with a small test handler.

What happened is read back from the log itself: dead letters are counted raw on
``sevpipe.deadletter`` (no dedup before counting), and committed offsets are read from the
group's own storage (the embedded log's table, Kafka's group coordinator). Waits poll with a
hang guard; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CollectorRegistry
from services import Services, unique_name

from eventlog import AppendResult, EmbeddedLog, EventLog, KafkaLog, Record, Subscription
from eventlog.kafka import partition_index
from runtime.stage import StageRuntime
from schemas import Envelope, new_event_id
from schemas.deadletter import TOPIC_DEADLETTER, DeadLetterData, deadletter_id

TOPIC = "sevpipe.alerts"
KEY = "group-1"
STAGE = "tester"
HANG_GUARD = 60.0


# -- the handler under test ---------------------------------------------------------------------


class Poisoned(Exception):
    """Not retriable: the record is bad."""


class BackendAway(Exception):
    retriable = True


class Recorder:
    """Handles events ``{"n": ...}``; one with ``"poison": true`` fails its batch. Atomic:
    a failed call records nothing, as a store transaction would."""

    name = STAGE
    topics = (TOPIC,)

    def __init__(self) -> None:
        self.handled: list[int] = []
        self.calls = 0
        self.down = False
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def handle(self, records: Sequence[Record]) -> None:
        self.calls += 1
        if self.down:
            raise BackendAway("the store is away")
        envelopes = [r.envelope for r in records]  # an undecodable record raises here
        for env in envelopes:
            if env.data.get("poison"):
                raise Poisoned(f"cannot take n={env.data['n']}")
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.handled.extend(env.data["n"] for env in envelopes)


# -- the two logs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    name: str
    db: Path
    bootstrap: str = ""
    prefix: str = ""

    def open(self) -> EventLog:
        if self.name == "embedded":
            return EmbeddedLog(self.db)
        return KafkaLog(self.bootstrap, topic_prefix=self.prefix)

    async def append_raw(self, attrs: dict[str, str], data: bytes) -> None:
        """A record as a foreign producer writes it, bypassing Envelope's checks."""
        if self.name == "embedded":
            blob = orjson.dumps(attrs)[:-1] + b',"data":' + data + b"}"
            row = (TOPIC, attrs["subject"], attrs["id"], attrs["type"], 0, None, blob)
            await asyncio.to_thread(_insert_row, self.db, row)
            return
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            key = attrs["subject"].encode()
            await producer.send_and_wait(
                self.prefix + TOPIC,
                data,
                key=key,
                headers=[("ce_" + k, v.encode()) for k, v in attrs.items()],
                partition=partition_index(key, 3),  # where KafkaLog puts this key
            )
        finally:
            await producer.stop()

    async def committed(self, group: str) -> dict[int, int]:
        """The group's committed next offset per partition of TOPIC, from the log itself."""
        if self.name == "embedded":
            return await asyncio.to_thread(_committed_rows, self.db, group)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        # TopicPartition -> OffsetAndMetadata; only partitions the group committed to
        return {
            tp.partition: meta.offset
            for tp, meta in offsets.items()
            if tp.topic == self.prefix + TOPIC and meta.offset >= 0
        }


def _insert_row(db: Path, row: tuple[object, ...]) -> None:
    conn = sqlite3.connect(db, timeout=10)
    try:
        conn.execute(
            "INSERT INTO events (topic, key, id, type, time_ms, dedup_key, envelope)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        conn.commit()
    finally:
        conn.close()


def _committed_rows(db: Path, group: str) -> dict[int, int]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        row = conn.execute(
            "SELECT next_seq FROM group_offsets WHERE grp = ? AND topic = ?", (group, TOPIC)
        ).fetchone()
    finally:
        conn.close()
    return {} if row is None else {0: int(row[0])}  # one partition, 0


@pytest.fixture(params=["embedded", "kafka"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "embedded":
        return Backend("embedded", tmp_path / "events.db")
    services: Services = request.getfixturevalue("services")
    prefix = unique_name("runtime") + "."
    return Backend("kafka", tmp_path / "unused.db", services.kafka_bootstrap, prefix)


@contextlib.asynccontextmanager
async def opened(backend: Backend) -> AsyncIterator[EventLog]:
    log = backend.open()
    await log.start()
    try:
        yield log
    finally:
        await log.close()


@dataclass
class Running:
    runtime: StageRuntime
    handler: Recorder
    registry: CollectorRegistry
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def finish(self) -> None:
        self.stop.set()
        async with asyncio.timeout(HANG_GUARD):
            await self.task

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"stage": STAGE, **labels}) or 0.0


@contextlib.asynccontextmanager
async def running(
    log: EventLog, group: str, handler: Recorder | None = None
) -> AsyncIterator[Running]:
    handler = handler or Recorder()
    registry = CollectorRegistry()
    runtime = StageRuntime(
        log, handler, registry, group=group, batch_size=100, max_wait=0.2, max_backoff=0.2
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    run = Running(runtime, handler, registry, stop, task)
    try:
        yield run
    finally:
        if not task.done():
            await run.finish()


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` until it holds; the timeout is a hang guard, not an assertion."""
    try:
        async with asyncio.timeout(HANG_GUARD):
            while True:
                result = condition()
                if result if isinstance(result, bool) else await result:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


def event(n: int, **data: object) -> Envelope:
    return Envelope(
        id=new_event_id(),
        type="test.event",
        source="/test",
        time=datetime.now(UTC),
        subject=KEY,
        data={"n": n, **data},
    )


def raw_attrs(time: str) -> dict[str, str]:
    return {
        "id": new_event_id(),
        "type": "test.event",
        "source": "/foreign",
        "time": time,
        "subject": KEY,
        "schemaversion": "1",
    }


async def records_of(log: EventLog, topic: str) -> list[Record]:
    return [r async for r in log.read([topic])]


async def letters(log: EventLog) -> list[Envelope]:
    """Every record on the dead-letter topic, as stored: no dedup before counting."""
    return [r.envelope for r in await records_of(log, TOPIC_DEADLETTER)]


async def committed_past(backend: Backend, group: str, record: Record) -> bool:
    return (await backend.committed(group)).get(record.partition) == record.offset + 1


# -- poison records -----------------------------------------------------------------------------


async def test_poison_records_are_dead_lettered_once_and_the_stage_goes_on(
    backend: Backend,
) -> None:
    group = unique_name("g")
    async with opened(backend) as log:
        sent = [event(n, poison=n in (4, 7)) for n in range(10)]
        await log.append(TOPIC, sent)
        stored = await records_of(log, TOPIC)
        async with running(log, group) as run:
            good = [0, 1, 2, 3, 5, 6, 8, 9]
            await until(lambda: run.handler.handled == good, "the good records handled")
            await until(lambda: committed_past(backend, group, stored[-1]), "commit past all")

            dead = await letters(log)
            assert sorted(e.data["original"]["offset"] for e in dead) == [
                stored[4].offset,
                stored[7].offset,
            ]
            in_order = sorted(dead, key=lambda e: e.data["original"]["offset"])
            for env, n in zip(in_order, (4, 7), strict=True):
                data = DeadLetterData.model_validate(env.data)
                assert env.subject == STAGE
                assert env.id == deadletter_id(STAGE, data.original)
                assert (data.stage, data.reason, data.error_type) == (STAGE, "failed", "Poisoned")
                assert data.error == f"cannot take n={n}"
                assert data.original.topic == TOPIC
                assert data.original.key == KEY
                assert data.original.event_id == sent[n].id
                assert Envelope.model_validate_json(data.original.raw()) == sent[n]
            assert run.metric("sevpipe_deadletters_total", reason="failed") == 2
            assert run.metric("sevpipe_stage_records_total") == 8

            # still consuming
            await log.append(TOPIC, [event(10), event(11)])
            await until(lambda: run.handler.handled[-2:] == [10, 11], "later records handled")
            assert not run.task.done()
            assert run.runtime.ready()
        assert run.handler.handled == [*good, 10, 11]
        assert len(await letters(log)) == 2


async def test_records_that_are_not_envelopes_are_dead_lettered_raw(backend: Backend) -> None:
    group = unique_name("g")
    naive = raw_attrs("2026-03-01T12:00:00")  # no offset: whose local time?
    garbage = b'{"n": 3, "bytes": "\xff\x00"}'  # not UTF-8, and a NUL
    async with opened(backend) as log:
        await log.append(TOPIC, [event(0)])
        await backend.append_raw(naive, b'{"n": 1}')
        await log.append(TOPIC, [event(2)])
        await backend.append_raw(raw_attrs("2026-03-01T12:00:00+00:00"), garbage)
        await log.append(TOPIC, [event(4)])
        stored = await records_of(log, TOPIC)
        async with running(log, group) as run:
            await until(lambda: run.handler.handled == [0, 2, 4], "the good records handled")
            await until(lambda: committed_past(backend, group, stored[-1]), "commit past all")
            dead = sorted(await letters(log), key=lambda e: e.data["original"]["offset"])
            assert run.metric("sevpipe_deadletters_total", reason="undecodable") == 2

        first, second = (DeadLetterData.model_validate(e.data) for e in dead)
        assert [first.original.offset, second.original.offset] == [
            stored[1].offset,
            stored[3].offset,
        ]
        assert {first.reason, second.reason} == {"undecodable"}
        assert first.error_type == "ValidationError"
        assert "timezone" in first.error
        assert first.original.encoding == "utf-8"
        assert first.original.event_id == naive["id"]
        assert orjson.loads(first.original.value)["time"] == "2026-03-01T12:00:00"
        assert second.original.encoding == "base64"
        assert garbage in second.original.raw()
        assert "\x00" not in second.error  # PostgreSQL text could not hold it


# -- outages ------------------------------------------------------------------------------------


async def test_a_retriable_error_backs_off_without_commit_and_resumes(backend: Backend) -> None:
    group = unique_name("g")
    handler = Recorder()
    handler.down = True
    async with opened(backend) as log:
        await log.append(TOPIC, [event(n) for n in range(5)])
        stored = await records_of(log, TOPIC)
        async with running(log, group, handler) as run:
            await until(lambda: handler.calls >= 4, "several attempts")
            assert not run.runtime.ready()
            assert run.metric("sevpipe_stage_retries_total", step="handle") >= 3
            assert await backend.committed(group) == {}
            assert handler.handled == []

            handler.down = False
            await until(lambda: handler.handled == [0, 1, 2, 3, 4], "resumed by itself")
            await until(lambda: committed_past(backend, group, stored[-1]), "commit")
            await until(run.runtime.ready, "ready again")
            assert not run.task.done()
        assert await letters(log) == []
        assert run.metric("sevpipe_deadletters_total", reason="failed") == 0


# -- shutdown and crashes -----------------------------------------------------------------------


async def test_stop_finishes_and_commits_the_batch_in_hand(backend: Backend) -> None:
    group = unique_name("g")
    handler = Recorder()
    handler.gate = asyncio.Event()
    async with opened(backend) as log:
        await log.append(TOPIC, [event(n) for n in range(5)])
        stored = await records_of(log, TOPIC)
        async with running(log, group, handler) as run:
            await until(handler.entered.is_set, "a batch in hand")
            run.stop.set()  # shutdown begins while the batch is being handled
            handler.gate.set()
            await run.finish()
            assert run.task.exception() is None
            assert run.runtime.lag() == {}  # the subscription is closed
            assert not run.runtime.ready()

        drained = handler.handled
        assert drained == list(range(len(drained)))
        assert drained  # the batch in hand was finished, not dropped
        assert await committed_past(backend, group, stored[drained[-1]])

        # The next run of the group starts right after the drained batch.
        await log.append(TOPIC, [event(5)])
        async with running(log, group) as after:
            await until(lambda: after.handler.handled[-1:] == [5], "the rest handled")
        assert after.handler.handled == list(range(len(drained), 6))


class CommitNeverReturns:
    """A log whose subscriptions hang in commit: the process 'dies' right before it."""

    def __init__(self, inner: EventLog) -> None:
        self.inner = inner
        self.reached = asyncio.Event()

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def append(self, topic: str, events: Sequence[Envelope], **dedup: Any) -> AppendResult:
        return await self.inner.append(topic, events, **dedup)

    def subscribe(self, topics: Sequence[str], group: str) -> Subscription:
        return _HangingCommit(self.inner.subscribe(topics, group), self.reached)

    def read(
        self,
        topics: Sequence[str] | None = None,
        *,
        from_offset: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> AsyncIterator[Record]:
        return self.inner.read(topics, from_offset=from_offset, since=since, until=until)

    async def ping(self) -> None:
        await self.inner.ping()


class _HangingCommit:
    def __init__(self, inner: Subscription, reached: asyncio.Event) -> None:
        self.inner = inner
        self.reached = reached

    async def fetch(self, max_records: int = 500, max_wait: float = 1.0) -> list[Record]:
        return await self.inner.fetch(max_records, max_wait)

    async def commit(self) -> None:
        self.reached.set()
        await asyncio.Event().wait()

    async def close(self) -> None:
        await self.inner.close()


async def test_redelivery_after_a_crash_does_not_dead_letter_twice(backend: Backend) -> None:
    group = unique_name("g")
    async with opened(backend) as log:
        await log.append(TOPIC, [event(n, poison=n == 2) for n in range(5)])
        stored = await records_of(log, TOPIC)
        hanging = CommitNeverReturns(log)
        async with running(hanging, group) as crashed:
            await until(hanging.reached.is_set, "the commit after the dead letter")
            crashed.task.cancel()  # dies before its commit
            with contextlib.suppress(asyncio.CancelledError):
                await crashed.task
        assert crashed.handler.handled == [0, 1, 3, 4]
        assert len(await letters(log)) == 1
    assert await backend.committed(group) == {}

    # A new process: a new log object, which on Kafka remembers no dedup keys of its own.
    async with opened(backend) as log, running(log, group) as again:
        await until(lambda: committed_past(backend, group, stored[-1]), "commit past all")
        assert again.handler.handled == [0, 1, 3, 4]  # redelivered, handled again
        dead = await letters(log)
        assert len(dead) == 1
        assert dead[0].data["original"]["offset"] == stored[2].offset
        assert again.metric("sevpipe_deadletters_total", reason="failed") == 0
