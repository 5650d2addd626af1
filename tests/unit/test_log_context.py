"""JSON log lines carry the ids of the event, incident and action in hand (sevpipe.logs),
set by the stage runtime around one record, by ``runtime.stage.about`` and by the actions
stage's ``ACTION_ID``; over an in-memory log, without I/O."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from test_deadletter import MemoryLog

from actions.catalogue import ACTION_ID
from eventlog import Record
from runtime.stage import EVENT_ID, INCIDENT_ID, StageRuntime, about, about_record
from schemas import TOPIC_ALERTS, TOPIC_INCIDENTS, Envelope, new_event_id
from schemas.deadletter import TOPIC_DEADLETTER
from sevpipe.logs import setup_logging

log = logging.getLogger("sevpipe.tests.log_context")
IDS = ("event_id", "incident_id", "action_id")
JsonLines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def json_logs() -> Iterator[JsonLines]:
    """``setup_logging(..., "json")`` as ``sevpipe run`` calls it, its handler writing to a
    buffer; yields a reader of the JSON lines written since the last read. The root logger
    is put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    setup_logging("info", "json")
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    handler.setStream(buffer)

    def lines() -> list[dict[str, Any]]:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return [orjson.loads(line) for line in text.splitlines()]

    try:
        yield lines
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_line_inside_the_context_carries_the_ids(json_logs: JsonLines) -> None:
    log.info("before")
    with about(event_id="ev-1", incident_id="inc-1"):
        marked = ACTION_ID.set("act-1")
        try:
            log.info("acting on %s", "origin-backend")
        finally:
            ACTION_ID.reset(marked)
        log.warning("after the action")
    log.info("outside")
    before, acting, after, outside = json_logs()
    assert not set(IDS) & before.keys()
    assert acting["message"] == "acting on origin-backend"
    assert (acting["event_id"], acting["incident_id"], acting["action_id"]) == (
        "ev-1",
        "inc-1",
        "act-1",
    )
    assert (after["event_id"], after["incident_id"]) == ("ev-1", "inc-1")
    assert "action_id" not in after
    assert not set(IDS) & outside.keys()
    assert EVENT_ID.get() is None
    assert INCIDENT_ID.get() is None


def test_nested_contexts_add_and_restore(json_logs: JsonLines) -> None:
    with about(incident_id="inc-1"):
        with about(event_id="ev-2"):
            log.info("inner")
        log.info("outer")
    inner, outer = json_logs()
    assert (inner["event_id"], inner["incident_id"]) == ("ev-2", "inc-1")
    assert outer["incident_id"] == "inc-1"
    assert "event_id" not in outer


def test_an_id_given_by_the_call_wins(json_logs: JsonLines) -> None:
    with about(incident_id="inc-ctx"):
        log.info("explicit", extra={"incident_id": "inc-call"})
    (line,) = json_logs()
    assert line["incident_id"] == "inc-call"


async def test_tasks_see_their_own_ids(json_logs: JsonLines) -> None:
    async def work(incident: str) -> None:
        with about(incident_id=incident):
            await asyncio.sleep(0)  # the other task runs in between
            log.info("working")

    await asyncio.gather(work("inc-a"), work("inc-b"))
    assert sorted(line["incident_id"] for line in json_logs()) == ["inc-a", "inc-b"]


def test_text_logs_are_unchanged() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    setup_logging("info", "text")
    buffer = io.StringIO()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        with about(event_id="ev-1"):
            log.info("plain")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert "plain" in buffer.getvalue()
    assert "ev-1" not in buffer.getvalue()


# -- the stage runtime marks the record in hand ------------------------------------------------


def record(topic: str, key: str, offset: int, data: dict[str, Any]) -> Record:
    env = Envelope(
        id=new_event_id(), type="t", source="/s", time=datetime.now(UTC), subject=key, data=data
    )
    return Record(topic, 0, offset, key, raw=env.json_bytes())


class Chatty:
    """Logs a line per batch; a record whose data says ``poison`` fails."""

    name = "chatty"
    topics = (TOPIC_ALERTS, TOPIC_INCIDENTS)

    async def handle(self, records: Sequence[Record]) -> None:
        log.info("handling %d", len(records))
        if any(orjson.loads(r.raw)["data"].get("poison") for r in records):
            raise ValueError("poison")


async def test_the_runtime_marks_the_record_in_hand(json_logs: JsonLines) -> None:
    incident = record(TOPIC_INCIDENTS, "inc-7", 0, {})
    alert = record(TOPIC_ALERTS, "group-key", 0, {})
    pair = [record(TOPIC_ALERTS, "group-key", n, {}) for n in (1, 2)]
    memory = MemoryLog([incident], [alert], pair)
    runtime = StageRuntime(memory, Chatty(), CollectorRegistry(), group="g", max_wait=0.01)
    async with asyncio.timeout(10):  # a hang guard
        await runtime.run(memory.stop)

    one, other, both = [line for line in json_logs() if line["message"].startswith("handling")]
    # An incident's event: its id and its incident (the key on the incidents topic).
    assert one["event_id"] == orjson.loads(incident.raw)["id"]
    assert one["incident_id"] == "inc-7"
    # An alert's event: its id; the key of the alerts topic is a group, not an incident.
    assert other["event_id"] == orjson.loads(alert.raw)["id"]
    assert "incident_id" not in other
    # A batch is about several events: no ids.
    assert both["message"] == "handling 2"
    assert not set(IDS) & both.keys()
    assert EVENT_ID.get() is None


async def test_a_dead_letter_line_names_its_record(json_logs: JsonLines) -> None:
    poison = record(TOPIC_INCIDENTS, "inc-8", 0, {"poison": True})
    undecodable = Record(TOPIC_INCIDENTS, 0, 1, "inc-9", raw=b"\xff not json")
    memory = MemoryLog([poison], [undecodable])
    runtime = StageRuntime(memory, Chatty(), CollectorRegistry(), group="g", max_wait=0.01)
    async with asyncio.timeout(10):
        await runtime.run(memory.stop)
    dead = [line for line in json_logs() if "dead letter" in line["message"]]
    assert len(dead) == 2
    assert [t for t, _ in memory.appended] == [TOPIC_DEADLETTER] * 2
    assert dead[0]["event_id"] == orjson.loads(poison.raw)["id"]
    assert dead[0]["incident_id"] == "inc-8"
    assert "event_id" not in dead[1]
    assert dead[1]["incident_id"] == "inc-9"


def test_about_record_reads_no_more_than_it_must() -> None:
    rec = record(TOPIC_INCIDENTS, "inc-1", 0, {})
    with about_record(rec):
        assert EVENT_ID.get() == orjson.loads(rec.raw)["id"]
        assert INCIDENT_ID.get() == "inc-1"
    assert EVENT_ID.get() is None
    assert INCIDENT_ID.get() is None
    for raw in (b"[1, 2]", b'{"id": 7}', b""):
        with about_record(Record(TOPIC_ALERTS, 0, 0, "k", raw=raw)):
            assert EVENT_ID.get() is None
            assert INCIDENT_ID.get() is None
