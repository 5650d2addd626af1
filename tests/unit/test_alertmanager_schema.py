"""The Alertmanager webhook model: fingerprints, times, and normalisation into event payloads."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import (
    ALERT_FIRING,
    ALERT_RESOLVED,
    Alert,
    Webhook,
    alert_idempotency_key,
    event_type_for,
    labels_fingerprint,
    normalise,
)
from schemas.events import alert_state_key

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alertmanager"
RECEIVED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def load(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return body


def sent_fingerprints() -> list[tuple[str, int]]:
    """(fixture, alert index) of every fingerprint sent, but 01's hand-edited second alert."""
    out = []
    for path in sorted(FIXTURES.glob("*.json")):
        for i, alert in enumerate(load(path.name)["alerts"]):
            if "fingerprint" in alert and (path.name, i) != ("01_zulip_firing_2alerts.json", 1):
                out.append((path.name, i))
    return out


def test_sent_fingerprints_are_found() -> None:
    assert len(sent_fingerprints()) == 5  # 01: 1, 02: 3, 03: 1


@pytest.mark.parametrize(("name", "index"), sent_fingerprints())
def test_labels_fingerprint_matches_alertmanager(name: str, index: int) -> None:
    alert = load(name)["alerts"][index]
    assert labels_fingerprint(alert["labels"]) == alert["fingerprint"]


def test_fingerprint_of_01_second_alert_was_edited_by_hand() -> None:
    alerts = load("01_zulip_firing_2alerts.json")["alerts"]
    assert alerts[0]["labels"] == alerts[1]["labels"]
    assert labels_fingerprint(alerts[1]["labels"]) == alerts[0]["fingerprint"]
    assert alerts[1]["fingerprint"] != alerts[0]["fingerprint"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("04_alerta_v4_firing_no_fingerprint.json", ["2f30fca22fdaa8ef"]),
        (
            "05_alertmonitor_firing_3alerts_regex_groupkey.json",
            ["4a110cc8dbe76532", "e92130f1a362a046", "1e1c2fe4c8293484"],
        ),
    ],
)
def test_fingerprint_computed_when_absent(name: str, expected: list[str]) -> None:
    webhook = Webhook.model_validate(load(name))
    assert [a.fingerprint for a in webhook.alerts] == [None] * len(expected)
    assert [a.effective_fingerprint() for a in webhook.alerts] == [(f, True) for f in expected]


def test_labels_fingerprint_shape() -> None:
    assert labels_fingerprint({}) == "cbf29ce484222325"  # FNV-1a 64 offset basis
    a = labels_fingerprint({"b": "2", "a": "1"})
    assert a == labels_fingerprint({"a": "1", "b": "2"})  # order of the body does not matter
    assert len(a) == 16
    assert a == a.lower()
    # the 0xff separators keep name/value boundaries apart
    assert labels_fingerprint({"ab": "c"}) != labels_fingerprint({"a": "bc"})
    assert labels_fingerprint({"a": "b", "c": ""}) != labels_fingerprint({"a": "b"})
    assert labels_fingerprint({"x": "é"}) != labels_fingerprint({"x": "e"})


def test_sent_fingerprint_is_trusted_and_blank_one_is_computed() -> None:
    labels = {"alertname": "A"}
    sent = Alert.model_validate({"status": "firing", "labels": labels, "fingerprint": "abc"})
    blank = Alert.model_validate({"status": "firing", "labels": labels, "fingerprint": ""})
    assert sent.effective_fingerprint() == ("abc", False)
    assert blank.effective_fingerprint() == (labels_fingerprint(labels), True)


def alert_with(**fields: Any) -> Alert:
    return Alert.model_validate({"status": "firing", "labels": {"a": "b"}, **fields})


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("2020-02-06T00:17:58.432911368Z", datetime(2020, 2, 6, 0, 17, 58, 432911, tzinfo=UTC)),
        # truncated, not rounded up into the next second
        ("2020-02-06T00:17:58.999999999Z", datetime(2020, 2, 6, 0, 17, 58, 999999, tzinfo=UTC)),
        ("2017-08-03T15:17:37.804-04:00", datetime(2017, 8, 3, 19, 17, 37, 804000, tzinfo=UTC)),
        ("2017-08-04T01:17:37+10:00", datetime(2017, 8, 3, 15, 17, 37, tzinfo=UTC)),
        ("2022-07-29T11:13:27.3Z", datetime(2022, 7, 29, 11, 13, 27, 300000, tzinfo=UTC)),
        ("2022-07-29T11:13:27", datetime(2022, 7, 29, 11, 13, 27, tzinfo=UTC)),  # naive: UTC
        ("0001-01-01T00:00:00Z", None),
        ("0001-01-01T00:00:00+00:00", None),
        (None, None),
    ],
)
def test_times_are_utc_microseconds_and_zero_is_none(sent: str | None, stored: datetime) -> None:
    alert = alert_with(startsAt=sent, endsAt=sent)
    assert alert.starts_at == stored
    assert alert.ends_at == stored
    if stored is not None:
        assert alert.starts_at is not None
        assert alert.starts_at.tzinfo is UTC


@pytest.mark.parametrize(
    "bad", ["yesterday", "2020-13-01T00:00:00Z", "9999-12-31T23:00:00-05:00", [2020]]
)
def test_bad_time_is_a_validation_error_naming_the_field(bad: Any) -> None:
    with pytest.raises(ValidationError) as err:
        alert_with(startsAt=bad)
    assert err.value.errors()[0]["loc"] == ("startsAt",)


def test_unknown_keys_are_ignored() -> None:
    body = load("02_grafana_oncall_firing_3alerts.json")
    body["alerts"][0]["notification_reason"] = "new"
    webhook = Webhook.model_validate(body)
    assert webhook.model_extra is None
    assert "numFiring" not in webhook.model_dump(by_alias=True)


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"alerts": []}, ("alerts",)),
        ({"status": "pending"}, ("status",)),
        ({"truncatedAlerts": -1}, ("truncatedAlerts",)),
    ],
)
def test_invalid_webhook(change: dict[str, Any], loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as err:
        Webhook.model_validate({**load("03_pythonwebhook_resolved_k8s_deployment.json"), **change})
    assert err.value.errors()[0]["loc"] == loc


def test_group_key_is_the_bodys_or_made_like_alertmanagers() -> None:
    body = load("04_alerta_v4_firing_no_fingerprint.json")
    assert Webhook.model_validate(body).incident_group_key() == "{}:{alertname=thing_dead}"
    body = {**body, "groupKey": "", "groupLabels": {"service": "api", "alertname": "X"}}
    made = Webhook.model_validate(body).incident_group_key()
    assert made == '{}:{alertname="X",service="api"}@alerta'
    other_receiver = Webhook.model_validate({**body, "receiver": "pager"}).incident_group_key()
    assert other_receiver != made


def test_normalise_one_payload_per_alert_with_group_context() -> None:
    webhook = Webhook.model_validate(load("05_alertmonitor_firing_3alerts_regex_groupkey.json"))
    payloads = normalise(webhook, "the-key", RECEIVED)
    assert len(payloads) == 3
    for alert, data in zip(webhook.alerts, payloads, strict=True):
        assert data.status == "firing"
        assert data.labels == alert.labels
        assert data.alertname == "ICMP ping failed"
        assert data.received_at == RECEIVED
        assert data.group.group_key == "the-key"
        assert data.group.receiver == "alertmonitor_swarm"
        assert data.group.external_url == "http://:9093"
        assert data.group.group_labels == {"alertname": "ICMP ping failed"}
        assert data.group.common_labels == webhook.common_labels
        assert data.idempotency_key() == alert_idempotency_key(
            "the-key", data.fingerprint, alert.starts_at, "firing"
        )
    assert len({p.idempotency_key() for p in payloads}) == 3


def test_resolved_alert_normalised() -> None:
    webhook = Webhook.model_validate(load("03_pythonwebhook_resolved_k8s_deployment.json"))
    (data,) = normalise(webhook, webhook.incident_group_key(), RECEIVED)
    assert data.status == "resolved"
    assert data.ends_at == datetime(2022, 7, 29, 11, 17, 27, 300000, tzinfo=UTC)
    assert event_type_for(data.status) == ALERT_RESOLVED
    assert event_type_for("firing") == ALERT_FIRING


def test_idempotency_key_parts() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    key = alert_idempotency_key("g", "f", t, "firing")
    assert key == "g\x1ff\x1f2026-01-01T00:00:00+00:00\x1ffiring"
    assert alert_idempotency_key("g", "f", None, "firing") == "g\x1ff\x1f-\x1ffiring"
    assert key != alert_idempotency_key("g", "f", t, "resolved")
    assert key != alert_idempotency_key("g", "f", t.replace(second=1), "firing")


def test_state_key_is_the_alert_and_its_state() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    firing = alert_state_key("g", "f", t, "firing")
    assert firing == ("g\x1ff", "2026-01-01T00:00:00+00:00\x1ffiring")
    assert "\x1f".join(firing) == alert_idempotency_key("g", "f", t, "firing")
    # the same alert in another state: the same key, another state
    resolved = alert_state_key("g", "f", t, "resolved")
    assert resolved[0] == firing[0]
    assert resolved[1] != firing[1]
    assert alert_state_key("g", "f2", t, "firing")[0] != firing[0]
