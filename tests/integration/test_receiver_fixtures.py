"""Every real Alertmanager body is accepted, and lands in the log normalised exactly."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from harness import FIXTURE_NAMES, fixture_bytes, fixture_json, open_harness

from schemas import TOPIC_ALERTS, AlertEventData


@dataclass(frozen=True)
class Expected:
    group_key: str
    receiver: str
    external_url: str
    group_labels: dict[str, str]
    fingerprints: tuple[str, ...]
    computed: bool
    starts_at: datetime
    status: str = "firing"
    ends_at: datetime | None = None
    common_labels: dict[str, str] = field(default_factory=dict)


def utc(iso: str) -> datetime:
    """A naive ISO time read as UTC (the expected values are written out in full)."""
    return datetime.fromisoformat(iso).replace(tzinfo=UTC)


EXPECTED: dict[str, Expected] = {
    "01_zulip_firing_2alerts.json": Expected(
        group_key="{}/{}:{}",
        receiver="ops-zulip",
        external_url="http://ops1:9093",
        group_labels={},
        common_labels={"alertname": "High CPU Temperature", "severity": "critical"},
        fingerprints=("a1bc48475b20e73d", "c2ea85182f28cbd9"),
        computed=False,
        # 2020-02-06T00:17:58.432911368Z: nanoseconds cut to microseconds
        starts_at=utc("2020-02-06T00:17:58.432911"),
    ),
    "02_grafana_oncall_firing_3alerts.json": Expected(
        group_key='{}:{alertname="InstanceDown"}',
        receiver="combo",
        external_url="",
        group_labels={"alertname": "InstanceDown"},
        common_labels={"job": "node", "severity": "critical", "alertname": "InstanceDown"},
        fingerprints=("f404ecabc8dd5cd7", "f8f08d4e32c61a9d", "39f38c0611ee7abd"),
        computed=False,
        starts_at=utc("2023-06-12T08:24:38.326000"),
    ),
    "03_pythonwebhook_resolved_k8s_deployment.json": Expected(
        group_key='{}:{alertname="Deployment"}',
        receiver="web\\.hook",
        external_url="http://localhost:9093",
        group_labels={"alertname": "Deployment"},
        fingerprints=("fbab788ec4c1018b",),
        computed=False,
        status="resolved",
        starts_at=utc("2022-07-29T11:13:27.300000"),
        ends_at=utc("2022-07-29T11:17:27.300000"),
    ),
    "04_alerta_v4_firing_no_fingerprint.json": Expected(
        group_key="{}:{alertname=thing_dead}",
        receiver="alerta",
        external_url="http://somehost:9093",
        group_labels={"alertname": "thing_dead"},
        common_labels={"alertname": "thing_dead"},
        fingerprints=("2f30fca22fdaa8ef",),
        computed=True,
        # 2017-08-03T15:17:37.804-04:00
        starts_at=utc("2017-08-03T19:17:37.804000"),
    ),
    "05_alertmonitor_firing_3alerts_regex_groupkey.json": Expected(
        group_key=(
            '{}/{severity=~"^(?:^(critical|major|minor|warning|informational)$)$"}'
            ':{alertname="ICMP ping failed"}'
        ),
        receiver="alertmonitor_swarm",
        external_url="http://:9093",
        group_labels={"alertname": "ICMP ping failed"},
        common_labels={
            "alertname": "ICMP ping failed",
            "job": "blackbox-icmp",
            "monitor": "monis",
            "severity": "major",
            "tags": "icmp, ping failed",
        },
        fingerprints=("4a110cc8dbe76532", "e92130f1a362a046", "1e1c2fe4c8293484"),
        computed=True,
        starts_at=utc("2019-09-27T16:27:56.612666"),
    ),
}


def test_every_fixture_has_expectations() -> None:
    assert set(FIXTURE_NAMES) == set(EXPECTED)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
async def test_fixture_accepted_and_normalised(name: str, tmp_path: Path) -> None:
    exp = EXPECTED[name]
    body = fixture_json(name)
    before = datetime.now(UTC)
    async with open_harness(tmp_path) as h:
        status, answer, _ = await h.post(fixture_bytes(name))
        records = await h.records()
    after = datetime.now(UTC)

    n = len(exp.fingerprints)
    assert status == 200, answer
    assert answer == {"accepted": n, "appended": n, "repeats": 0}
    assert len(records) == n
    for i, record in enumerate(records):
        sent = body["alerts"][i]
        env = record.envelope
        assert record.topic == TOPIC_ALERTS
        assert record.key == env.subject == exp.group_key
        assert env.type == f"alert.{exp.status}"
        assert env.source == "/sevpipe/ingest"
        data = AlertEventData.model_validate(env.data)
        assert data.status == exp.status
        assert data.fingerprint == exp.fingerprints[i]
        assert data.fingerprint_computed is exp.computed
        assert data.starts_at == exp.starts_at
        assert data.starts_at is not None
        assert data.starts_at.utcoffset() == timedelta(0)
        assert env.data["starts_at"].endswith("Z")
        assert data.ends_at == exp.ends_at
        assert data.labels == sent["labels"]
        assert data.annotations == sent["annotations"]
        assert data.alertname == sent["labels"]["alertname"]
        assert data.generator_url == sent["generatorURL"]
        assert before <= data.received_at <= after
        group = data.group
        assert group.group_key == exp.group_key
        assert group.receiver == exp.receiver
        assert group.external_url == exp.external_url
        assert group.group_labels == exp.group_labels
        assert group.common_labels == (exp.common_labels or body["commonLabels"])
        assert group.truncated_alerts == 0
        assert data.idempotency_key() == "\x1f".join(
            (exp.group_key, exp.fingerprints[i], exp.starts_at.isoformat(), exp.status)
        )
    # log order is body order, offsets increase
    offsets = [r.offset for r in records]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == n


async def test_unknown_keys_are_ignored_not_stored(tmp_path: Path) -> None:
    name = "02_grafana_oncall_firing_3alerts.json"
    assert "numFiring" in fixture_json(name)
    async with open_harness(tmp_path) as h:
        status, answer, _ = await h.post(fixture_bytes(name))
        records = await h.records()
    assert status == 200
    assert answer["accepted"] == 3
    for record in records:
        raw = record.envelope.model_dump_json()
        assert "numFiring" not in raw
        assert "numResolved" not in raw


async def test_json_escapes_are_decoded(tmp_path: Path) -> None:
    # 05 is compact JSON with \u0026 escapes inside generatorURL
    name = "05_alertmonitor_firing_3alerts_regex_groupkey.json"
    assert b"\\u0026" in fixture_bytes(name)
    async with open_harness(tmp_path) as h:
        await h.post(fixture_bytes(name))
        records = await h.records()
    for record in records:
        assert record.envelope.data["generator_url"].endswith("+%3D%3D+0&g0.tab=1")


async def test_all_fixtures_together_land_once_each(tmp_path: Path) -> None:
    total = sum(len(e.fingerprints) for e in EXPECTED.values())
    async with open_harness(tmp_path) as h:
        for name in FIXTURE_NAMES:
            status, _, _ = await h.post(fixture_bytes(name))
            assert status == 200
        for name in FIXTURE_NAMES:  # Alertmanager re-sends whole groups
            status, answer, _ = await h.post(fixture_bytes(name))
            assert status == 200
            n = len(EXPECTED[name].fingerprints)
            assert answer == {"accepted": n, "appended": 0, "repeats": n}
        records = await h.records()
    assert len(records) == total
    got = sorted((r.key, r.envelope.data["fingerprint"]) for r in records)
    want = sorted((e.group_key, f) for e in EXPECTED.values() for f in e.fingerprints)
    assert got == want
