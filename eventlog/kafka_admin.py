"""The Kafka log's topics: created where missing, described for ``ping`` and replay."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from eventlog.base import EventLogError, LogUnavailable
from eventlog.kafka_codec import quietly


class TopicAdmin:
    """One admin client; knows which topics it has seen ready (created, with leaders)."""

    def __init__(
        self,
        client_args: dict[str, Any],
        *,
        partitions: int,
        replication: int,
        request_timeout: float,
        name: Callable[[str], str],
    ) -> None:
        self._client = AIOKafkaAdminClient(**client_args)
        self._partitions = partitions
        self._replication = replication
        self._request_timeout = request_timeout
        self._name = name
        self.ready: set[str] = set()
        """Topics (without prefix) known to exist with leaders."""

    async def start(self) -> None:
        await self._client.start()

    async def close(self) -> None:
        await quietly(self._client.close(), self._request_timeout)

    async def ensure(self, topics: Iterable[str]) -> None:
        """Create those of ``topics`` that are missing, and wait until they have leaders."""
        missing = [t for t in dict.fromkeys(topics) if t not in self.ready]
        if not missing:
            return
        new = [NewTopic(self._name(t), self._partitions, self._replication) for t in missing]
        timeout_ms = int(self._request_timeout * 1000)
        response = await self._client.create_topics(new, timeout_ms=timeout_ms)
        created = []
        for name, code, *message in response.topic_errors:
            if code not in (0, TopicAlreadyExistsError.errno):
                error = for_code(code)
                kind = LogUnavailable if error.retriable else EventLogError
                raise kind(f"kafka: cannot create topic {name}: {error.__name__} {message}")
            if code == 0:
                created.append(name)
        await self._until_led(created)
        self.ready.update(missing)

    async def _until_led(self, names: list[str]) -> None:
        """Wait (within the caller's deadline) until new topics have leaders everywhere.

        The controller answers CreateTopics before the brokers' metadata has the topic, so
        a ping or a consumer right after would not find it yet.
        """
        while names:
            described = await self._client.describe_topics(names)
            names = [
                t["topic"]
                for t in described
                if t["error_code"] != 0
                or not t["partitions"]
                or any(p["leader"] < 0 for p in t["partitions"])
            ]
            if names:
                await asyncio.sleep(0.05)

    async def check_led(self, topics: Sequence[str]) -> None:
        """Raise LogUnavailable unless every one of ``topics`` exists and has its leaders."""
        described = await self._client.describe_topics([self._name(t) for t in topics])
        for t in described:
            if t["error_code"] != 0:
                error = for_code(t["error_code"]).__name__
                raise LogUnavailable(f"kafka: topic {t['topic']}: {error}")
            if any(p["leader"] < 0 for p in t["partitions"]):
                raise LogUnavailable(f"kafka: topic {t['topic']} has a partition without leader")

    async def partitions_of(self, topics: Sequence[str]) -> list[TopicPartition]:
        """Every partition of those of ``topics`` that exist (full names, as on the cluster)."""
        names = {self._name(t) for t in topics}
        # All topics, not just ours: asking for a missing one by name would create it on a
        # broker with auto.create.topics.enable.
        described = await self._client.describe_topics()
        return [
            TopicPartition(t["topic"], p["partition"])
            for t in described
            if t["error_code"] == 0 and t["topic"] in names
            for p in t["partitions"]
        ]

    async def committed(
        self, group: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """The offsets ``group`` committed on ``partitions`` (those it committed on)."""
        found = await self._client.list_consumer_group_offsets(group, partitions=partitions)
        return {tp: meta.offset for tp, meta in found.items() if meta.offset >= 0}
