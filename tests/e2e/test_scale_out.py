"""Scale-out on Kafka + PostgreSQL: ``sevpipe ingest`` and two ``sevpipe classify`` replicas in
one consumer group over the three partitions of ``sevpipe.alerts``.

Concurrent clients post a stream of webhooks across many alert groups; one classifier is
killed with SIGKILL once it has classified some of them, and the other takes its partitions
over (after the group notices the dead member). In the end every alert is in exactly one
incident, one incident per group key, as the ingest process's API and a replay of the
incidents topic both show: nothing lost to the kill, nothing decided twice by the replicas.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from .backends import Backend, backend_named
from .harness import TOPIC_ALERTS, Launcher, Server, group_webhook, incidents_with_alerts, replay

pytestmark = pytest.mark.e2e

TOPIC_INCIDENTS = "sevpipe.incidents"
PARTITIONS = {0, 1, 2}
GROUPS = 48
ROUNDS = 4
CLIENTS = 6
KILL_AFTER_CLASSIFIED = 20  # alerts the victim has classified before it is killed
REQUEST_TIMEOUT = 5.0
BALANCE_TIMEOUT = 30.0
STORM_TIMEOUT = 40.0
CATCH_UP_TIMEOUT = 40.0  # the survivor waits out the victim's session (10 s) first
POLL = 0.05
BASE_TIME = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)

ONCALL_TOKEN = "oncall-e2e-token"
ONCALL_SHA256 = hashlib.sha256(ONCALL_TOKEN.encode()).hexdigest()
ONCALL = {"Authorization": f"Bearer {ONCALL_TOKEN}"}
_LAG = re.compile(r"^sevpipe_consumer_lag\{([^}]*)\}", re.M)
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_CLASSIFIED = re.compile(r"^sevpipe_classifier_alerts_total (\S+)$", re.M)


@pytest.fixture
def production(request: pytest.FixtureRequest) -> Iterator[Backend]:
    with backend_named("production", request) as backend:
        yield backend


def group_key(g: int) -> str:
    return f'{{}}:{{service="scale-{g:02d}"}}'


def webhook(g: int, r: int) -> dict[str, Any]:
    """Round ``r`` of group ``g``: two new firing alerts; in the last round, every fourth
    group also resolves its first alert. Groups divisible by 5 page (outage) in round 1."""
    service = f"scale-{g:02d}"
    alerts: list[dict[str, Any]] = []
    for i in range(2):
        impact = "outage" if (r == 1 and g % 5 == 0) else "error_rate"
        starts = BASE_TIME + timedelta(seconds=g * 100 + r * 10 + i)
        alerts.append(
            {
                "status": "firing",
                "labels": {"alertname": "HighLatency", "service": service, "impact": impact},
                "annotations": {"summary": f"{service} round {r} alert {i}"},
                "startsAt": starts.isoformat().replace("+00:00", "Z"),
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": f"{g:02d}-{r}-{i}",
            }
        )
    if r == ROUNDS - 1 and g % 4 == 0:
        first = BASE_TIME + timedelta(seconds=g * 100)
        alerts.append(
            {
                "status": "resolved",
                "labels": {"alertname": "HighLatency", "service": service, "impact": "error_rate"},
                "annotations": {"summary": f"{service} round 0 alert 0"},
                "startsAt": first.isoformat().replace("+00:00", "Z"),
                "endsAt": (first + timedelta(minutes=3)).isoformat().replace("+00:00", "Z"),
                "fingerprint": f"{g:02d}-0-0",
            }
        )
    return group_webhook(group_key(g), service, "HighLatency", alerts)


RERATED = (1, 2, 3, 6, 7, 8)  # SEV-2 groups a person raises to SEV-1 through the API mid-storm


def expected_severity(g: int) -> str:
    if g in RERATED:
        return "SEV-1"  # its alerts are SEV-2 at most, and severity only rises by itself
    return "SEV-0" if g % 5 == 0 else "SEV-2"


async def rerate(session: aiohttp.ClientSession, ingest: Server) -> int:
    """POST a severity change for each RERATED group as soon as its incident exists, through
    the ingest process's API (its outbox rows are relayed by the classifiers)."""
    done: set[int] = set()
    while len(done) < len(RERATED):
        async with session.get(f"{ingest.base_url}/api/v1/incidents?limit=1000") as resp:
            found = (await resp.json())["incidents"]
        for inc in found:
            g = int(inc["key"].split("scale-")[1][:2])
            if g in RERATED and g not in done:
                url = f"{ingest.base_url}/api/v1/incidents/{inc['id']}/severity"
                change = {"severity": "SEV-1", "reason": "VIP customers"}
                async with session.post(url, json=change) as resp:
                    assert resp.status == 200, await resp.text()
                done.add(g)
        await asyncio.sleep(POLL)
    return len(done)


def expected_alerts(g: int) -> dict[str, str]:
    """Fingerprint -> status once every round of group ``g`` is in."""
    out = {f"{g:02d}-{r}-{i}": "firing" for r in range(ROUNDS) for i in range(2)}
    if g % 4 == 0:
        out[f"{g:02d}-0-0"] = "resolved"
    return out


async def metrics(session: aiohttp.ClientSession, server: Server) -> str:
    async with session.get(f"{server.base_url}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def partitions(session: aiohttp.ClientSession, server: Server) -> set[int]:
    """The alerts partitions the classifier is assigned (its consumer lag gauges)."""
    found = set()
    for labels in _LAG.findall(await metrics(session, server)):
        named = dict(_LABEL.findall(labels))
        if named["topic"] == TOPIC_ALERTS:
            found.add(int(named["partition"]))
    return found


async def classified(session: aiohttp.ClientSession, server: Server) -> float:
    match = _CLASSIFIED.search(await metrics(session, server))
    assert match is not None
    return float(match.group(1))


async def wait_balanced(
    session: aiohttp.ClientSession, a: Server, b: Server
) -> tuple[set[int], set[int]]:
    """Until the two replicas share the partitions between them, each holding some."""
    async with asyncio.timeout(BALANCE_TIMEOUT):
        while True:
            mine, theirs = await partitions(session, a), await partitions(session, b)
            if mine and theirs and not mine & theirs and mine | theirs == PARTITIONS:
                return mine, theirs
            await asyncio.sleep(POLL)


@dataclass
class Storm:
    url: str
    oks: int = 0
    acked: set[str] = field(default_factory=set)  # fingerprint + status answered 200
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def post(session: aiohttp.ClientSession, storm: Storm, body: dict[str, Any]) -> None:
    """As Alertmanager does: retry 5xx and transport errors; anything else is final."""
    payload = orjson.dumps(body)
    while True:
        try:
            async with session.post(
                storm.url, data=payload, headers={"Content-Type": "application/json"}
            ) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            await asyncio.sleep(POLL)
            continue
        if status >= 500:
            await asyncio.sleep(POLL)
            continue
        assert status == 200, status
        storm.oks += 1
        storm.acked.update(f"{a['fingerprint']}/{a['status']}" for a in body["alerts"])
        return


async def client(session: aiohttp.ClientSession, storm: Storm, c: int) -> None:
    mine = [g for g in range(GROUPS) if g % CLIENTS == c]  # a group is one client's, in order
    for r in range(ROUNDS):
        for g in mine:
            await post(session, storm, webhook(g, r))


async def kill_when_busy(
    session: aiohttp.ClientSession, victim: Server, storm: Storm
) -> tuple[float, int]:
    """kill -9 the victim once it has classified some alerts, while webhooks still arrive."""
    while True:
        seen = await classified(session, victim)
        if seen >= KILL_AFTER_CLASSIFIED:
            break
        await asyncio.sleep(POLL / 5)
    oks_at_kill = storm.oks
    await asyncio.to_thread(victim.kill)
    return seen, oks_at_kill


async def list_incidents(session: aiohttp.ClientSession, server: Server) -> list[dict[str, Any]]:
    return await incidents_with_alerts(session, server.base_url)


def alerts_by_key(incidents: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    got: dict[str, dict[str, str]] = {}
    for inc in incidents:
        got.setdefault(inc["key"], {}).update(
            {a["fingerprint"]: a["status"] for a in inc["alerts"]}
        )
    return got


async def wait_caught_up(
    session: aiohttp.ClientSession, ingest: Server, want: dict[str, dict[str, str]]
) -> list[dict[str, Any]]:
    async with asyncio.timeout(CATCH_UP_TIMEOUT):
        while True:
            incidents = await list_incidents(session, ingest)
            if alerts_by_key(incidents) == want:
                return incidents
            await asyncio.sleep(POLL * 4)


async def test_two_classifiers_one_killed_every_alert_in_exactly_one_incident(
    production: Backend, launcher: Launcher, tmp_path: Path
) -> None:
    env = production.env
    # The person re-rating is an operator: the actor recorded is who the token says.
    operators = [{"name": "oncall", "token_sha256": ONCALL_SHA256, "roles": ["responder"]}]
    api_env = production.with_env({"SEVPIPE_OPERATORS": json.dumps(operators)})
    ingest = await asyncio.to_thread(launcher.start, tmp_path / "i", env=api_env, command="ingest")
    victim = await asyncio.to_thread(launcher.start, tmp_path / "a", env=env, command="classify")
    survivor = await asyncio.to_thread(launcher.start, tmp_path / "b", env=env, command="classify")
    storm = Storm(ingest.alerts_url)
    total_webhooks = GROUPS * ROUNDS
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, headers=ONCALL) as session:
        victim_parts, survivor_parts = await wait_balanced(session, victim, survivor)

        async with asyncio.timeout(STORM_TIMEOUT):
            killer = asyncio.create_task(kill_when_busy(session, victim, storm))
            rerating = asyncio.create_task(rerate(session, ingest))
            await asyncio.gather(*(client(session, storm, c) for c in range(CLIENTS)))
            victim_classified, oks_at_kill = await killer
            assert await rerating == len(RERATED)

        # The victim held partitions and did real work, and died mid-stream.
        assert victim.proc.returncode == -9
        assert victim_parts
        assert survivor_parts
        assert victim_classified >= KILL_AFTER_CLASSIFIED
        assert oks_at_kill < total_webhooks
        assert storm.oks == total_webhooks

        want = {group_key(g): expected_alerts(g) for g in range(GROUPS)}
        incidents = await wait_caught_up(session, ingest, want)
        assert await partitions(session, survivor) == PARTITIONS  # it took the victim's over
        assert await classified(session, survivor) > 0

    # The API: one incident per group key, holding exactly that group's alerts.
    assert sorted(i["key"] for i in incidents) == sorted(want)
    for inc in incidents:
        g = int(inc["key"].split("scale-")[1][:2])
        assert {a["fingerprint"]: a["status"] for a in inc["alerts"]} == expected_alerts(g)
        assert inc["status"] == "open"
        assert inc["severity"] == expected_severity(g), inc["key"]
        assert inc["severity_source"] == ("manual" if g in RERATED else "policy"), inc["key"]

    # The incidents topic, counted raw: every event once (replicas, the API's process and a
    # relayer killed mid-way relay through one claimed relay), one incident id per key, and
    # each incident's versions in log order exactly 1..n.
    events = await asyncio.to_thread(replay, tmp_path, "--topic", TOPIC_INCIDENTS, env=env)
    twice = [i for i, n in Counter(e["id"] for e in events).items() if n > 1]
    assert twice == [], f"{len(twice)} events on the topic twice"
    ids_per_key: dict[str, set[str]] = defaultdict(set)
    for e in events:
        ids_per_key[e["data"]["incident"]["key"]].add(e["subject"])
    assert {k: len(v) for k, v in ids_per_key.items()} == dict.fromkeys(want, 1)
    shown = {i["id"]: i["version"] for i in incidents}
    versions: dict[str, list[int]] = defaultdict(list)
    for e in events:  # in log order: one incident's events share a partition
        versions[e["subject"]].append(e["data"]["incident"]["version"])
    assert versions == {i: list(range(1, n + 1)) for i, n in shown.items()}
    assert sum(1 for e in events if e["type"] == "incident.opened") == GROUPS
    manual = [e for e in events if e["data"].get("actor") == "oncall"]
    assert len(manual) == len(RERATED)

    # The alerts topic: nothing answered 200 is missing.
    alerts = await asyncio.to_thread(replay, tmp_path, "--topic", TOPIC_ALERTS, env=env)
    logged = {f"{e['data']['fingerprint']}/{e['data']['status']}" for e in alerts}
    assert storm.acked <= logged
    assert len(storm.acked) == sum(len(expected_alerts(g)) + (g % 4 == 0) for g in range(GROUPS))
