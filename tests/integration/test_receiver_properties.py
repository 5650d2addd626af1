"""Properties of the receiver over arbitrary input: never a 5xx, and a refusal stores nothing.

Every example goes through the real aiohttp app into a real EmbeddedLog; the examples of one
test share the app and the log, and each checks the log before and after its request.
"""

from __future__ import annotations

import copy
import gzip
import itertools
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from harness import FIXTURE_NAMES, Harness, fixture_bytes, fixture_json, open_harness
from hypothesis import given, settings
from hypothesis import strategies as st

LIMIT = 64 * 1024
Path_ = tuple[str | int, ...]

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=30)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)

OFFSETS = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
TIMES = st.one_of(
    st.datetimes(timezones=OFFSETS).map(lambda t: t.isoformat()),
    st.datetimes(timezones=OFFSETS).map(lambda t: t.isoformat().replace("+00:00", "Z")),
    st.datetimes().map(lambda t: t.isoformat()),  # no offset at all
    st.sampled_from(
        [
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59.999999999Z",
            "9999-12-31T23:59:59-00:01",
            "2020-02-06T00:17:58.432911368Z",
            "2020-02-30T00:00:00Z",
            "",
            "now",
        ]
    ),
    st.text(max_size=40),
    st.integers(),
    st.floats(),
)
EXAMPLES = itertools.count()
STATUSES = st.sampled_from(["firing", "resolved", "FIRING", "pending", "", " firing", None, 1])


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with open_harness(tmp_path, max_body_bytes=LIMIT, synchronous="normal") as h:
        yield h


async def check_contract(h: Harness, body: bytes, alerts: int | None = None) -> int:
    """POST ``body``; assert the contract for any input; return the status."""
    before = await h.count()
    status, answer, resp = await h.post(body)
    after = await h.count()
    assert status < 500, answer
    assert resp.content_type == "application/json"
    if status == 200:
        assert answer["accepted"] == answer["appended"] + answer["repeats"]
        assert after - before == answer["appended"]
        if alerts is not None:
            assert answer["accepted"] == alerts
    else:
        assert status in (400, 413), answer
        assert isinstance(answer["error"], str)
        assert after == before, f"a {status} answer appended {after - before} events"
    return status


@settings(max_examples=150)
@given(body=st.binary(max_size=3000))
async def test_random_bytes(harness: Harness, body: bytes) -> None:
    assert await check_contract(harness, body) == 400


CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/json; charset=latin-1", "text/plain", "", "*/*", "a/b+json"]
)
ENCODINGS = st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "gzip, br", "x"])


HEADERS = st.builds(
    lambda ct, enc: (
        {"Content-Type": ct} if enc is None else {"Content-Type": ct, "Content-Encoding": enc}
    ),
    CONTENT_TYPES,
    st.none() | ENCODINGS,
)


@settings(max_examples=150)
@given(
    headers=HEADERS,
    compress=st.booleans(),
    name=st.sampled_from(FIXTURE_NAMES),
    noise=st.binary(max_size=200),
)
async def test_headers_and_encodings(
    harness: Harness, headers: dict[str, str], compress: bool, name: str, noise: bytes
) -> None:
    body = fixture_bytes(name)
    if compress:
        body = gzip.compress(body)
    before = await harness.count()
    async with harness.client.post("/api/v1/alerts", data=body + noise, headers=headers) as resp:
        status = resp.status
    after = await harness.count()
    # An encoding aiohttp cannot decode (br without Brotli) is refused by its HTTP parser,
    # before our handler, as a plain-text 400: the status is what Alertmanager acts on.
    assert status < 500
    if status != 200:
        assert status in (400, 415)
        assert after == before


@settings(max_examples=150)
@given(value=JSON_VALUES)
async def test_random_json(harness: Harness, value: Any) -> None:
    await check_contract(harness, json.dumps(value).encode())


def all_paths(node: Any, prefix: Path_ = ()) -> list[Path_]:
    out = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            out += all_paths(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            out += all_paths(child, (*prefix, i))
    return out


def parent_of(body: Any, path: Path_) -> Any:
    node = body
    for part in path[:-1]:
        node = node[part]
    return node


def alert_dicts(body: dict[str, Any]) -> list[dict[str, Any]]:
    alerts = body.get("alerts")
    return [a for a in alerts if isinstance(a, dict)] if isinstance(alerts, list) else []


Body = dict[str, Any]
Mutation = Callable[[Body, st.DataObject], Body | bytes]


def _path(body: Body, data: st.DataObject) -> Path_:
    return data.draw(st.sampled_from([p for p in all_paths(body) if p]), label="path")


def _drop(body: Body, data: st.DataObject) -> Body | bytes:
    path = _path(body, data)
    del parent_of(body, path)[path[-1]]
    return body


def _retype(body: Body, data: st.DataObject) -> Body | bytes:
    path = _path(body, data)
    parent_of(body, path)[path[-1]] = data.draw(JSON_VALUES, label="value")
    return body


def _add_key(body: Body, data: st.DataObject) -> Body | bytes:
    dicts = [p for p in all_paths(body) if isinstance(parent_of(body, (*p, "x")), dict)]
    path = data.draw(st.sampled_from(dicts), label="dict")
    key = data.draw(st.text(max_size=12), label="key")
    parent_of(body, (*path, key))[key] = data.draw(JSON_VALUES, label="value")
    return body


def _status(body: Body, data: st.DataObject) -> Body | bytes:
    body["status"] = data.draw(STATUSES, label="status")
    return body


def _alert_status(body: Body, data: st.DataObject) -> Body | bytes:
    alert = data.draw(st.sampled_from(alert_dicts(body)), label="alert")
    alert["status"] = data.draw(STATUSES, label="status")
    return body


def _time(body: Body, data: st.DataObject) -> Body | bytes:
    alert = data.draw(st.sampled_from(alert_dicts(body)), label="alert")
    alert[data.draw(st.sampled_from(["startsAt", "endsAt"]))] = data.draw(TIMES, label="t")
    return body


def _huge(body: Body, data: st.DataObject) -> Body | bytes:
    path = _path(body, data)
    parent_of(body, path)[path[-1]] = "x" * data.draw(st.integers(1, 2 * LIMIT), label="size")
    return body


def _deep(body: Body, data: st.DataObject) -> Body | bytes:
    path = _path(body, data)
    depth = data.draw(st.integers(1, 5000), label="depth")
    value = json.dumps(parent_of(body, path)[path[-1]])
    parent_of(body, path)[path[-1]] = "\x00DEEP\x00"
    raw = json.dumps(body)
    return raw.replace('"\\u0000DEEP\\u0000"', "[" * depth + value + "]" * depth).encode()


def _many_alerts(body: Body, data: st.DataObject) -> Body | bytes:
    body["alerts"] = body["alerts"] * data.draw(st.integers(0, 60), label="copies")
    return body


def _non_utf8(body: Body, data: st.DataObject) -> Body | bytes:
    raw = json.dumps(body, ensure_ascii=False).encode()
    quotes = [i for i, b in enumerate(raw) if b == ord('"')]
    at = data.draw(st.sampled_from(quotes), label="at") + 1
    bad = data.draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]))
    return raw[:at] + bad + raw[at:]


def _truncate(body: Body, data: st.DataObject) -> Body | bytes:
    raw = json.dumps(body).encode()
    return raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]


def mutations_for(body: Body) -> list[Mutation]:
    """The mutations that apply to ``body`` (an earlier one may have removed its parts)."""
    out: list[Mutation] = [_add_key, _status, _truncate]
    if body:
        out += [_drop, _retype, _huge, _deep, _non_utf8]
    if alert_dicts(body):
        out += [_time, _alert_status]
    if isinstance(body.get("alerts"), list):
        out.append(_many_alerts)
    return out


@settings(max_examples=200)
@given(name=st.sampled_from(FIXTURE_NAMES), data=st.data())
async def test_mutated_fixtures(harness: Harness, name: str, data: st.DataObject) -> None:
    body: dict[str, Any] | bytes = copy.deepcopy(fixture_json(name))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        if isinstance(body, bytes):
            break
        mutation = data.draw(st.sampled_from(mutations_for(body)), label="mutation")
        body = mutation(body, data)
    if isinstance(body, bytes):
        await check_contract(harness, body)
        return
    raw = json.dumps(body).encode()
    alerts = body.get("alerts")
    status = await check_contract(harness, raw, len(alerts) if isinstance(alerts, list) else None)
    if len(raw) > LIMIT:
        assert status == 413


@settings(max_examples=100)
@given(starts=TIMES, ends=TIMES)
async def test_arbitrary_times(harness: Harness, starts: Any, ends: Any) -> None:
    body = copy.deepcopy(fixture_json("04_alerta_v4_firing_no_fingerprint.json"))
    body["alerts"][0]["startsAt"] = starts
    body["alerts"][0]["endsAt"] = ends
    body["alerts"][0]["labels"]["example"] = str(next(EXAMPLES))  # never a repeat
    status = await check_contract(harness, json.dumps(body).encode(), 1)
    if status == 200:
        stored = (await harness.records())[-1].envelope.data
        assert stored["labels"]["example"] == body["alerts"][0]["labels"]["example"]
        for key in ("starts_at", "ends_at"):
            value = stored[key]
            if value is not None:  # UTC, and never Go's zero time
                assert value.endswith("Z"), value
                assert not value.startswith("0001-01-01T00:00:00"), value
