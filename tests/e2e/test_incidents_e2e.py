"""Incidents as a user meets them: ``sevpipe run`` turns webhooks into incidents on its API,
survives kill -9 without losing or doubling one, and the classifier's commands (policy show,
check-config, rebuild, backtest) work on the same data dir, or the same Kafka topics and
PostgreSQL database (``backend``).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from classifier.policy import default_policy, load_policy

from .backends import Backend
from .harness import (
    FIXTURES,
    Launcher,
    Server,
    group_webhook,
    incidents_with_alerts,
    replay,
    sevpipe,
    until_caught_up,
)

pytestmark = pytest.mark.e2e

TOPIC_INCIDENTS = "sevpipe.incidents"
REQUEST_TIMEOUT = 5.0
CATCH_UP_TIMEOUT = 30.0  # a restarted Kafka consumer waits out the killed one's session
STORM_TIMEOUT = 30.0
POLL = 0.05
BASE_TIME = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def rfc3339(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def list_incidents(session: aiohttp.ClientSession, server: Server) -> list[dict[str, Any]]:
    return await incidents_with_alerts(session, server.base_url)


async def post(session: aiohttp.ClientSession, server: Server, body: bytes) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    async with session.post(server.alerts_url, data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def wait_for_incidents(
    session: aiohttp.ClientSession, server: Server, done: Any
) -> list[dict[str, Any]]:
    """Poll the API until ``done(incidents)``; the classifier runs behind the 200s."""
    async with asyncio.timeout(CATCH_UP_TIMEOUT):
        while True:
            incidents = await list_incidents(session, server)
            if done(incidents):
                return incidents
            await asyncio.sleep(POLL)


def incident_events(data_dir: Path, backend: Backend) -> list[dict[str, Any]]:
    return replay(data_dir, "--topic", TOPIC_INCIDENTS, env=backend.env)


def assert_each_event_once(
    events: list[dict[str, Any]], incidents: list[dict[str, Any]], backend: Backend
) -> None:
    """Unique ids, and per incident exactly versions 1..n, the last being what the API shows.

    Counted raw, on both backends: a relayer killed between publishing and marking leaves
    its rows to the next one, which looks at the log's tail first, so even on Kafka (where the
    log cannot drop a repeat) no event is there twice.
    """
    twice = [i for i, n in Counter(e["id"] for e in events).items() if n > 1]
    assert twice == [], f"{len(twice)} events on the topic twice ({backend.name})"
    versions: dict[str, list[int]] = defaultdict(list)
    for e in events:
        assert e["type"].startswith("incident.")
        assert e["subject"] == e["data"]["incident"]["id"]
        versions[e["subject"]].append(e["data"]["incident"]["version"])
    shown = {i["id"]: i for i in incidents}
    assert set(versions) == set(shown)
    for incident_id, seen in versions.items():
        assert seen == list(range(1, shown[incident_id]["version"] + 1)), incident_id


# -- webhooks in, incidents out; rebuild and backtest on the same data dir ---------------------

# (fixture, its group key, alerts it carries, severity it deserves under the default policy)
FIXTURE_INCIDENTS = {
    "01_zulip_firing_2alerts.json": ("{}/{}:{}", 2, "SEV-1"),  # severity=critical
    "02_grafana_oncall_firing_3alerts.json": ('{}:{alertname="InstanceDown"}', 3, "SEV-1"),
    "04_alerta_v4_firing_no_fingerprint.json": ("{}:{alertname=thing_dead}", 1, "SEV-1"),
    "05_alertmonitor_firing_3alerts_regex_groupkey.json": (
        '{}/{severity=~"^(?:^(critical|major|minor|warning|informational)$)$"}'
        ':{alertname="ICMP ping failed"}',
        3,
        "SEV-3",  # severity=major is no label the fallback knows
    ),
}
RESOLVE_ONLY = "03_pythonwebhook_resolved_k8s_deployment.json"  # a resolve opens nothing

CANDIDATE_POLICY = """\
# critical pages are outages now
fallback:
  severity_label: {critical: SEV-0, warning: SEV-2, error: SEV-2}
"""


async def test_webhooks_become_incidents_that_rebuild_and_backtest_reproduce(
    backend: Backend, launcher: Launcher, data_dir: Path, tmp_path: Path
) -> None:
    env = backend.env
    server = await asyncio.to_thread(launcher.start, data_dir, env=env)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for name in [*FIXTURE_INCIDENTS, RESOLVE_ONLY]:
            await post(session, server, (FIXTURES / name).read_bytes())
        # The same webhooks again, as Alertmanager repeats them: nothing changes.
        for name in FIXTURE_INCIDENTS:
            answer = await post(session, server, (FIXTURES / name).read_bytes())
            assert answer["appended"] == 0

        want = {key: (n, sev) for key, n, sev in FIXTURE_INCIDENTS.values()}

        def all_there(incidents: list[dict[str, Any]]) -> bool:
            got = {i["key"]: (len(i["alerts"]), i["severity"]) for i in incidents}
            return got == want

        incidents = await wait_for_incidents(session, server, all_there)
        assert len(incidents) == len(want)
        assert all(i["status"] == "open" for i in incidents)
        shown = {
            i["id"]: await get_json(session, f"{server.base_url}/api/v1/incidents/{i['id']}")
            for i in incidents
        }
        for detail in shown.values():
            assert detail["events"][0]["type"] == "incident.opened"
        # The classifier and comms are done with what the log holds: a restart has none of
        # their work left, so whatever it appended would be a repeat.
        await until_caught_up(session, server.base_url, groups=2)
    assert server.stop() == 0, server.stderr()
    events = incident_events(data_dir, backend)
    assert_each_event_once(events, incidents, backend)
    log_before = replay(data_dir, env=env)

    # rebuild: the store re-made from the incidents topic alone.
    rebuilt = sevpipe("rebuild", "--data-dir", str(data_dir), env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout == f"store rebuilt from {len(events)} incident events\n"

    # backtest: which incidents a candidate policy would change, with no side effects.
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(CANDIDATE_POLICY, encoding="utf-8")
    done = sevpipe(
        "backtest",
        *("--data-dir", str(data_dir), "--policy", str(candidate), "--format", "json"),
        env=env,
    )
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["alerts"] == 2 + 3 + 1 + 3 + 1
    assert report["incidents"] == len(want)
    assert (report["only_old"], report["only_new"]) == (0, 0)
    critical = {i["id"] for i in incidents if i["severity"] == "SEV-1"}
    assert {c["incident_id"] for c in report["changed"]} == critical
    assert all((c["old"], c["new"]) == ("SEV-1", "SEV-0") for c in report["changed"])
    assert replay(data_dir, env=env) == log_before

    again = await asyncio.to_thread(launcher.start, data_dir, env=env)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        assert await list_incidents(session, again) == incidents
        for incident_id, detail in shown.items():
            url = f"{again.base_url}/api/v1/incidents/{incident_id}"
            assert await get_json(session, url) == detail
    assert again.stop() == 0, again.stderr()
    assert replay(data_dir, env=env) == log_before


# -- kill -9 mid-stream ------------------------------------------------------------------------

GROUPS = 40
ROUNDS = 5
CLIENTS = 4
KILL_AFTER_OKS = 70
RETRY_DELAY = 0.05


def group_key(g: int) -> str:
    return f'{{}}:{{service="svc-{g:02d}"}}'


def storm_webhook(g: int, r: int) -> dict[str, Any]:
    """Round ``r`` of group ``g``: two new firing alerts; the last round of every third group
    also resolves the group's very first alert. Even groups get an outage in round 2."""
    service = f"svc-{g:02d}"
    alerts: list[dict[str, Any]] = []
    for i in range(2):
        impact = "outage" if (r == 2 and i == 1 and g % 2 == 0) else "error_rate"
        alerts.append(
            {
                "status": "firing",
                "labels": {"alertname": "HighErrorRate", "service": service, "impact": impact},
                "annotations": {"summary": f"{service} round {r} alert {i}"},
                "startsAt": rfc3339(BASE_TIME + timedelta(seconds=g * 100 + r * 10 + i)),
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": f"{g:02d}-{r}-{i}",
            }
        )
    if r == ROUNDS - 1 and g % 3 == 0:
        first = {**alerts[0], "status": "resolved", "fingerprint": f"{g:02d}-0-0"}
        first["labels"] = {**first["labels"], "impact": "error_rate"}
        first["startsAt"] = rfc3339(BASE_TIME + timedelta(seconds=g * 100))
        first["endsAt"] = rfc3339(BASE_TIME + timedelta(seconds=g * 100 + 60))
        alerts.append(first)
    return group_webhook(group_key(g), service, "HighErrorRate", alerts)


def expected_alerts(g: int) -> dict[str, str]:
    """Fingerprint -> status, once every round of group ``g`` is in."""
    out = {f"{g:02d}-{r}-{i}": "firing" for r in range(ROUNDS) for i in range(2)}
    if g % 3 == 0:
        out[f"{g:02d}-0-0"] = "resolved"
    return out


@dataclass
class Storm:
    url: str
    oks: int = 0
    in_flight: int = 0
    transport_errors: int = 0
    enough: asyncio.Event = field(default_factory=asyncio.Event)
    sending: asyncio.Event = field(default_factory=asyncio.Event)  # a request is out

    def started(self) -> None:
        self.in_flight += 1
        self.sending.set()

    def finished(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.sending.clear()


async def post_until_ok(session: aiohttp.ClientSession, storm: Storm, body: bytes) -> None:
    """As Alertmanager does: retry transport errors and 5xx; anything else is final."""
    headers = {"Content-Type": "application/json"}
    while True:
        storm.started()
        try:
            async with session.post(storm.url, data=body, headers=headers) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            storm.transport_errors += 1
            await asyncio.sleep(RETRY_DELAY)
            continue
        finally:
            storm.finished()
        if status >= 500:
            await asyncio.sleep(RETRY_DELAY)
            continue
        assert status == 200, status
        storm.oks += 1
        if storm.oks >= KILL_AFTER_OKS:
            storm.enough.set()
        return


async def client(session: aiohttp.ClientSession, storm: Storm, c: int) -> None:
    # Each group belongs to one client (as to one Alertmanager route), in round order.
    mine = [g for g in range(GROUPS) if g % CLIENTS == c]
    for r in range(ROUNDS):
        for g in mine:
            await post_until_ok(session, storm, orjson.dumps(storm_webhook(g, r)))


async def kill_and_restart(
    first: Server, launcher: Launcher, data_dir: Path, backend: Backend, storm: Storm
) -> tuple[Server, int]:
    await storm.enough.wait()
    await storm.sending.wait()  # the clients post back to back: kill while one is out
    in_flight = storm.in_flight
    await asyncio.to_thread(first.kill)
    restarted = await asyncio.to_thread(launcher.start, data_dir, env=backend.env)
    storm.url = restarted.alerts_url
    return restarted, in_flight


async def test_kill_9_mid_stream_loses_and_doubles_no_incident(
    backend: Backend, launcher: Launcher, data_dir: Path
) -> None:
    first = await asyncio.to_thread(launcher.start, data_dir, env=backend.env)
    storm = Storm(first.alerts_url)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with asyncio.timeout(STORM_TIMEOUT), aiohttp.ClientSession(timeout=timeout) as session:
        killer = asyncio.create_task(kill_and_restart(first, launcher, data_dir, backend, storm))
        await asyncio.gather(*(client(session, storm, c) for c in range(CLIENTS)))
        server, in_flight_at_kill = await killer

    assert first.proc.returncode == -9
    assert in_flight_at_kill > 0
    assert storm.oks == GROUPS * ROUNDS

    want = {group_key(g): expected_alerts(g) for g in range(GROUPS)}

    def caught_up(incidents: list[dict[str, Any]]) -> bool:
        got: dict[str, dict[str, str]] = {}
        for inc in incidents:
            got.setdefault(inc["key"], {}).update(
                {a["fingerprint"]: a["status"] for a in inc["alerts"]}
            )
        return got == want

    async with aiohttp.ClientSession(timeout=timeout) as session:
        incidents = await wait_for_incidents(session, server, caught_up)

    per_key = Counter(i["key"] for i in incidents)
    assert per_key == Counter(set(want)), "an incident was duplicated"
    for inc in incidents:
        g = int(inc["key"].split("svc-")[1][:2])
        assert {a["fingerprint"]: a["status"] for a in inc["alerts"]} == expected_alerts(g)
        assert inc["status"] == "open"
        assert inc["severity"] == ("SEV-0" if g % 2 == 0 else "SEV-2"), inc["key"]

    assert server.stop() == 0, server.stderr()
    assert_each_event_once(incident_events(data_dir, backend), incidents, backend)


# -- the classifier's commands -----------------------------------------------------------------


def test_policy_show_prints_the_default_policy_which_loads_back(tmp_path: Path) -> None:
    done = sevpipe("policy", "show", "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr
    assert "SEV-0" in done.stdout
    assert "user_impact_pct: {above: 90}" in done.stdout
    shown = tmp_path / "shown.yaml"
    shown.write_text(done.stdout, encoding="utf-8")
    assert load_policy(shown) == default_policy()


def test_policy_show_prints_the_policy_the_settings_name(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("group_by: [service]\nreopen_window: 30m\n", encoding="utf-8")
    settings = tmp_path / "sevpipe.yaml"
    settings.write_text(f"policy_file: {policy}\n", encoding="utf-8")
    done = sevpipe("policy", "show", "--config", str(settings))
    assert done.returncode == 0, done.stderr
    shown = tmp_path / "shown.yaml"
    shown.write_text(done.stdout, encoding="utf-8")
    assert load_policy(shown) == load_policy(policy)
    assert load_policy(shown).group_by == ("service",)


GOOD_POLICY = """\
rules:
  - name: page
    severity: SEV-0
    when:
      - impact: [outage]
      - user_impact_pct: {above: 75}
"""
BAD_POLICY = """\
rules:
  - name: page
    severity: SEV-0
    when:
      - impact: [outage, meltdown]
"""


@pytest.mark.parametrize(
    ("files", "ok", "message"),
    [
        ({"policy.yaml": GOOD_POLICY}, True, "{dir}/policy.yaml: valid policy"),
        (
            {"policy.yaml": "group_by: [service]\nreopen_window: 30m\n"},
            True,
            "{dir}/policy.yaml: valid policy",
        ),
        (
            {"policy.yaml": GOOD_POLICY, "settings.yaml": "policy_file: {dir}/policy.yaml\n"},
            True,
            "{dir}/settings.yaml: valid settings (policy {dir}/policy.yaml); channels: console",
        ),
        ({"policy.yaml": BAD_POLICY}, False, "{dir}/policy.yaml:5:"),
        (
            {"policy.yaml": "rules:\n  - name: x\n    severty: SEV-1\n"},
            False,
            "{dir}/policy.yaml:3:",
        ),
        (
            {"policy.yaml": BAD_POLICY, "settings.yaml": "policy_file: {dir}/policy.yaml\n"},
            False,
            "{dir}/policy.yaml:5:",
        ),
        ({"settings.yaml": "port: 9095\nlog_level: loud\n"}, False, "{dir}/settings.yaml:2"),
        ({"policy.yaml": "rules: [\n"}, False, "{dir}/policy.yaml:2:"),
    ],
    ids=[
        "good-policy",
        "lifecycle-only-policy",
        "good-settings",
        "unknown-impact",
        "misspelt-key",
        "settings-with-bad-policy",
        "bad-setting",
        "broken-yaml",
    ],
)
def test_check_config_accepts_good_files_and_names_the_line_of_a_bad_one(
    tmp_path: Path, files: dict[str, str], ok: bool, message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text.replace("{dir}", str(tmp_path)), encoding="utf-8")
    target = tmp_path / ("settings.yaml" if "settings.yaml" in files else "policy.yaml")
    done = sevpipe("check-config", str(target))
    expected = message.replace("{dir}", str(tmp_path))
    if ok:
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout == expected + "\n"
    else:
        assert done.returncode == 2, done.stdout
        assert done.stdout == ""
        assert expected in done.stderr, done.stderr
