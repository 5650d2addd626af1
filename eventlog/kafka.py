"""The event log on Apache Kafka (aiokafka): the production backend.

Envelopes travel in CloudEvents' Kafka binary mode: the attributes as ``ce_*`` headers, ``data``
as the JSON value, ``subject`` as the key, so all events of one key land in one partition, in
order. The embedded log defines the semantics; where Kafka differs:

- ``Record.offset`` (and ``AppendResult.offsets``) count within the record's partition, and
  ``read(from_offset=n)`` starts every partition of every topic read at offset ``n``.
- Repeats (``dedup_keys``, ``dedup_latest``) cannot be checked against the topic by Kafka.
  Keys appended by this process are remembered, with the latest state of each "latest" key
  (the last ``DEDUP_WINDOW`` keys per topic), and repeats of those are skipped; across
  processes and restarts duplicates reach the log, and consumers stay idempotent (DESIGN,
  delivery semantics).
- An append that fails (``LogUnavailable`` within ``request_timeout`` s) may still have
  written some or all of its events, or write them later: the idempotent producer keeps
  what the cluster has not taken and delivers it once the cluster is back. A retry with
  the same dedup keys waits for that delivery instead of queueing another copy (and fails
  again while the cluster is away), so a webhook retried through an outage lands once.
- Records carry their append time as Kafka timestamp (the broker would refuse an event time
  far in the future, and retention would drop old ones early). ``read`` merges partitions by
  that timestamp; ``since``/``until`` compare the events' own ``time``, as the embedded log
  does. Seeking to ``since`` assumes an event was made no later than it was appended; a
  partition is read up to ``UNTIL_GRACE`` past ``until``, so an event appended later than
  that after it was made (an outbox relayed after a long outage) is missed when ``until``
  is given.

Here: the log's lifecycle, the producer and append, replay. Topics are created in
``kafka_admin``, appended keys remembered in ``kafka_dedup``, envelopes coded in
``kafka_codec``, consumers in ``kafka_consumer``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from eventlog.base import (
    AppendResult,
    GroupLag,
    LogClosed,
    LogUnavailable,
    Record,
    check_dedup,
)
from eventlog.kafka_admin import ALERTS_RETENTION_MS, TopicAdmin
from eventlog.kafka_codec import KAFKA_ERRORS, headers, mapped, quietly, value
from eventlog.kafka_consumer import UNTIL_GRACE, KafkaSubscription, Replay
from eventlog.kafka_dedup import Claim, Mark, RecentKeys, marks
from eventlog.kafka_lag import LagReader
from eventlog.kafka_security import KafkaSecurity
from schemas import TOPICS, Envelope


@functools.lru_cache(maxsize=65536)
def partition_index(key: bytes, count: int) -> int:
    """The Java client's default partitioner (murmur2), as aiokafka's, but cached: keys
    repeat (every alert of a group, every event of an incident) and aiokafka's pure-Python
    murmur2 costs ~20 us a message."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % count


__all__ = ["DEDUP_WINDOW", "UNTIL_GRACE", "KafkaLog", "KafkaSubscription"]

log = logging.getLogger(__name__)

DEDUP_WINDOW = 100_000  # dedup keys remembered per topic


class KafkaLog:
    """The EventLog protocol over a Kafka cluster; one producer and one admin client."""

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str = "sevpipe",
        partitions: int = 3,
        replication: int = 1,
        request_timeout: float = 5.0,
        topic_prefix: str = "",
        alerts_retention_ms: int = ALERTS_RETENTION_MS,
        security: KafkaSecurity | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.partitions = partitions
        self.replication = replication
        self.request_timeout = request_timeout
        self.topic_prefix = topic_prefix
        self.alerts_retention_ms = alerts_retention_ms
        self.security = security or KafkaSecurity()
        # Checked and files read now: a bad setting fails at construction, not on first use.
        self._security_args = self.security.client_args()
        self._admin: TopicAdmin | None = None
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._recent = RecentKeys(DEDUP_WINDOW)
        self._partitions: dict[str, list[int]] = {}
        self._deliveries: set[asyncio.Task[list[Any]]] = set()
        self._subscriptions: set[KafkaSubscription] = set()
        self._lag: LagReader | None = None
        self._closed = False

    async def __aenter__(self) -> KafkaLog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def _timeout_ms(self) -> int:
        return int(self.request_timeout * 1000)

    def _client_args(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            "request_timeout_ms": self._timeout_ms,
            **self._security_args,
        }

    def security_args(self) -> dict[str, Any]:
        """TLS and SASL arguments for a client of this log (one SSL context for all)."""
        return dict(self._security_args)

    def _name(self, topic: str) -> str:
        return self.topic_prefix + topic

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, and create sevpipe's topics where missing."""
        if self._closed:
            raise LogClosed("event log is closed")
        if self._admin is not None:
            return
        admin = TopicAdmin(
            self._client_args(),
            partitions=self.partitions,
            replication=self.replication,
            request_timeout=self.request_timeout,
            name=self._name,
            alerts_retention_ms=self.alerts_retention_ms,
        )
        try:
            async with asyncio.timeout(self.request_timeout):
                await admin.start()
            self._admin = admin
            async with asyncio.timeout(self.request_timeout):
                await self._ensure_topics(TOPICS)
                await self._producer_ready()
        except BaseException as exc:
            self._admin = None
            await admin.close()
            if isinstance(exc, KAFKA_ERRORS):
                raise mapped(exc, f"cannot start on {self.bootstrap}") from exc
            raise

    async def close(self) -> None:
        """Close subscriptions and clients. Events an outage left with the producer (their
        appends failed) get ``2 * request_timeout`` s to be delivered, then are dropped."""
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subscriptions):
            await sub.close()
        if self._producer is not None:
            self._retire(self._producer)
        await asyncio.gather(*list(self._retiring), return_exceptions=True)
        for delivery in list(self._deliveries):  # what the stopped producer still held
            delivery.cancel()
        await asyncio.gather(*list(self._deliveries), return_exceptions=True)
        if self._lag is not None:
            await self._lag.close()
        if self._admin is not None:
            await self._admin.close()

    async def _ensure_topics(self, topics: Iterable[str]) -> None:
        if self._admin is None:
            raise LogUnavailable("event log not started")
        await self._admin.ensure(topics)

    async def _producer_ready(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self._producer is not None and _sender_died(self._producer):
                log.warning("kafka producer failed for good; starting a new one")
                self._retire(self._producer)
            if self._producer is None:
                producer = AIOKafkaProducer(
                    **self._client_args(), acks="all", enable_idempotence=True
                )
                try:
                    await producer.start()
                except BaseException:
                    self._retire(producer)
                    raise
                self._producer = producer
            return self._producer

    def _retire(self, producer: AIOKafkaProducer) -> None:
        """Stop a producer in the background (bounded: see ``close``)."""
        self._partitions.clear()  # a new producer reads the metadata anew
        if self._producer is producer:
            self._producer = None
        task = asyncio.create_task(quietly(producer.stop(), 2 * self.request_timeout))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- append ----------------------------------------------------------------------------

    async def append(
        self,
        topic: str,
        events: Sequence[Envelope],
        *,
        dedup_keys: Sequence[str] | None = None,
        dedup_latest: Sequence[tuple[str, str]] | None = None,
    ) -> AppendResult:
        if self._closed:
            raise LogClosed("event log is closed")
        check_dedup(len(events), dedup_keys, dedup_latest)
        if not events:
            return AppendResult(())
        try:
            async with asyncio.timeout(self.request_timeout):
                await self._ensure_topics([topic])
                producer = await self._producer_ready()
                return await self._append(producer, topic, events, marks(dedup_keys, dedup_latest))
        except KAFKA_ERRORS as exc:
            # The producer stays: an idempotent producer retries what it holds until the
            # broker takes it (aiokafka never expires those batches), so it recovers by
            # itself once the cluster is back; the events of this append may land then too.
            log.warning("append to %s failed: %s", topic, exc or type(exc).__name__)
            raise mapped(exc, f"append to {topic}") from exc

    async def _append(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        events: Sequence[Envelope],
        dedup: Sequence[Mark] | None,
    ) -> AppendResult:
        if dedup is None:
            metas = await self._send(producer, topic, events)
            return AppendResult(tuple(m.offset for m in metas))
        claim = await self._recent.claim(topic, dedup)
        delivery = asyncio.create_task(
            self._send(producer, topic, [events[i] for i in claim.fresh])
        )
        self._deliveries.add(delivery)
        delivery.add_done_callback(lambda d: self._settle(d, claim))
        # The keys stay claimed until the cluster takes or refuses the events, even when
        # this append gives up first (an outage): the producer keeps them and delivers
        # them later, so a retry must not queue a second copy behind them.
        metas = await asyncio.shield(delivery)
        offsets: list[int | None] = [None] * len(events)
        for i, meta in zip(claim.fresh, metas, strict=True):
            offsets[i] = meta.offset
        return AppendResult(tuple(offsets))

    def _settle(self, delivery: asyncio.Task[list[Any]], claim: Claim) -> None:
        self._deliveries.discard(delivery)
        delivered = not delivery.cancelled() and delivery.exception() is None
        self._recent.settle(claim, delivered=delivered)

    async def _send(
        self, producer: AIOKafkaProducer, topic: str, events: Sequence[Envelope]
    ) -> list[Any]:
        name = self._name(topic)
        partitions = self._partitions.get(name)
        if partitions is None:
            partitions = self._partitions[name] = sorted(await producer.partitions_for(name))
        futures = []
        for e in events:
            key = e.subject.encode()
            futures.append(
                await producer.send(
                    name,
                    value(e),
                    key=key,
                    headers=headers(e),
                    partition=partitions[partition_index(key, len(partitions))],
                )
            )
        # acks=all: each future resolves once the in-sync replicas have the batch.
        return list(await asyncio.gather(*futures))

    async def ping(self) -> None:
        """Raise LogUnavailable unless the cluster answers and every topic has a leader."""
        if self._closed or self._admin is None:
            raise LogUnavailable("event log is closed or not started")
        try:
            async with asyncio.timeout(self.request_timeout):
                await self._admin.check_led(TOPICS)
        except KAFKA_ERRORS as exc:
            raise mapped(exc, "ping") from exc

    # -- consumer groups -------------------------------------------------------------------

    async def group_lag(self, group: str, topics: Sequence[str]) -> GroupLag:
        if self._closed:
            raise LogClosed("event log is closed")
        if self._admin is None:
            raise LogUnavailable("event log not started")
        if self._lag is None:
            self._lag = LagReader(self._client_args(), self._admin, self.request_timeout)
        try:
            return await self._lag.lag(group, topics)
        except TimeoutError as exc:
            raise LogUnavailable(f"kafka: no group lag within {self.request_timeout} s") from exc
        except KAFKA_ERRORS as exc:
            raise mapped(exc, "group lag") from exc

    def subscribe(self, topics: Sequence[str], group: str) -> KafkaSubscription:
        sub = KafkaSubscription(self, tuple(topics), group)
        self._subscriptions.add(sub)
        return sub

    # -- replay ----------------------------------------------------------------------------

    async def read(
        self,
        topics: Sequence[str] | None = None,
        *,
        from_offset: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        last: int | None = None,
    ) -> AsyncIterator[Record]:
        """Replay without a group, up to the end offsets seen when it starts.

        ``topics=None`` reads sevpipe's topics and those this log created or appended to.
        """
        if self._closed:
            raise LogClosed("event log is closed")
        if self._admin is None:
            raise LogUnavailable("event log not started")
        wanted = list(topics) if topics is not None else sorted(set(TOPICS) | self._admin.ready)
        since_ms = int(since.timestamp() * 1000) if since else None
        until_ms = int(until.timestamp() * 1000) if until else None
        consumer = AIOKafkaConsumer(
            **self._client_args(), enable_auto_commit=False, auto_offset_reset="earliest"
        )
        try:
            async with asyncio.timeout(self.request_timeout):
                await consumer.start()
                bounds = await self._seek(consumer, wanted, from_offset, since_ms, last)
            replay = Replay(consumer, bounds, self.request_timeout, self.topic_prefix)
            async for record, time_ms in replay.merged(until_ms):
                if (since_ms is None or time_ms >= since_ms) and (
                    until_ms is None or time_ms < until_ms
                ):
                    yield record
        except KAFKA_ERRORS as exc:
            raise mapped(exc, "read") from exc
        finally:
            await quietly(consumer.stop(), self.request_timeout)

    async def _seek(
        self,
        consumer: AIOKafkaConsumer,
        topics: Sequence[str],
        from_offset: int | None,
        since_ms: int | None,
        last: int | None = None,
    ) -> dict[TopicPartition, tuple[int, int]]:
        """Assign every partition of ``topics`` and seek; per partition, (start, end)."""
        assert self._admin is not None  # noqa: S101
        tps = await self._admin.partitions_of(topics)
        if not tps:
            return {}
        consumer.assign(tps)
        first = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        starts = {tp: max(first[tp], from_offset or 0) for tp in tps}
        if last is not None:
            starts = {tp: max(start, ends[tp] - max(last, 0)) for tp, start in starts.items()}
        if since_ms is not None:
            found = await consumer.offsets_for_times({tp: max(since_ms, 0) for tp in tps})
            for tp, hit in found.items():
                starts[tp] = max(starts[tp], hit.offset if hit is not None else ends[tp])
        for tp, start in starts.items():
            consumer.seek(tp, start)
        return {tp: (starts[tp], ends[tp]) for tp in tps if starts[tp] < ends[tp]}


def _sender_died(producer: AIOKafkaProducer) -> bool:
    """Whether the producer's background sender has ended (a fatal error, such as an
    out-of-order sequence after a broker lost data): it then never delivers again.

    aiokafka has no public flag for this; read defensively, so that a change of its
    internals only loses the replacement, never breaks an append.
    """
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    return isinstance(task, asyncio.Task) and task.done()
