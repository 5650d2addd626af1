"""Event ids and the envelope: unique, sortable by creation, deterministic when derived."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

import schemas.envelope
from schemas import SCHEMA_VERSION, AlertEventData, Envelope, derived_event_id, new_event_id
from schemas.events import GroupContext

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def id_ms(event_id: str) -> int:
    """The millisecond timestamp in a ULID's first 10 characters."""
    value = 0
    for char in event_id[:10]:
        value = value * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(char)
    return value


def test_ids_are_ulids_of_now() -> None:
    before = time.time_ns() // 1_000_000
    event_id = new_event_id()
    after = time.time_ns() // 1_000_000
    assert len(event_id) == 26
    assert set(event_id) <= CROCKFORD
    assert before <= id_ms(event_id) <= after


def test_ids_sort_by_creation_and_are_unique() -> None:
    ids = [new_event_id() for _ in range(20_000)]  # many within one millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_from_many_threads_are_unique() -> None:
    out: list[list[str]] = [[] for _ in range(4)]

    def make(into: list[str]) -> None:
        into.extend(new_event_id() for _ in range(5000))

    threads = [threading.Thread(target=make, args=(o,)) for o in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for o in out for i in o]
    assert len(set(every)) == len(every)
    for o in out:
        assert o == sorted(o)


def test_ids_keep_sorting_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_800_000_000_000 * 1_000_000]
    monkeypatch.setattr(schemas.envelope, "time", SimpleNamespace(time_ns=lambda: now[0]))
    monkeypatch.setattr(schemas.envelope, "_clock", schemas.envelope._IdClock())  # restored after
    ids = []
    for step in (0, 5, -3, 0, -1000, 1010):  # milliseconds
        now[0] += step * 1_000_000
        ids.append(new_event_id())
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert [id_ms(i) - 1_800_000_000_000 for i in ids] == [0, 5, 5, 5, 5, 12]


def test_derived_ids_are_deterministic() -> None:
    parent = new_event_id()
    a = derived_event_id(parent, "incident.opened", "inc-1")
    assert a == derived_event_id(parent, "incident.opened", "inc-1")
    assert a != derived_event_id(parent, "incident.opened", "inc-2")
    assert a != derived_event_id(parent, "incident.escalated", "inc-1")
    assert a != derived_event_id(new_event_id(), "incident.opened", "inc-1")
    assert a != parent
    assert len(a) == 26
    assert set(a) <= CROCKFORD
    assert a[:10] == parent[:10]  # keeps the parent's time: still sorts with it


def test_envelope_new_and_json_round_trip() -> None:
    data = AlertEventData(
        status="firing",
        fingerprint="f",
        labels={"alertname": "A"},
        group=GroupContext(receiver="r", group_key="g"),
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    before = datetime.now(UTC)
    env = Envelope.new("alert.firing", "/sevpipe/ingest", "g", data)
    assert before <= env.time <= datetime.now(UTC)
    assert env.subject == "g"
    assert env.schemaversion == SCHEMA_VERSION
    assert env.data["received_at"] == "2026-01-01T00:00:00Z"  # JSON-ready payload
    assert AlertEventData.model_validate(env.data) == data
    assert Envelope.model_validate_json(env.model_dump_json()) == env
    assert Envelope.new("alert.firing", "/s", "g", data).id > env.id
