"""Kafka goes away under load and comes back: ``sevpipe run`` on Kafka + PostgreSQL + Redis.

While clients keep posting webhooks (retrying 503s and transport errors, as Alertmanager
does), the test's own Kafka is killed: the receiver answers 503 with Retry-After and /readyz
fails. Kafka is started again and sevpipe recovers by itself, with no restart: /readyz is
ready, webhooks are answered 200 again, and the classifier catches up. Every alert answered
200 is then in the log exactly once, and in its group's one incident.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from services import unique_name

from .harness import Launcher, Server, alert_events, group_webhook, incidents_with_alerts
from .outage import PrivateServices

pytestmark = pytest.mark.e2e

CLIENTS = 4
GROUPS_PER_CLIENT = 5
PACE = 0.02  # between a client's webhooks
RETRY_DELAY = 0.1
REQUEST_TIMEOUT = 15.0  # longer than the log's own deadline (5 s) for an append
OKS_BEFORE = 60  # 200s before Kafka is killed
OKS_AFTER = 60  # 200s after it is back, before the clients stop
PHASE_TIMEOUT = 60.0
CATCH_UP_TIMEOUT = 90.0  # the stages back off (jittered, up to 30 s) while Kafka is away
POLL = 0.1
TEST_TIMEOUT = 170.0
BASE_TIME = datetime(2026, 3, 4, 6, 0, tzinfo=UTC)


@pytest.fixture
def private() -> Iterator[PrivateServices]:
    services = PrivateServices()
    try:
        services.up()
        yield services
    finally:
        services.close()


def group_key(g: int) -> str:
    return f'{{}}:{{service="outage-{g:02d}"}}'


def webhook(g: int, r: int) -> dict[str, Any]:
    service = f"outage-{g:02d}"
    starts = BASE_TIME + timedelta(seconds=g * 1000 + r)
    alert = {
        "status": "firing",
        "labels": {"alertname": "QueueBacklog", "service": service, "impact": "performance"},
        "annotations": {"summary": f"{service} backlog, round {r}"},
        "startsAt": starts.isoformat().replace("+00:00", "Z"),
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": f"{g:02d}-{r:04d}",
    }
    return group_webhook(group_key(g), service, "QueueBacklog", [alert])


@dataclass
class Stream:
    url: str
    oks: int = 0
    unavailable: int = 0  # 503s
    without_retry_after: int = 0
    transport_errors: int = 0
    acked: dict[str, str] = field(default_factory=dict)  # fingerprint -> group key
    retried: set[str] = field(default_factory=set)  # fingerprints of requests that failed once
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Event = field(default_factory=asyncio.Event)  # set on every 200
    refused: asyncio.Event = field(default_factory=asyncio.Event)  # a 503 came

    async def wait_oks(self, n: int) -> None:
        while self.oks < n:
            self.progress.clear()
            await self.progress.wait()


async def post_until_ok(
    session: aiohttp.ClientSession, stream: Stream, body: dict[str, Any]
) -> None:
    payload = orjson.dumps(body)
    fingerprint = body["alerts"][0]["fingerprint"]
    while True:
        try:
            async with session.post(
                stream.url, data=payload, headers={"Content-Type": "application/json"}
            ) as resp:
                status, retry_after = resp.status, resp.headers.get("Retry-After")
                answer = await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            stream.transport_errors += 1
            stream.retried.add(fingerprint)
            await asyncio.sleep(RETRY_DELAY)
            continue
        if status == 503:
            stream.unavailable += 1
            stream.refused.set()
            stream.without_retry_after += retry_after is None
            stream.retried.add(fingerprint)
            await asyncio.sleep(RETRY_DELAY)
            continue
        assert status == 200, (status, answer)
        stream.oks += 1
        stream.acked[fingerprint] = body["groupKey"]
        stream.progress.set()
        return


async def client(session: aiohttp.ClientSession, stream: Stream, c: int) -> None:
    groups = [c * GROUPS_PER_CLIENT + i for i in range(GROUPS_PER_CLIENT)]
    r = 0
    while not stream.stop.is_set():
        for g in groups:
            await post_until_ok(session, stream, webhook(g, r))
            await asyncio.sleep(PACE)
        r += 1


async def readyz(session: aiohttp.ClientSession, server: Server) -> int:
    async with session.get(f"{server.base_url}/readyz") as resp:
        await resp.read()
        return resp.status


async def wait_readyz(session: aiohttp.ClientSession, server: Server, status: int) -> None:
    async with asyncio.timeout(PHASE_TIMEOUT):
        while True:
            if await readyz(session, server) == status:
                return
            await asyncio.sleep(POLL)


@dataclass
class Outage:
    oks_before: int = 0
    unavailable_during: int = 0


async def outage(
    session: aiohttp.ClientSession, server: Server, stream: Stream, kafka: PrivateServices
) -> Outage:
    seen = Outage()
    async with asyncio.timeout(PHASE_TIMEOUT):
        await stream.wait_oks(OKS_BEFORE)
    seen.oks_before = stream.oks
    await asyncio.to_thread(kafka.crash_kafka)
    await wait_readyz(session, server, 503)
    async with asyncio.timeout(PHASE_TIMEOUT):
        await stream.refused.wait()
    seen.unavailable_during = stream.unavailable
    await asyncio.to_thread(kafka.restart)
    await wait_readyz(session, server, 200)
    async with asyncio.timeout(PHASE_TIMEOUT):
        await stream.wait_oks(stream.oks + OKS_AFTER)
    stream.stop.set()
    return seen


async def incidents(session: aiohttp.ClientSession, server: Server) -> list[dict[str, Any]]:
    return await incidents_with_alerts(session, server.base_url)


async def test_kafka_outage_answers_503_then_recovers_by_itself_losing_and_doubling_nothing(
    private: PrivateServices, launcher: Launcher, data_dir: Path
) -> None:
    env = {**private.env, "SEVPIPE_KAFKA_TOPIC_PREFIX": unique_name("sevpipe-outage") + "."}
    server = await asyncio.to_thread(launcher.start, data_dir, env=env)
    stream = Stream(server.alerts_url)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with asyncio.timeout(TEST_TIMEOUT), aiohttp.ClientSession(timeout=timeout) as session:
        assert await readyz(session, server) == 200
        watcher = asyncio.create_task(outage(session, server, stream, private))
        clients = [asyncio.create_task(client(session, stream, c)) for c in range(CLIENTS)]
        try:
            seen = await watcher
        finally:
            stream.stop.set()
        await asyncio.gather(*clients)
        assert await readyz(session, server) == 200

        # Recovered by itself, the classifier too: each group's one incident has its alerts.
        want: dict[str, set[str]] = {}
        for fingerprint, key in stream.acked.items():
            want.setdefault(key, set()).add(fingerprint)
        async with asyncio.timeout(CATCH_UP_TIMEOUT):
            while True:
                found = await incidents(session, server)
                got = {i["key"]: {a["fingerprint"] for a in i["alerts"]} for i in found}
                if got == want:
                    break
                await asyncio.sleep(POLL * 3)
        assert sorted(i["key"] for i in found) == sorted(want)  # one incident per group

    assert server.proc.poll() is None, "sevpipe was not meant to stop"
    assert seen.oks_before >= OKS_BEFORE
    assert seen.unavailable_during > 0
    assert stream.without_retry_after == 0
    assert stream.oks >= seen.oks_before + OKS_AFTER

    # Every alert answered 200 is in the log exactly once.
    events = await asyncio.to_thread(alert_events, data_dir, env=env)
    stored = Counter(e["data"]["fingerprint"] for e in events)
    assert set(stored) == set(stream.acked)
    twice = {fp: n for fp, n in stored.items() if n > 1}
    assert not twice, (twice, len(stream.retried))
    assert all(e["subject"] == stream.acked[e["data"]["fingerprint"]] for e in events)
    assert server.stop() == 0, server.stderr()
