"""The classifier waits out a PostgreSQL outage: it stops consuming, commits nothing,
retries with backoff, and resumes by itself when the server is back; nothing is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from incident_support import alert_json, append_webhook, webhook
from prometheus_client import CollectorRegistry
from services import Services, fresh_database
from tcp_proxy import TcpProxy

from classifier.policy import default_policy
from classifier.stage import ClassifierMetrics, ClassifierStage
from eventlog import EmbeddedLog
from schemas import TOPIC_ALERTS, TOPIC_INCIDENTS
from store.base import IncidentQuery
from store.postgres import PostgresStore


@pytest.fixture
async def dsn(services: Services) -> AsyncIterator[str]:
    async with fresh_database(services, "sevpipe_outage") as url:
        yield url


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(600):  # bounded: 30 s
        if await check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


async def test_classifier_waits_out_a_postgres_outage(dsn: str, tmp_path: Path) -> None:
    proxy = TcpProxy(int(urlsplit(dsn).port or 5432))
    await proxy.start()
    parts = urlsplit(dsn)
    proxied = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
    async with (
        EmbeddedLog(tmp_path / "events.db") as log,
        PostgresStore(proxied, min_size=1, max_size=2, command_timeout=2) as store,
    ):
        stage = ClassifierStage(
            log, store, default_policy(), ClassifierMetrics(CollectorRegistry()), max_backoff=0.2
        )
        stop = asyncio.Event()
        task = asyncio.create_task(stage.run(stop))

        async def keys() -> set[str]:
            return {i.key for i in await store.list_incidents(IncidentQuery())}

        await append_webhook(log, webhook("before", alert_json("a1")))
        await _until(lambda: _has(keys, "before"), "the first incident")

        async def committed() -> bool:  # stored is not yet relayed and committed
            return not await log.subscribe([TOPIC_ALERTS], stage.group).fetch(1, max_wait=0.0)

        await _until(committed, "the first batch committed")

        await proxy.cut()
        during = await append_webhook(log, webhook("during", alert_json("b1")))
        await asyncio.sleep(1.0)  # several failed attempts and backoffs
        assert not task.done(), "the stage must wait the outage out, not die"
        # Nothing about the alert that arrived during the outage was committed or decided:
        # a fresh consumer of the stage's group still gets it.
        peek = log.subscribe([TOPIC_ALERTS], stage.group)
        pending = await peek.fetch(100, max_wait=0.1)
        assert [r.envelope.id for r in pending] == [e.id for e in during]
        incident_keys = [
            r.envelope.data["incident"]["key"] async for r in log.read([TOPIC_INCIDENTS])
        ]
        assert incident_keys == ["before"]

        await proxy.start()
        await _until(lambda: _has(keys, "during"), "the classifier to resume")
        stop.set()
        await asyncio.wait_for(task, 30)

        assert await keys() == {"before", "during"}
        opened = [
            r.envelope.data["incident"]["key"]
            async for r in log.read([TOPIC_INCIDENTS])
            if r.envelope.type == "incident.opened"
        ]
        assert sorted(opened) == ["before", "during"]
    await proxy.cut()


async def _has(keys: Callable[[], Awaitable[set[str]]], key: str) -> bool:
    try:
        return key in await keys()
    except Exception:  # noqa: BLE001 - the store may be down while we poll
        return False
