"""The stage runtime's integration tests' helpers: a test handler, the two logs (with raw
appends and committed offsets read from the log itself), and a log that dies in commit."""

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
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CollectorRegistry

from eventlog import (
    AppendResult,
    EmbeddedLog,
    EventLog,
    GroupLag,
    KafkaLog,
    Record,
    Subscription,
)
from eventlog.kafka import partition_index
from runtime.stage import StageRuntime
from schemas import Envelope, new_event_id
from schemas.deadletter import TOPIC_DEADLETTER

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
        last: int | None = None,
    ) -> AsyncIterator[Record]:
        return self.inner.read(topics, from_offset=from_offset, since=since, until=until, last=last)

    async def ping(self) -> None:
        await self.inner.ping()

    async def group_lag(self, group: str, topics: Sequence[str]) -> GroupLag:
        return await self.inner.group_lag(group, topics)


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
