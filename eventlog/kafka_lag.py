"""A consumer group's lag on the Kafka log, read from outside the group.

The group's committed offsets come from the admin client and the partitions' ends from a
consumer of no group, kept for the log's life: a receiver asks every few hundred
milliseconds, and a client per question would cost a connection each time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from eventlog.base import GroupLag
from eventlog.kafka_admin import TopicAdmin
from eventlog.kafka_codec import quietly

PARTITIONS_TTL = 60.0
"""How long the topics' partitions are taken as known (they only grow, and rarely)."""


class LagReader:
    def __init__(self, client_args: dict[str, Any], admin: TopicAdmin, timeout: float) -> None:
        self._client_args = client_args
        self._admin = admin
        self._timeout = timeout
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._partitions: dict[tuple[str, ...], tuple[float, list[TopicPartition]]] = {}

    async def lag(self, group: str, topics: Sequence[str]) -> GroupLag:
        async with self._lock, asyncio.timeout(self._timeout):
            tps = await self._partitions_of(tuple(topics))
            if not tps:
                return GroupLag(0, 0)
            committed = await self._admin.committed(group, tps)
            consumer = await self._offsets_consumer()
            firsts = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
        behind = total = 0
        for tp in tps:
            # A partition the group never committed on is behind by all it holds.
            position = max(committed.get(tp, 0), firsts[tp])
            behind += max(0, ends[tp] - position)
            total += committed.get(tp, 0)
        return GroupLag(behind, total)

    async def _partitions_of(self, topics: tuple[str, ...]) -> list[TopicPartition]:
        known = self._partitions.get(topics)
        now = time.monotonic()
        if known is not None and now - known[0] < PARTITIONS_TTL:
            return known[1]
        tps = await self._admin.partitions_of(topics)
        self._partitions[topics] = (now, tps)
        return tps

    async def _offsets_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(**self._client_args, enable_auto_commit=False)
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        if self._consumer is not None:
            await quietly(self._consumer.stop(), self._timeout)
            self._consumer = None
