"""kill -9 mid-stream loses no acknowledged alert and stores none twice.

Several clients post Alertmanager webhooks back to back and retry what fails the way
Alertmanager does (transport errors and 5xx). After a few hundred 200s the server is killed
with SIGKILL while requests are in flight, restarted on the same data dir (or the same Kafka
topics and database), and the clients finish. ``sevpipe replay`` must then show every alert
that was answered 200, unchanged and exactly once.

On Kafka "exactly once" has one documented exception (eventlog/kafka.py): a request that was
in flight at the kill may have reached the log without its answer, and its retry on the new
process appends it again, since dedup keys are only remembered per process. Only such alerts
may then be in the log twice; the classifier's idempotency keys absorb them downstream.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from .backends import Backend
from .harness import Launcher, Server, alert_events, group_webhook

pytestmark = pytest.mark.e2e

CLIENTS = 6
WEBHOOKS_PER_CLIENT = 150
KILL_AFTER_OKS = 400  # 200s seen before the kill
RETRY_DELAY = 0.05
REQUEST_TIMEOUT = 5.0
STORM_TIMEOUT = 20.0

AlertKey = tuple[str, str, datetime, str]  # groupKey, fingerprint, startsAt, status
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
BASE_TIME = datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))


def _rfc3339(moment: datetime, *, offset: timezone) -> str:
    text = moment.astimezone(offset).isoformat()
    return text.replace("+00:00", "Z")


def make_webhook(client: int, seq: int) -> dict[str, Any]:
    """A realistic body: 2-5 alerts of one group, each with its own fingerprint and startsAt."""
    service = f"svc-{client}-{seq % 7}"
    group_key = f'{{}}/{{severity=~"^(?:critical|warning)$"}}:{{service="{service}"}}'
    count = 2 + seq % 4
    all_resolved = seq % 5 == 0
    alerts = []
    for i in range(count):
        resolved = all_resolved or (seq % 3 == 0 and i == count - 1)
        starts = BASE_TIME + timedelta(seconds=(client * 10_000 + seq) * 10 + i, microseconds=i)
        offset = PLUS_TWO if (seq + i) % 2 else UTC
        labels = {
            "alertname": "HighErrorRate",
            "service": service,
            "instance": f"10.0.{client}.{i}:9100",
            "job": "checkout-api",
            "severity": "critical" if i == 0 else "warning",
            "impact": "error_rate",
            "user_impact_pct": f"{(seq * 7 + i) % 100}%",
        }
        annotations = {
            "summary": f"{service}: 5xx ratio above 5% on instance {i}",
            "description": f'Erreurs élevées — {seq}/{i} ✓ «quoted» "dq" \\ backslash',
            "runbook_url": "https://runbooks.example.com/high-error-rate",
        }
        alerts.append(
            {
                "status": "resolved" if resolved else "firing",
                "labels": labels,
                "annotations": annotations,
                "startsAt": _rfc3339(starts, offset=offset),
                "endsAt": (
                    _rfc3339(starts + timedelta(minutes=5), offset=UTC)
                    if resolved
                    else GO_ZERO_TIME
                ),
                "generatorURL": f"http://prometheus:9090/graph?g0.expr=rate%28x%29&c={client}",
                "fingerprint": f"{client:02x}{seq:06x}{i:08x}",
            }
        )
    firing = any(a["status"] == "firing" for a in alerts)
    status = "firing" if firing else "resolved"
    return group_webhook(group_key, service, "HighErrorRate", alerts, status=status)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def alert_key(group_key: str, alert: dict[str, Any]) -> AlertKey:
    return (group_key, alert["fingerprint"], _parse_time(alert["startsAt"]), alert["status"])


@dataclass
class Target:
    """Where the clients post; the restart points it at the new port."""

    url: str


@dataclass
class Tally:
    acked: dict[AlertKey, dict[str, Any]] = field(default_factory=dict)
    oks: int = 0
    in_flight: int = 0
    transport_errors: int = 0
    server_errors: int = 0
    appended: int = 0
    repeats: int = 0
    retried: set[AlertKey] = field(default_factory=set)  # alerts of requests that failed once
    enough: asyncio.Event = field(default_factory=asyncio.Event)
    sending: asyncio.Event = field(default_factory=asyncio.Event)  # a request is out

    def started(self) -> None:
        self.in_flight += 1
        self.sending.set()

    def finished(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.sending.clear()

    def failed(self, body: dict[str, Any]) -> None:
        self.retried.update(alert_key(body["groupKey"], a) for a in body["alerts"])


async def post_until_ok(
    session: aiohttp.ClientSession, target: Target, body: dict[str, Any], tally: Tally
) -> None:
    """Post like Alertmanager: retry transport errors and 5xx, give up on nothing else."""
    payload = orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    while True:
        tally.started()
        try:
            async with session.post(target.url, data=payload, headers=headers) as resp:
                status = resp.status
                answer = await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            tally.transport_errors += 1
            tally.failed(body)
            await asyncio.sleep(RETRY_DELAY)
            continue
        finally:
            tally.finished()
        if status >= 500:
            tally.server_errors += 1
            tally.failed(body)
            await asyncio.sleep(RETRY_DELAY)
            continue
        assert status == 200, (status, answer)
        result = orjson.loads(answer)
        assert result["accepted"] == len(body["alerts"]), result
        tally.appended += result["appended"]
        tally.repeats += result["repeats"]
        for alert in body["alerts"]:
            tally.acked[alert_key(body["groupKey"], alert)] = alert
        tally.oks += 1
        if tally.oks >= KILL_AFTER_OKS:
            tally.enough.set()
        return


async def run_client(
    session: aiohttp.ClientSession, target: Target, client: int, tally: Tally
) -> None:
    for seq in range(WEBHOOKS_PER_CLIENT):
        await post_until_ok(session, target, make_webhook(client, seq), tally)


@dataclass
class KillReport:
    in_flight: int
    acked_before_kill: set[AlertKey]
    stored_after_kill: Counter[AlertKey]
    restarted: Server


async def kill_midstream(
    first: Server,
    launcher: Launcher,
    data_dir: Path,
    *,
    backend: Backend,
    target: Target,
    tally: Tally,
) -> KillReport:
    await tally.enough.wait()
    await tally.sending.wait()  # the clients post back to back; kill while one is out
    in_flight = tally.in_flight
    await asyncio.to_thread(first.kill)
    acked = set(tally.acked)  # every 200 so far came from the killed process
    stored = await asyncio.to_thread(alert_events, data_dir, env=backend.env)
    restarted = await asyncio.to_thread(launcher.start, data_dir, env=backend.env)
    target.url = restarted.alerts_url
    return KillReport(in_flight, acked, Counter(map(event_key, stored)), restarted)


def event_key(event: dict[str, Any]) -> AlertKey:
    data = event["data"]
    return (data["group"]["group_key"], data["fingerprint"], _parse_time(data["starts_at"]),
            data["status"])  # fmt: skip


def assert_unchanged(event: dict[str, Any], group_key: str, sent: dict[str, Any]) -> None:
    data = event["data"]
    assert event["type"] == f"alert.{sent['status']}"
    assert event["subject"] == group_key
    assert data["status"] == sent["status"]
    assert data["fingerprint"] == sent["fingerprint"]
    assert data["fingerprint_computed"] is False
    assert data["labels"] == sent["labels"]
    assert data["annotations"] == sent["annotations"]
    assert data["alertname"] == sent["labels"]["alertname"]
    assert _parse_time(data["starts_at"]) == _parse_time(sent["startsAt"])
    if sent["status"] == "resolved":
        assert _parse_time(data["ends_at"]) == _parse_time(sent["endsAt"])
    else:
        assert data["ends_at"] is None
    assert data["generator_url"] == sent["generatorURL"]


async def test_kill_9_mid_stream_loses_no_acknowledged_alert_and_stores_none_twice(
    backend: Backend, launcher: Launcher, data_dir: Path
) -> None:
    first = await asyncio.to_thread(launcher.start, data_dir, env=backend.env)
    target = Target(first.alerts_url)
    tally = Tally()
    sent_bodies = [make_webhook(c, s) for c in range(CLIENTS) for s in range(WEBHOOKS_PER_CLIENT)]
    total_alerts = sum(len(b["alerts"]) for b in sent_bodies)

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with asyncio.timeout(STORM_TIMEOUT), aiohttp.ClientSession(timeout=timeout) as session:
        killer = asyncio.create_task(
            kill_midstream(first, launcher, data_dir, backend=backend, target=target, tally=tally)
        )
        await asyncio.gather(*(run_client(session, target, c, tally) for c in range(CLIENTS)))
        report = await killer

    # The kill really happened mid-stream, and the clients had to retry across it.
    assert first.proc.returncode == -9
    assert report.in_flight > 0
    assert tally.transport_errors > 0
    assert len(report.acked_before_kill) >= KILL_AFTER_OKS * 2

    # Durability: every alert answered 200 by the killed process was on disk at the kill.
    missing_at_kill = report.acked_before_kill - set(report.stored_after_kill)
    assert not missing_at_kill, f"{len(missing_at_kill)} acknowledged alerts lost by kill -9"
    assert all(n == 1 for n in report.stored_after_kill.values())

    assert report.restarted.stop() == 0, report.restarted.stderr()
    events = await asyncio.to_thread(alert_events, data_dir, env=backend.env)

    # Exactly once: every alert sent was answered 200 in the end and is stored once.
    assert len(tally.acked) == total_alerts
    stored = Counter(map(event_key, events))
    twice = {k: n for k, n in stored.items() if n > 1}
    if backend.embedded:
        assert not twice, f"stored more than once: {list(twice)[:5]}"
    else:  # only a retried request's alerts, and once per process they reached
        unexplained = set(twice) - tally.retried
        assert not unexplained, f"stored more than once: {list(unexplained)[:5]}"
        assert all(n == 2 for n in twice.values()), twice
    assert set(stored) == set(tally.acked)
    assert len(events) == total_alerts + len(twice)

    # The answers agree: every 200 counted each alert of its body once, appended or repeat.
    assert tally.appended + tally.repeats == total_alerts

    # Unchanged: what is stored is what was sent.
    for event in events:
        key = event_key(event)
        assert_unchanged(event, key[0], tally.acked[key])
    assert len({e["id"] for e in events}) == len(events)
