"""Dead letters without I/O: the envelope's aware times, the byte-safe original, the ids, and
the runtime's splitting of a failed batch over an in-memory log."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from eventlog import AppendResult, GroupLag, Record, Subscription
from runtime.stage import StageRuntime
from schemas import EVENT_MODELS, TOPICS, Envelope, new_event_id
from schemas.deadletter import (
    MAX_VALUE_BYTES,
    TOPIC_DEADLETTER,
    DeadLetterData,
    OriginalRecord,
    deadletter_id,
    safe_text,
)

# -- the envelope ---------------------------------------------------------------------------


def envelope_json(time: str) -> bytes:
    return orjson.dumps(
        {
            "id": new_event_id(),
            "type": "t",
            "source": "/s",
            "time": time,
            "subject": "k",
            "data": {},
        }
    )


def test_envelope_times_must_carry_an_offset() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        Envelope.model_validate_json(envelope_json("2026-03-01T12:00:00"))
    with pytest.raises(ValidationError, match="timezone"):
        Envelope(**ATTRS, id="x", time=datetime(2026, 3, 1), data={})
    india = Envelope.model_validate_json(envelope_json("2026-03-01T12:00:00+05:30"))
    assert india.time.utcoffset() == timedelta(hours=5, minutes=30)
    assert Envelope.model_validate_json(envelope_json("2026-03-01T12:00:00Z")).time.tzinfo


def test_the_topic_and_its_events_are_registered() -> None:
    assert TOPIC_DEADLETTER in TOPICS
    assert EVENT_MODELS["deadletter.recorded"] is DeadLetterData
    assert "deadletter.retried" in EVENT_MODELS


# -- the original record --------------------------------------------------------------------


def test_text_is_kept_as_text_and_other_bytes_as_base64() -> None:
    raw = envelope_json("2026-03-01T12:00:00")
    text = OriginalRecord.of("sevpipe.alerts", 1, 42, "group-1", raw)
    assert (text.encoding, text.value, text.size, text.truncated) == (
        "utf-8",
        raw.decode(),
        len(raw),
        False,
    )
    assert text.raw() == raw
    assert text.event_id == orjson.loads(raw)["id"]
    assert text.event_type == "t"

    for odd in (b'{"a": "\xff"}', b'{"a": "nul \x00 here"}'):
        kept = OriginalRecord.of("t", 0, 1, "k", odd)
        assert kept.encoding == "base64"
        assert base64.b64decode(kept.value) == odd == kept.raw()
        assert kept.event_id is None


def test_a_giant_is_cut_and_says_so() -> None:
    raw = b'{"id": "x", "pad": "' + b"a" * MAX_VALUE_BYTES + b'"}'
    kept = OriginalRecord.of("t", 0, 1, "k", raw)
    assert kept.truncated
    assert kept.size == len(raw)
    assert kept.raw() == raw[:MAX_VALUE_BYTES]
    assert kept.event_id == "x"  # read from the whole record


def test_text_for_sinks_has_no_nul_nor_lone_surrogates() -> None:
    assert safe_text("a\x00b") == "a\ufffdb"
    assert safe_text("a\ud800b") == "a?b"
    assert safe_text("x" * 10, 5) == "xxxx\u2026"
    key = OriginalRecord.of("t", 0, 1, "group\x00key", b"{}").key
    assert "\x00" not in key


def test_the_id_is_derived_from_stage_and_position() -> None:
    raw = envelope_json("2026-03-01T12:00:00Z")
    original = OriginalRecord.of("sevpipe.alerts", 2, 7, "k", raw)
    first = deadletter_id("classifier", original)
    assert first == deadletter_id("classifier", OriginalRecord.of("sevpipe.alerts", 2, 7, "k", raw))
    assert first[:10] == orjson.loads(raw)["id"][:10]  # sorts with the original
    others = {
        deadletter_id("actions", original),
        deadletter_id("classifier", OriginalRecord.of("sevpipe.alerts", 2, 8, "k", raw)),
        deadletter_id("classifier", OriginalRecord.of("sevpipe.alerts", 1, 7, "k", raw)),
    }
    assert first not in others
    assert len(others) == 3
    assert deadletter_id("c", OriginalRecord.of("t", 0, 1, "k", b"junk")).startswith("0" * 10)


# -- splitting a batch, over an in-memory log -----------------------------------------------


class MemoryLog:
    """Just enough of an EventLog for the runtime: batches to fetch, appends kept."""

    def __init__(self, *batches: list[Record]) -> None:
        self.batches = list(batches)
        self.given = [r for batch in batches for r in batch]
        self.stop = asyncio.Event()  # set by the fetch once the batches are out
        self.appended: list[tuple[str, Envelope]] = []
        self.commits = 0

    async def start(self) -> None:
        return

    async def close(self) -> None:
        return

    async def append(self, topic: str, events: Sequence[Envelope], **_: Any) -> AppendResult:
        self.appended += [(topic, e) for e in events]
        return AppendResult(tuple(range(len(events))))

    def subscribe(self, topics: Sequence[str], group: str) -> Subscription:
        return MemorySub(self)

    async def read(
        self,
        topics: Sequence[str] | None = None,
        *,
        from_offset: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        last: int | None = None,
    ) -> AsyncIterator[Record]:
        found = [
            Record(topic, 0, i, env.subject, env)
            for i, (topic, env) in enumerate(self.appended)
            if topics is None or topic in topics
        ]
        for record in found[-last:] if last else found if last is None else []:
            yield record

    async def ping(self) -> None:
        return

    async def group_lag(self, group: str, topics: Sequence[str]) -> GroupLag:
        # One group: behind by what it was given until it commits.
        pending = 0 if self.commits else sum(r.topic in topics for r in self.given)
        return GroupLag(pending, self.commits)


class MemorySub:
    def __init__(self, log: MemoryLog) -> None:
        self.log = log

    async def fetch(self, max_records: int = 500, max_wait: float = 1.0) -> list[Record]:
        if not self.log.batches:
            self.log.stop.set()
            return []
        return self.log.batches.pop(0)

    async def commit(self) -> None:
        self.log.commits += 1

    async def close(self) -> None:
        return


class Picky:
    name = "picky"
    topics = ("in",)

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad
        self.handled: list[int] = []
        self.calls = 0

    async def handle(self, records: Sequence[Record]) -> None:
        self.calls += 1
        ns = [r.envelope.data["n"] for r in records]
        if self.bad & set(ns):
            raise ValueError("bad")
        self.handled += ns


def records(count: int) -> list[Record]:
    now = datetime.now(UTC)
    return [
        Record("in", 0, n, "k", Envelope(**ATTRS, id=new_event_id(), time=now, data={"n": n}))
        for n in range(count)
    ]


ATTRS = {"type": "t", "source": "/s", "subject": "k"}


@pytest.mark.parametrize(("size", "bad"), [(64, {17}), (64, {0, 63}), (7, {1, 2, 3}), (1, {0})])
async def test_a_failed_batch_is_split_to_its_poison(size: int, bad: set[int]) -> None:
    log = MemoryLog(records(size))
    handler = Picky(bad)
    runtime = StageRuntime(log, handler, CollectorRegistry(), group="g", max_wait=0.01)
    async with asyncio.timeout(10):  # a hang guard
        await runtime.run(log.stop)
    assert handler.handled == [n for n in range(size) if n not in bad]
    dead = [e for topic, e in log.appended if topic == TOPIC_DEADLETTER]
    assert sorted(e.data["original"]["offset"] for e in dead) == sorted(bad)
    assert log.commits == 1
    if len(bad) == 1 and size > 1:
        assert handler.calls <= 2 * (size - 1).bit_length() + 1  # halving, not one by one
