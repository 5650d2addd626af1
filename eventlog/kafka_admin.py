"""The Kafka log's topics: created where missing (with explicit configs), described for
``ping`` and replay.

Topics sevpipe creates get their retention and ``min.insync.replicas`` set on the topic, not
left to the broker's defaults: the alerts are kept for ``backtest`` (30 days by default), the
incidents, actions, notifications and dead letters forever (``rebuild`` reads them all), and
``min.insync.replicas`` is min(2, replication) so that ``acks=all`` means two copies where
there are two. A topic that already exists is never changed: its configs are compared with
these, and each difference is logged as a warning (topic, key, found, wanted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from eventlog.base import EventLogError, LogUnavailable
from eventlog.kafka_codec import quietly
from schemas import TOPIC_ACTIONS, TOPIC_ALERTS, TOPIC_INCIDENTS, TOPIC_NOTIFICATIONS
from schemas.deadletter import TOPIC_DEADLETTER

log = logging.getLogger(__name__)

ALERTS_RETENTION_MS = 30 * 24 * 3600 * 1000  # backtest --since 30d
KEPT_FOREVER = frozenset({TOPIC_INCIDENTS, TOPIC_ACTIONS, TOPIC_NOTIFICATIONS, TOPIC_DEADLETTER})


def topic_configs(
    topic: str, *, replication: int, alerts_retention_ms: int = ALERTS_RETENTION_MS
) -> dict[str, str]:
    """The configs sevpipe gives ``topic`` (unprefixed) when it creates it."""
    configs = {"min.insync.replicas": str(min(2, replication))}
    if topic == TOPIC_ALERTS:
        configs["retention.ms"] = str(alerts_retention_ms)
    elif topic in KEPT_FOREVER:
        configs["retention.ms"] = "-1"
    return configs


def config_differences(
    found: Mapping[str, str | None], wanted: Mapping[str, str]
) -> list[tuple[str, str | None, str]]:
    """(key, found, wanted) for each of ``wanted`` that ``found`` does not have."""
    return [(k, found.get(k), v) for k, v in wanted.items() if found.get(k) != v]


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
        alerts_retention_ms: int = ALERTS_RETENTION_MS,
    ) -> None:
        self._client = AIOKafkaAdminClient(**client_args)
        self._partitions = partitions
        self._replication = replication
        self._alerts_retention_ms = alerts_retention_ms
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
        wanted = {self._name(t): self.configs(t) for t in missing}
        new = [
            NewTopic(name, self._partitions, self._replication, topic_configs=configs)
            for name, configs in wanted.items()
        ]
        timeout_ms = int(self._request_timeout * 1000)
        response = await self._client.create_topics(new, timeout_ms=timeout_ms)
        created: list[str] = []
        existing: list[str] = []
        for name, code, *message in response.topic_errors:
            if code not in (0, TopicAlreadyExistsError.errno):
                error = for_code(code)
                kind = LogUnavailable if error.retriable else EventLogError
                raise kind(f"kafka: cannot create topic {name}: {error.__name__} {message}")
            (created if code == 0 else existing).append(name)
        await self._until_led(created)
        if existing:
            await self._check_configs({name: wanted[name] for name in existing})
        self.ready.update(missing)

    def configs(self, topic: str) -> dict[str, str]:
        """The configs a new ``topic`` (unprefixed) is created with."""
        return topic_configs(
            topic, replication=self._replication, alerts_retention_ms=self._alerts_retention_ms
        )

    async def describe_configs(self, names: Sequence[str]) -> dict[str, dict[str, str | None]]:
        """Each topic's (full name) current configs, as the cluster has them."""
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        found: dict[str, dict[str, str | None]] = {}
        for response in await self._client.describe_configs(resources):
            for code, message, _type, name, entries, *_ in response.resources:
                if code != 0:
                    error = for_code(code)
                    kind = LogUnavailable if error.retriable else EventLogError
                    raise kind(f"kafka: cannot describe topic {name}: {error.__name__} {message}")
                found[name] = {entry[0]: entry[1] for entry in entries}
        return found

    async def _check_configs(self, wanted: Mapping[str, Mapping[str, str]]) -> None:
        """Warn about each config of an existing topic that differs from what sevpipe would
        have given it. Never changes it: the cluster's owners may have reasons."""
        try:
            found = await self.describe_configs(list(wanted))
        except LogUnavailable:
            raise
        except EventLogError as exc:
            # E.g. no DescribeConfigs permission on a cluster with ACLs: a check that cannot
            # be made must not keep sevpipe from starting.
            log.warning("kafka: cannot check the configs of existing topics: %s", exc)
            return
        for name, configs in wanted.items():
            for key, value, want in config_differences(found.get(name, {}), configs):
                log.warning(
                    "kafka topic %s: %s is %s, sevpipe wants %s (the topic is left as it is)",
                    name,
                    key,
                    value,
                    want,
                )

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
