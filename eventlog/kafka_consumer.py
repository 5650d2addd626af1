"""The Kafka log's consumers: a consumer-group subscription, and the group-less replay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from eventlog.base import LogClosed, LogUnavailable, Record
from eventlog.kafka_codec import KAFKA_ERRORS, decode, mapped, quietly

if TYPE_CHECKING:
    from eventlog.kafka import KafkaLog

log = logging.getLogger(__name__)

# A replay bounded by ``until`` reads each partition this far past it (by append time), for
# the events appended a while after they were made.
UNTIL_GRACE = timedelta(hours=1)


class Replay:
    """Merges the partitions of a replay by append time; each partition keeps its order."""

    PAGE = 1000

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        bounds: dict[TopicPartition, tuple[int, int]],
        stall: float,
        prefix: str,
    ) -> None:
        self._consumer = consumer
        self._ends = {tp: end for tp, (_, end) in bounds.items()}
        self._buffers: dict[TopicPartition, deque[Any]] = {tp: deque() for tp in bounds}
        self._stall = stall
        self._prefix = prefix

    async def merged(self, until_ms: int | None) -> AsyncIterator[tuple[Record, int]]:
        grace_ms = int(UNTIL_GRACE.total_seconds() * 1000)
        stop_ms = until_ms + grace_ms if until_ms is not None else None
        buffers = self._buffers
        while buffers:
            empty = [tp for tp, buf in buffers.items() if not buf]
            if empty:
                await self._fill(empty)
                continue
            tp = min(buffers, key=lambda t: (buffers[t][0].timestamp, t.topic, t.partition))
            msg = buffers[tp].popleft()
            if stop_ms is not None and msg.timestamp >= stop_ms:
                del buffers[tp]  # this partition has gone past ``until``
                continue
            decoded = decode(tp.topic[len(self._prefix) :], msg)
            if decoded is not None:
                yield decoded

    async def _fill(self, empty: list[TopicPartition]) -> None:
        """Drop the partitions that reached their end; fetch for the others.

        getmany() returns nothing, rather than failing, while the broker is away: no progress
        for ``stall`` seconds is reported as LogUnavailable instead of waiting forever.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._stall
        while True:
            for tp in empty:
                if await self._consumer.position(tp) >= self._ends[tp]:
                    del self._buffers[tp]
            empty = [tp for tp in empty if tp in self._buffers]
            if not empty:
                return
            batches = await self._consumer.getmany(
                *empty, timeout_ms=int(max(deadline - loop.time(), 0) * 1000), max_records=self.PAGE
            )
            for tp, msgs in batches.items():
                self._buffers[tp].extend(m for m in msgs if m.offset < self._ends[tp])
            if any(self._buffers[tp] for tp in empty):
                return
            if loop.time() >= deadline:
                raise LogUnavailable("kafka: replay made no progress; is the broker up?")


class _DropRevoked(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forgets fetched offsets of partitions taken away: their records go to the new owner."""

    def __init__(self, sub: KafkaSubscription) -> None:
        self._sub = sub

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        for tp in revoked:
            self._sub._fetched.pop(tp, None)
            self._sub._positions.pop(tp, None)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        return


_POLL_GRACE = 0.05  # getmany() returns by its own timeout; this covers its bookkeeping
FETCH_BYTES_PER_PARTITION = 16 * 1024 * 1024
"""What one fetch may bring per partition. aiokafka's 1 MiB default holds ~300 alert events,
so one busy partition (an alert storm is one group, one key, one partition) was read at a
few thousand events per second, slower than the receiver appends them."""


async def _settled(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await task


class KafkaSubscription:
    """A member of a Kafka consumer group; commits only what the caller has fetched."""

    def __init__(self, log_: KafkaLog, topics: tuple[str, ...], group: str) -> None:
        self._log = log_
        self._topics = topics
        self._group = group
        self._consumer: AIOKafkaConsumer | None = None
        self._fetched: dict[TopicPartition, int] = {}  # next offset after the last fetched
        self._positions: dict[TopicPartition, int] = {}  # next offset fetch() returns
        self._closed = False
        self._poll: asyncio.Task[dict[TopicPartition, list[Any]]] | None = None

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is not None:
            return self._consumer
        lg = self._log
        await lg._ensure_topics(self._topics)
        # aiokafka's default request timeout (40 s), not ours: a JoinGroup request waits
        # server-side for the whole group to rejoin.
        consumer = AIOKafkaConsumer(
            bootstrap_servers=lg.bootstrap,
            client_id=lg.client_id,
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION,
            **lg.security_args(),
        )
        try:
            await consumer.start()
        except BaseException:
            await quietly(consumer.stop(), lg.request_timeout)
            raise
        # Subscribed after start(), which then does not wait for the group's assignment:
        # the group is joined in the background and fetch() never blocks past its deadline.
        consumer.subscribe([lg._name(t) for t in self._topics], listener=_DropRevoked(self))
        self._consumer = consumer
        return consumer

    def _check_open(self) -> None:
        if self._closed or self._log._closed:
            raise LogClosed("event log or subscription is closed")

    async def fetch(self, max_records: int = 500, max_wait: float = 1.0) -> list[Record]:
        self._check_open()
        try:
            async with asyncio.timeout(self._log.request_timeout):
                consumer = await self._started()
            batches = await self._getmany(consumer, max_records, max_wait)
        except KAFKA_ERRORS as exc:
            if self._closed or self._log._closed:  # closed while waiting: say so
                raise LogClosed("event log or subscription is closed") from exc
            raise mapped(exc, f"fetch {self._topics}") from exc
        # From here on nothing may fail or wait: the consumer's position has moved past
        # these records, so they must reach the caller.
        records = self._records(batches)
        await self._note_positions(consumer)
        return records

    async def _getmany(
        self, consumer: AIOKafkaConsumer, max_records: int, max_wait: float
    ) -> dict[TopicPartition, list[Any]]:
        """One long-lived poll: a getmany() that outlives ``max_wait`` is left running and
        awaited again by the next fetch, never cancelled.

        getmany() waits for the group's assignment beyond its own timeout (a rebalance can
        wait out a session timeout for a member that died). Cancelling it would leave
        aiokafka's fetch context entered for good, and the consumer would then count as
        always polling: max_poll_interval could never evict a stuck member.
        """
        poll = self._poll
        if poll is None:
            poll = self._poll = asyncio.create_task(
                consumer.getmany(timeout_ms=int(max_wait * 1000), max_records=max_records)
            )
        done, _ = await asyncio.wait({poll}, timeout=max_wait + _POLL_GRACE)
        if not done:
            return {}
        self._poll = None
        batches: dict[TopicPartition, list[Any]] = poll.result()
        return batches

    def _records(self, batches: dict[TopicPartition, list[Any]]) -> list[Record]:
        prefix = len(self._log.topic_prefix)
        records: list[Record] = []
        for tp, msgs in batches.items():
            for msg in msgs:
                decoded = decode(tp.topic[prefix:], msg)
                if decoded is not None:
                    records.append(decoded[0])
            if msgs:  # undecodable messages are committed too, so they cannot block the group
                self._fetched[tp] = msgs[-1].offset + 1
        return records

    async def _note_positions(self, consumer: AIOKafkaConsumer) -> None:
        """Best effort, for lag(): never fails a fetch."""
        try:
            async with asyncio.timeout(self._log.request_timeout):
                for tp in consumer.assignment():
                    if consumer.highwater(tp) is not None:  # then its position is known
                        self._positions[tp] = await consumer.position(tp)
        except KAFKA_ERRORS as exc:
            log.debug("positions for lag not updated: %s", exc or type(exc).__name__)

    def lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition, the records not fetched yet: highwater - position.

        Empty before the first fetch. The highwater mark comes with the consumer's
        (pre)fetch responses, so it can trail the partition's end a little.
        """
        consumer = self._consumer
        if consumer is None:
            return {}
        assigned = consumer.assignment()
        prefix = len(self._log.topic_prefix)
        lags: dict[tuple[str, int], int] = {}
        for tp, position in self._positions.items():
            highwater = consumer.highwater(tp) if tp in assigned else None
            if highwater is not None:
                lags[(tp.topic[prefix:], tp.partition)] = max(0, highwater - position)
        return lags

    async def commit(self) -> None:
        self._check_open()
        consumer = self._consumer
        if consumer is None or not self._fetched:
            return
        assigned = consumer.assignment()
        offsets = {tp: n for tp, n in self._fetched.items() if tp in assigned}
        if not offsets:
            return
        try:
            async with asyncio.timeout(self._log.request_timeout):
                await consumer.commit(offsets)
        except KAFKA_ERRORS as exc:
            raise mapped(exc, f"commit {self._group}") from exc
        for tp, n in offsets.items():
            if self._fetched.get(tp) == n:
                del self._fetched[tp]

    async def close(self) -> None:
        self._closed = True
        self._log._subscriptions.discard(self)
        consumer, self._consumer = self._consumer, None
        poll, self._poll = self._poll, None
        self._fetched.clear()
        self._positions.clear()
        if consumer is not None:
            await quietly(consumer.stop(), self._log.request_timeout)
        if poll is not None:
            # Stopping the consumer ends a poll still waiting for an assignment.
            await quietly(_settled(poll), self._log.request_timeout)
