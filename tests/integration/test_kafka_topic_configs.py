"""Topics sevpipe creates carry explicit configs; an existing topic that differs is warned
about at start and left as it is. On the real test broker, topics of their own per test."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from services import Services, unique_name

from eventlog import KafkaLog
from eventlog.kafka_admin import TopicAdmin
from schemas import TOPIC_ACTIONS, TOPIC_ALERTS, TOPIC_INCIDENTS, TOPIC_NOTIFICATIONS, TOPICS
from schemas.deadletter import TOPIC_DEADLETTER

DAY_MS = 24 * 3600 * 1000


async def topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
        )
    finally:
        await admin.close()
    return {r[3]: {e[0]: e[1] for e in r[4]} for response in responses for r in response.resources}


async def test_new_topics_get_retention_and_min_insync_replicas(services: Services) -> None:
    prefix = unique_name("topiccfg") + "."
    async with KafkaLog(services.kafka_bootstrap, topic_prefix=prefix) as log:
        await log._ensure_topics([TOPIC_DEADLETTER])
    names = [prefix + t for t in (*TOPICS, TOPIC_DEADLETTER)]
    found = await topic_configs(services.kafka_bootstrap, names)
    assert found[prefix + TOPIC_ALERTS]["retention.ms"] == str(30 * DAY_MS)
    for topic in (TOPIC_INCIDENTS, TOPIC_ACTIONS, TOPIC_NOTIFICATIONS, TOPIC_DEADLETTER):
        assert found[prefix + topic]["retention.ms"] == "-1", topic
    for name in names:
        assert found[name]["min.insync.replicas"] == "1", name  # min(2, replication 1)


async def test_alerts_retention_is_a_setting(services: Services) -> None:
    prefix = unique_name("topiccfg") + "."
    async with KafkaLog(
        services.kafka_bootstrap, topic_prefix=prefix, alerts_retention_ms=7 * DAY_MS
    ):
        pass
    found = await topic_configs(services.kafka_bootstrap, [prefix + TOPIC_ALERTS])
    assert found[prefix + TOPIC_ALERTS]["retention.ms"] == str(7 * DAY_MS)


async def test_an_existing_topic_that_differs_is_warned_about_and_left_alone(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = unique_name("topiccfg") + "."
    alerts = prefix + TOPIC_ALERTS
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(alerts, 1, 1, topic_configs={"retention.ms": str(DAY_MS)})]
        )
    finally:
        await admin.close()

    with caplog.at_level(logging.WARNING, logger="eventlog.kafka_admin"):
        async with KafkaLog(services.kafka_bootstrap, topic_prefix=prefix):
            pass
    warnings = [r.getMessage() for r in caplog.records if r.name == "eventlog.kafka_admin"]
    assert warnings == [
        f"kafka topic {alerts}: retention.ms is {DAY_MS}, sevpipe wants {30 * DAY_MS}"
        " (the topic is left as it is)"
    ]
    found = await topic_configs(services.kafka_bootstrap, [alerts])
    assert found[alerts]["retention.ms"] == str(DAY_MS)  # unchanged
    # The topics sevpipe created itself match, and are not warned about.
    assert not any(prefix + TOPIC_INCIDENTS in w for w in warnings)


class _NoDescribe:
    """An admin client whose DescribeConfigs is refused, as on a cluster with ACLs."""

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        refused: tuple[Any, ...] = (29, "Topic authorization failed.", 2, resources[0].name, [])
        return [SimpleNamespace(resources=[refused])]


async def test_a_check_that_cannot_be_made_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = TopicAdmin({}, partitions=1, replication=1, request_timeout=1, name=str)
    admin._client = _NoDescribe()
    with caplog.at_level(logging.WARNING, logger="eventlog.kafka_admin"):
        await admin._check_configs({"sevpipe.alerts": {"retention.ms": "1"}})
    assert "cannot check the configs of existing topics" in caplog.text
    assert "TopicAuthorizationFailed" in caplog.text
