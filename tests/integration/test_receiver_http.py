"""The receiver's HTTP contract, as Alertmanager sees it: every status code and its meaning."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from harness import (
    FIXTURE_NAMES,
    JSON_HEADERS,
    Harness,
    ReceiverHarness,
    fixture_bytes,
    fixture_json,
    open_harness,
    open_receiver,
)
from services import Services, unique_name

from eventlog import EmbeddedLog, EventLog, KafkaLog
from ingest import Credentials

F01 = "01_zulip_firing_2alerts.json"
F02 = "02_grafana_oncall_firing_3alerts.json"
F03 = "03_pythonwebhook_resolved_k8s_deployment.json"


def with_auth(value: str) -> dict[str, str]:
    return {**JSON_HEADERS, "Authorization": value}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- 400: the field is named -----------------------------------------------------------------


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        node: Any = body
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return mutate


def _drop(path: tuple[str | int, ...]) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        node: Any = body
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]

    return mutate


SCHEMA_ERRORS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("alerts.0.status", _set(("alerts", 0, "status"), "pending")),
    ("alerts.1.status", _drop(("alerts", 1, "status"))),
    ("status", _set(("status",), "FIRING")),
    ("status", _drop(("status",))),
    ("alerts", _drop(("alerts",))),
    ("alerts", _set(("alerts",), [])),
    ("alerts", _set(("alerts",), {"status": "firing"})),
    ("alerts.1.labels", _set(("alerts", 1, "labels"), ["host", "andromeda"])),
    ("alerts.0.labels.host", _set(("alerts", 0, "labels", "host"), 5)),
    ("alerts.0.labels", _drop(("alerts", 0, "labels"))),
    ("alerts.0.startsAt", _set(("alerts", 0, "startsAt"), "yesterday")),
    ("alerts.1.endsAt", _set(("alerts", 1, "endsAt"), "2020-13-01T00:00:00Z")),
    ("alerts.0.fingerprint", _set(("alerts", 0, "fingerprint"), "f" * 129)),
    ("truncatedAlerts", _set(("truncatedAlerts",), -1)),
    ("groupLabels", _set(("groupLabels",), "alertname")),
    ("commonLabels.severity", _set(("commonLabels", "severity"), None)),
]


@pytest.mark.parametrize(("field", "mutate"), SCHEMA_ERRORS, ids=[f for f, _ in SCHEMA_ERRORS])
async def test_schema_error_is_400_naming_the_field(
    field: str, mutate: Callable[[dict[str, Any]], None], tmp_path: Path
) -> None:
    body = copy.deepcopy(fixture_json(F01))
    mutate(body)
    async with open_harness(tmp_path) as h:
        status, answer, resp = await h.post(json.dumps(body).encode())
        assert await h.count() == 0
        metrics = await h.metrics()
    assert status == 400
    assert resp.content_type == "application/json"
    assert answer["field"] == field
    assert f": {field}: " in answer["error"]
    assert answer["errors"][0]["field"] == field
    assert metrics["sevpipe_webhooks_rejected_total", (("reason", "invalid_schema"),)] == 1


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b'{"status": "firing", "alerts": [', b"\xff\xfe{}", b"null x", b"{'}"],
)
async def test_invalid_json_is_400(body: bytes, tmp_path: Path) -> None:
    async with open_harness(tmp_path) as h:
        status, answer, resp = await h.post(body)
        metrics = await h.metrics()
    assert status == 400
    assert resp.content_type == "application/json"
    assert answer["error"].startswith("invalid JSON: ")
    assert " at line 1 column " in answer["error"]  # where, since there is no field to name
    assert metrics["sevpipe_webhooks_rejected_total", (("reason", "invalid_json"),)] == 1


@pytest.mark.parametrize("body", [b"[]", b"null", b'"firing"', b"4", b"NaN"])
async def test_json_that_is_not_an_object_is_400_naming_the_body(
    body: bytes, tmp_path: Path
) -> None:
    async with open_harness(tmp_path) as h:
        status, answer, _ = await h.post(body)
    assert status == 400
    assert answer["field"] == "body"


async def test_time_beyond_datetime_range_after_utc_conversion_is_400(tmp_path: Path) -> None:
    # 9999-12-31T23:00-05:00 is 10000-01-01T04:00Z: a bad value, not a server error.
    body = copy.deepcopy(fixture_json(F01))
    body["alerts"][0]["startsAt"] = "9999-12-31T23:00:00-05:00"
    async with open_harness(tmp_path) as h:
        status, answer, _ = await h.post(json.dumps(body).encode())
        assert await h.count() == 0
    assert status == 400, answer
    assert answer["field"] == "alerts.0.startsAt"


# -- 401 ----------------------------------------------------------------------------------------

BEARER = Credentials(bearer_token="t0ken-for-am")
BASIC = Credentials(basic_username="alertmanager", basic_password="pa:ss wörd")
BOTH = Credentials(bearer_token="t0ken-for-am", basic_username="am", basic_password="pw")


@pytest.mark.parametrize(
    ("creds", "authorization", "ok"),
    [
        (BEARER, None, False),
        (BEARER, "", False),
        (BEARER, "Bearer wrong", False),
        (BEARER, "Bearer t0ken-for-am-and-more", False),
        (BEARER, "Bearer ", False),
        (BEARER, "t0ken-for-am", False),
        (BEARER, basic("alertmanager", "t0ken-for-am"), False),
        (BEARER, "Bearer t0ken-for-am", True),
        (BEARER, "bearer t0ken-for-am", True),
        (BASIC, None, False),
        (BASIC, "Bearer t0ken-for-am", False),
        (BASIC, basic("alertmanager", "wrong"), False),
        (BASIC, basic("someone", "pa:ss wörd"), False),
        (BASIC, basic("alertmanager", ""), False),
        (BASIC, "Basic !!!notbase64", False),
        (BASIC, "Basic " + base64.b64encode(b"alertmanager").decode(), False),
        (BASIC, "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), False),
        (BASIC, basic("alertmanager", "pa:ss wörd"), True),
        (BOTH, None, False),
        (BOTH, basic("am", "t0ken-for-am"), False),
        (BOTH, "Bearer pw", False),
        (BOTH, basic("am", "pw"), True),
        (BOTH, "Bearer t0ken-for-am", True),
    ],
)
async def test_credentials(
    creds: Credentials, authorization: str | None, ok: bool, tmp_path: Path
) -> None:
    headers = dict(JSON_HEADERS) if authorization is None else with_auth(authorization)
    async with open_harness(tmp_path, credentials=creds) as h:
        status, answer, resp = await h.post(fixture_bytes(F02), headers=headers)
        count = await h.count()
        metrics = await h.metrics()
    if ok:
        assert status == 200, answer
        assert count == 3
        assert "WWW-Authenticate" not in resp.headers
    else:
        assert status == 401, answer
        assert count == 0
        assert resp.headers["WWW-Authenticate"] == ", ".join(creds.schemes())
        assert metrics["sevpipe_webhooks_rejected_total", (("reason", "auth"),)] == 1
        assert "t0ken" not in json.dumps(answer)


def test_www_authenticate_names_each_configured_scheme() -> None:
    assert BEARER.schemes() == ['Bearer realm="sevpipe"']
    assert BASIC.schemes() == ['Basic realm="sevpipe"']
    assert BOTH.schemes() == ['Bearer realm="sevpipe"', 'Basic realm="sevpipe"']
    assert "t0ken" not in repr(BOTH)
    assert "pw" not in repr(BOTH)


async def test_credentials_are_checked_before_the_body(tmp_path: Path) -> None:
    async with open_harness(tmp_path, credentials=BEARER, max_body_bytes=10) as h:
        for body, headers in [
            (b"not json", JSON_HEADERS),
            (fixture_bytes(F01), {"Content-Type": "text/plain"}),
        ]:
            status, _, _ = await h.post(body, headers=headers)
            assert status == 401


# -- 413 ----------------------------------------------------------------------------------------


def padded(name: str, size: int) -> bytes:
    """A valid body of exactly ``size`` bytes (JSON whitespace at the end)."""
    body = fixture_bytes(name).rstrip()
    assert len(body) <= size
    return body + b" " * (size - len(body))


async def chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


async def test_body_at_the_limit_is_accepted_one_byte_over_is_413(tmp_path: Path) -> None:
    limit = 4096
    async with open_harness(tmp_path, max_body_bytes=limit) as h:
        status, answer, resp = await h.post(padded(F01, limit))
        assert status == 200, answer
        assert resp.request_info.headers["Content-Length"] == str(limit)
        status, answer, resp = await h.post(padded(F02, limit + 1))
        assert status == 413
        assert answer["limit"] == limit
        assert await h.count() == 2
        metrics = await h.metrics()
    assert metrics["sevpipe_webhooks_rejected_total", (("reason", "too_large"),)] == 1


async def test_chunked_body_without_content_length(tmp_path: Path) -> None:
    limit = 4096
    async with open_harness(tmp_path, max_body_bytes=limit) as h:
        # under the limit, chunked: accepted
        async with h.client.post(
            "/api/v1/alerts", data=chunks(padded(F01, limit), 1000), headers=JSON_HEADERS
        ) as resp:
            assert "Content-Length" not in resp.request_info.headers
            assert resp.request_info.headers["Transfer-Encoding"] == "chunked"
            assert resp.status == 200
        # over the limit, chunked: 413 without waiting for the end
        async with h.client.post(
            "/api/v1/alerts", data=chunks(padded(F02, limit * 4), 1000), headers=JSON_HEADERS
        ) as resp:
            assert "Content-Length" not in resp.request_info.headers
            assert resp.status == 413
            assert (await resp.json())["limit"] == limit
        assert await h.count() == 2
        metrics = await h.metrics()
    assert metrics["sevpipe_webhooks_rejected_total", (("reason", "too_large"),)] == 1


async def test_compressed_bodies(tmp_path: Path) -> None:
    gzip_json = {**JSON_HEADERS, "Content-Encoding": "gzip"}
    async with open_harness(tmp_path, max_body_bytes=100_000) as h:
        status, answer, _ = await h.post(gzip.compress(fixture_bytes(F02)), headers=gzip_json)
        assert status == 200, answer
        # the limit applies to the decoded body: a small gzip bomb is still too large
        bomb = gzip.compress(b" " * 5_000_000)
        assert len(bomb) < 100_000
        status, answer, _ = await h.post(bomb, headers=gzip_json)
        assert status == 413, answer
        # a body that says gzip and is not: bad input (400), not a server error to retry
        status, answer, _ = await h.post(fixture_bytes(F01), headers=gzip_json)
        assert status == 400, answer
        assert answer["error"].startswith("cannot decode body")
        assert await h.count() == 3


# -- 415 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("application/octet-stream", 415),
        ("application/jsonx", 415),
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("Application/JSON", 200),
        ("application/vnd.alertmanager+json", 200),
    ],
)
async def test_content_type(content_type: str, expected: int, tmp_path: Path) -> None:
    async with open_harness(tmp_path) as h:
        status, answer, _ = await h.post(fixture_bytes(F03), headers={"Content-Type": content_type})
        count = await h.count()
        metrics = await h.metrics()
    assert status == expected, answer
    assert count == (1 if expected == 200 else 0)
    rejected = metrics["sevpipe_webhooks_rejected_total", (("reason", "content_type"),)]
    assert rejected == (1 if expected == 415 else 0)


async def test_missing_content_type_is_415(tmp_path: Path) -> None:
    async with open_harness(tmp_path) as h:
        status, _, _ = await h.post(fixture_bytes(F03), headers={})
        assert status == 415
        assert await h.count() == 0


# -- 503 ----------------------------------------------------------------------------------------


async def readyz(h: Harness) -> tuple[int, dict[str, Any]]:
    async with h.client.get("/readyz") as resp:
        body = await resp.json()
        assert isinstance(body, dict)
        return resp.status, body


async def test_log_write_locked_gives_503_and_recovers(tmp_path: Path) -> None:
    async with open_harness(tmp_path, busy_timeout=0.05) as h:
        assert (await h.post(fixture_bytes(F01)))[0] == 200
        assert (await readyz(h))[0] == 200

        locker = sqlite3.connect(h.log.path, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            status, answer, resp = await h.post(fixture_bytes(F02))
            assert status == 503, answer
            assert resp.headers["Retry-After"].isdigit()
            assert answer["error"].startswith("event log unavailable")
            ready_status, ready = await readyz(h)
            assert ready_status == 503
            assert ready["status"] == "unavailable"
            # an append that failed left nothing behind
            assert await h.count() == 2
        finally:
            locker.execute("ROLLBACK")
            locker.close()

        ready_status, ready = await readyz(h)
        assert ready_status == 200
        assert ready["status"] == "ready"
        status, answer, _ = await h.post(fixture_bytes(F02))  # Alertmanager's retry
        assert status == 200
        assert answer == {"accepted": 3, "appended": 3, "repeats": 0}
        assert await h.count() == 5
        metrics = await h.metrics()
    assert metrics["sevpipe_webhooks_rejected_total", (("reason", "log_unavailable"),)] == 1


async def test_closed_log_gives_503_not_500(tmp_path: Path) -> None:
    async with open_harness(tmp_path) as h:
        await h.log.close()
        status, answer, resp = await h.post(fixture_bytes(F01))
        assert status == 503, answer
        assert "Retry-After" in resp.headers
        assert (await readyz(h))[0] == 503


# -- repeats, metrics, other routes -------------------------------------------------------------


async def test_repeats_are_counted_not_appended(tmp_path: Path) -> None:
    async with open_harness(tmp_path) as h:
        first = await h.post(fixture_bytes(F02))
        second = await h.post(fixture_bytes(F02))
        third = await h.post(fixture_bytes(F02))
        records = await h.records()
        metrics = await h.metrics()
    assert first[:2] == (200, {"accepted": 3, "appended": 3, "repeats": 0})
    assert second[:2] == (200, {"accepted": 3, "appended": 0, "repeats": 3})
    assert third[:2] == (200, {"accepted": 3, "appended": 0, "repeats": 3})
    fingerprints = [r.envelope.data["fingerprint"] for r in records]
    assert sorted(fingerprints) == sorted(a["fingerprint"] for a in fixture_json(F02)["alerts"])
    assert metrics["sevpipe_alerts_repeated_total", ()] == 6


async def test_a_changed_alert_is_not_a_repeat(tmp_path: Path) -> None:
    firing = fixture_json(F02)
    resolved = copy.deepcopy(firing)
    resolved["status"] = "resolved"
    resolved["alerts"][0]["status"] = "resolved"
    resolved["alerts"][0]["endsAt"] = "2023-06-12T09:00:00Z"
    refired = copy.deepcopy(firing)  # alert 0 fires again, alert 1 with a new startsAt
    refired["alerts"][1]["startsAt"] = "2023-06-12T10:00:00Z"
    async with open_harness(tmp_path) as h:
        await h.post(json.dumps(firing).encode())
        _, answer_resolved, _ = await h.post(json.dumps(resolved).encode())
        _, answer_refired, _ = await h.post(json.dumps(refired).encode())
        records = await h.records()
    assert answer_resolved == {"accepted": 3, "appended": 1, "repeats": 2}
    assert answer_refired == {"accepted": 3, "appended": 2, "repeats": 1}
    assert [r.envelope.type for r in records] == ["alert.firing"] * 3 + [
        "alert.resolved",
        "alert.firing",
        "alert.firing",
    ]


# An alert Alertmanager resolved (its endsAt passed while Prometheus could not reach it) that
# then fires again with the same startsAt: on both logs, since each dedups in its own way.


@pytest.fixture(params=["embedded", "kafka"])
async def any_log_harness(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ReceiverHarness[EventLog]]:
    async with open_receiver(_log(request, tmp_path)) as h:
        yield h


def _log(request: pytest.FixtureRequest, tmp_path: Path) -> EventLog:
    if request.param == "embedded":
        return EmbeddedLog(tmp_path / "events.db")
    services: Services = request.getfixturevalue("services")
    return KafkaLog(services.kafka_bootstrap, topic_prefix=unique_name("refire") + ".")


def _one_alert(status: str, *, ends_at: str = "0001-01-01T00:00:00Z") -> bytes:
    body = fixture_json(F02)
    body["status"] = status
    body["alerts"] = [{**body["alerts"][0], "status": status, "endsAt": ends_at}]
    return json.dumps(body).encode()


FIRING = _one_alert("firing")
RESOLVED = _one_alert("resolved", ends_at="2023-06-12T09:00:00Z")
APPENDED = {"accepted": 1, "appended": 1, "repeats": 0}
REPEAT = {"accepted": 1, "appended": 0, "repeats": 1}


async def _answers(h: ReceiverHarness[EventLog], *bodies: bytes) -> list[dict[str, Any]]:
    return [(await h.post(body))[1] for body in bodies]


async def _types(h: ReceiverHarness[EventLog]) -> list[str]:
    return [r.envelope.type for r in await h.records()]


async def test_firing_again_after_resolved_with_the_same_starts_at_is_appended(
    any_log_harness: ReceiverHarness[EventLog],
) -> None:
    h = any_log_harness
    assert await _answers(h, FIRING, RESOLVED, FIRING) == [APPENDED] * 3
    assert await _types(h) == ["alert.firing", "alert.resolved", "alert.firing"]
    # and it can resolve and fire again as often as Alertmanager says so
    assert await _answers(h, RESOLVED, FIRING) == [APPENDED] * 2


async def test_the_same_state_as_the_latest_is_still_a_repeat(
    any_log_harness: ReceiverHarness[EventLog],
) -> None:
    h = any_log_harness
    # a re-send (group_interval) or an HA peer's duplicate of the latest state
    assert await _answers(h, FIRING, FIRING) == [APPENDED, REPEAT]
    assert await _answers(h, RESOLVED, RESOLVED) == [APPENDED, REPEAT]
    assert await _answers(h, FIRING, FIRING) == [APPENDED, REPEAT]  # the re-fire, then its copy
    assert await _types(h) == ["alert.firing", "alert.resolved", "alert.firing"]
    metrics = await h.metrics()
    assert metrics["sevpipe_alerts_repeated_total", ()] == 3


async def test_metrics_count_every_outcome(tmp_path: Path) -> None:
    token = with_auth("Bearer t0ken-for-am")
    async with open_harness(tmp_path, credentials=BEARER, max_body_bytes=8192) as h:
        assert (await h.post(fixture_bytes(F02), headers=token))[0] == 200
        assert (await h.post(fixture_bytes(F02), headers=token))[0] == 200
        assert (await h.post(fixture_bytes(F03), headers=token))[0] == 200
        assert (await h.post(fixture_bytes(F02)))[0] == 401
        assert (await h.post(b"{", headers=token))[0] == 400
        assert (await h.post(b"{}", headers=token))[0] == 400
        assert (await h.post(b"{}", headers={**token, "Content-Type": "text/plain"}))[0] == 415
        assert (await h.post(b" " * 9000, headers=token))[0] == 413
        m = await h.metrics()

    def rejected(reason: str) -> float:
        return m["sevpipe_webhooks_rejected_total", (("reason", reason),)]

    assert m["sevpipe_webhooks_received_total", ()] == 8
    assert m["sevpipe_alerts_received_total", (("status", "firing"),)] == 6
    assert m["sevpipe_alerts_received_total", (("status", "resolved"),)] == 1
    assert m["sevpipe_alerts_repeated_total", ()] == 3
    assert rejected("auth") == 1
    assert rejected("invalid_json") == 1
    assert rejected("invalid_schema") == 1
    assert rejected("content_type") == 1
    assert rejected("too_large") == 1
    assert rejected("log_unavailable") == 0
    assert rejected("internal") == 0
    assert m["sevpipe_eventlog_append_seconds_count", ()] == 3
    assert m["sevpipe_eventlog_append_seconds_bucket", (("le", "+Inf"),)] == 3
    assert m["sevpipe_eventlog_append_seconds_sum", ()] > 0


async def test_health_and_unknown_routes_answer_json(tmp_path: Path) -> None:
    async with open_harness(tmp_path) as h:
        async with h.client.get("/healthz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}
        async with h.client.get("/api/v1/alerts") as resp:
            assert resp.status == 405
            assert "POST" in resp.headers["Allow"]
            assert "error" in await resp.json()
        async with h.client.post("/api/v2/alerts", data=b"{}", headers=JSON_HEADERS) as resp:
            assert resp.status == 404
            assert "error" in await resp.json()


@pytest.mark.parametrize("name", FIXTURE_NAMES)
async def test_every_fixture_accepted_with_credentials(name: str, tmp_path: Path) -> None:
    n = len(fixture_json(name)["alerts"])
    async with open_harness(tmp_path, credentials=BOTH) as h:
        status, answer, _ = await h.post(fixture_bytes(name), headers=with_auth(basic("am", "pw")))
    assert status == 200
    assert answer["accepted"] == n
