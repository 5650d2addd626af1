"""``sevpipe deadletter list|show|retry`` driven as a user does, on both backend sets.

The dead letters are made for real: a stage runtime with a handler that refuses some
records runs over the test's log (in this process), then the CLI reads and retries them.
What changed is read back raw from the log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from eventlog import EmbeddedLog, EventLog, KafkaLog, Record
from eventlog.kafka import partition_index
from runtime.stage import StageRuntime
from schemas import Envelope, new_event_id
from schemas.deadletter import TOPIC_DEADLETTER

from .backends import Backend
from .harness import TOPIC_ALERTS, sevpipe

pytestmark = pytest.mark.e2e

STAGE = "checker"
KEY = "group-1"


class Checker:
    """Refuses events with ``"poison": true`` unless fixed; raises on undecodable ones."""

    name = STAGE
    topics = (TOPIC_ALERTS,)

    def __init__(self, *, fixed: bool = False) -> None:
        self.fixed = fixed
        self.handled: list[int] = []

    async def handle(self, records: Sequence[Record]) -> None:
        envelopes = [r.envelope for r in records]
        for env in envelopes:
            if env.data.get("poison") and not self.fixed:
                raise ValueError(f"refusing n={env.data['n']}")
        self.handled.extend(env.data["n"] for env in envelopes)


def dead_letters(registry: CollectorRegistry) -> float:
    return sum(
        registry.get_sample_value("sevpipe_deadletters_total", {"stage": STAGE, "reason": r}) or 0.0
        for r in ("failed", "undecodable")
    )


def alert(n: int, *, poison: bool = False) -> Envelope:
    return Envelope(
        id=new_event_id(),
        type="alert.firing",
        source="/test",
        time=datetime.now(UTC),
        subject=KEY,
        data={"n": n, "poison": poison},
    )


NAIVE_TIME = "2026-03-01T12:00:00"  # no UTC offset: whose local time?


@dataclass(frozen=True)
class Poisoned:
    """A log with dead letters, on one backend set."""

    backend: Backend
    data_dir: Path
    sent: list[Envelope]  # n = 0..4; 1 and 3 are refused
    naive_id: str

    def open_log(self) -> EventLog:
        if self.backend.embedded:
            return EmbeddedLog(self.data_dir / "events.db")
        env = self.backend.env
        return KafkaLog(env["SEVPIPE_KAFKA_BOOTSTRAP"], topic_prefix=self.backend.topic_prefix)

    def cli(self, *args: str) -> Any:
        return sevpipe("deadletter", *args, "--data-dir", str(self.data_dir), env=self.backend.env)

    def rows(self, topic: str) -> list[tuple[str, bytes]]:
        """(id, bytes) of every record of ``topic`` as stored, no dedup."""
        return asyncio.run(self._rows(topic))

    async def _rows(self, topic: str) -> list[tuple[str, bytes]]:
        log = self.open_log()
        await log.start()
        try:
            return [(orjson.loads(r.raw)["id"], r.raw) async for r in log.read([topic])]
        finally:
            await log.close()

    def run_stage(self, handler: Checker, until: int) -> None:
        asyncio.run(self._run_stage(handler, until))

    async def _run_stage(self, handler: Checker, until: int) -> None:
        """Run the stage until ``until`` records were handled or dead-lettered, then stop."""
        log = self.open_log()
        await log.start()
        try:
            registry = CollectorRegistry()
            group = self.backend.topic_prefix + "sevpipe-checker"
            runtime = StageRuntime(log, handler, registry, group=group, max_wait=0.1)
            stop = asyncio.Event()
            task = asyncio.create_task(runtime.run(stop))
            async with asyncio.timeout(60):  # a hang guard
                while True:  # polled: the stage has no event to wait on for this
                    if len(handler.handled) + dead_letters(registry) >= until:
                        break
                    await asyncio.sleep(0.02)
            stop.set()
            await task
        finally:
            await log.close()

    def append(self, events: list[Envelope]) -> None:
        asyncio.run(self._append(events))

    async def _append(self, events: list[Envelope]) -> None:
        log = self.open_log()
        await log.start()
        try:
            await log.append(TOPIC_ALERTS, events)
        finally:
            await log.close()

    def letters(self) -> list[dict[str, Any]]:
        done = self.cli("list", "--format", "json")
        assert done.returncode == 0, done.stderr
        letters = orjson.loads(done.stdout)
        assert isinstance(letters, list)
        return letters

    def letter_of(self, event_id: str) -> dict[str, Any]:
        [found] = [x for x in self.letters() if x["original"]["event_id"] == event_id]
        return found


def append_naive(backend: Backend, data_dir: Path) -> str:
    """A record as a foreign producer writes it, bypassing Envelope's checks; its id."""
    attrs = {
        "id": new_event_id(),
        "type": "alert.firing",
        "source": "/foreign",
        "time": NAIVE_TIME,
        "subject": KEY,
        "schemaversion": "1",
    }
    data = b'{"n": 5}'
    if backend.embedded:
        blob = orjson.dumps(attrs)[:-1] + b',"data":' + data + b"}"
        conn = sqlite3.connect(data_dir / "events.db")
        try:
            conn.execute(
                "INSERT INTO events (topic, key, id, type, time_ms, dedup_key, envelope)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (TOPIC_ALERTS, KEY, attrs["id"], attrs["type"], 0, None, blob),
            )
            conn.commit()
        finally:
            conn.close()
    else:
        asyncio.run(_produce(backend, attrs, data))
    return attrs["id"]


async def _produce(backend: Backend, attrs: dict[str, str], data: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=backend.env["SEVPIPE_KAFKA_BOOTSTRAP"])
    await producer.start()
    try:
        await producer.send_and_wait(
            backend.topic_prefix + TOPIC_ALERTS,
            data,
            key=KEY.encode(),
            headers=[("ce_" + k, v.encode()) for k, v in attrs.items()],
            partition=partition_index(KEY.encode(), 3),  # where KafkaLog puts this key
        )
    finally:
        await producer.stop()


@pytest.fixture
def poisoned(backend: Backend, tmp_path: Path) -> Poisoned:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    sent = [alert(n, poison=n in (1, 3)) for n in range(5)]
    made = Poisoned(backend, data_dir, sent, naive_id="")
    made.append(sent)
    made = dataclasses.replace(made, naive_id=append_naive(backend, data_dir))  # after them
    handler = Checker()
    made.run_stage(handler, until=6)
    assert handler.handled == [0, 2, 4]
    return made


def test_list_shows_each_dead_letter_and_filters(poisoned: Poisoned) -> None:
    done = poisoned.cli("list")
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split()[:4] == ["ID", "FAILED", "AT", "STAGE"]
    assert len(lines) == 3
    assert [line.split()[2:4] for line in lines] == [
        [STAGE, "failed"],
        [STAGE, "failed"],
        [STAGE, "undecodable"],
    ]
    assert "ValueError: refusing n=1" in lines[0]
    assert "ValidationError" in lines[2]

    letters = poisoned.letters()
    assert [x["original"]["event_id"] for x in letters] == [
        poisoned.sent[1].id,
        poisoned.sent[3].id,
        poisoned.naive_id,
    ]
    assert [x["id"] for x in letters] == [line.split()[0] for line in lines]
    for x in letters:
        assert x["stage"] == STAGE
        assert x["original"]["topic"] == TOPIC_ALERTS
        assert x["retried"] is None
        assert "value" not in x["original"]  # show has it

    assert poisoned.cli("list", "--stage", "someone-else").stdout == "no dead letters\n"
    assert len(orjson.loads(poisoned.cli("list", "--since", "1h", "--format", "json").stdout)) == 3
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert orjson.loads(poisoned.cli("list", "--since", later, "--format", "json").stdout) == []
    bad = poisoned.cli("list", "--since", "yesterday")
    assert bad.returncode == 2
    assert "invalid time 'yesterday'" in bad.stderr


def test_show_prints_the_original_record(poisoned: Poisoned) -> None:
    letter = poisoned.letter_of(poisoned.sent[1].id)
    done = poisoned.cli("show", letter["id"])
    assert done.returncode == 0, done.stderr
    shown = orjson.loads(done.stdout)
    assert shown["id"] == letter["id"]
    assert shown["reason"] == "failed"
    assert shown["error"] == "refusing n=1"
    assert shown["original"]["encoding"] == "utf-8"
    assert Envelope.model_validate(shown["record"]) == poisoned.sent[1]

    naive = orjson.loads(poisoned.cli("show", poisoned.letter_of(poisoned.naive_id)["id"]).stdout)
    assert naive["reason"] == "undecodable"
    assert naive["record"]["time"] == NAIVE_TIME

    missing = poisoned.cli("show", "01NOTADEADLETTER0000000000")
    assert missing.returncode == 1
    assert "no dead letter" in missing.stderr


def test_a_record_that_is_not_an_envelope_cannot_be_retried(poisoned: Poisoned) -> None:
    before = (poisoned.rows(TOPIC_ALERTS), poisoned.rows(TOPIC_DEADLETTER))
    letter = poisoned.letter_of(poisoned.naive_id)
    done = poisoned.cli("retry", letter["id"])
    assert done.returncode == 1
    assert f"dead letter {letter['id']} cannot be retried" in done.stderr
    assert "not a valid event envelope" in done.stderr
    assert "timezone" in done.stderr
    assert "nothing was changed" in done.stderr
    assert done.stdout == ""
    assert (poisoned.rows(TOPIC_ALERTS), poisoned.rows(TOPIC_DEADLETTER)) == before


def test_retry_appends_the_original_again_once(poisoned: Poisoned) -> None:
    alerts_before = poisoned.rows(TOPIC_ALERTS)
    first = poisoned.letter_of(poisoned.sent[1].id)

    done = poisoned.cli("retry", first["id"])
    assert done.returncode == 0, done.stderr
    assert f"retried {first['id']}" in done.stdout
    alerts = poisoned.rows(TOPIC_ALERTS)
    assert alerts[: len(alerts_before)] == alerts_before
    [(again_id, again)] = alerts[len(alerts_before) :]
    assert again_id == poisoned.sent[1].id
    assert Envelope.model_validate_json(again) == poisoned.sent[1]
    assert poisoned.letter_of(poisoned.sent[1].id)["retried"]["event_id"] == poisoned.sent[1].id

    twice = poisoned.cli("retry", first["id"])
    assert twice.returncode == 1
    assert "retried already" in twice.stderr
    assert poisoned.rows(TOPIC_ALERTS) == alerts

    # --all: the other refused record; the naive one is named and left alone
    everything = poisoned.cli("retry", "--all")
    assert everything.returncode == 1
    assert "1 retried, 1 cannot be retried" in everything.stdout
    assert poisoned.letter_of(poisoned.naive_id)["id"] in everything.stderr
    after_all = poisoned.rows(TOPIC_ALERTS)
    assert [row[0] for row in after_all[len(alerts) :]] == [poisoned.sent[3].id]

    again_all = poisoned.cli("retry", "--all")
    assert "0 retried, 1 cannot be retried" in again_all.stdout
    assert poisoned.rows(TOPIC_ALERTS) == after_all
    retried = [x["retried"] is not None for x in poisoned.letters()]
    assert retried == [True, True, False]
    markers = [r for r in poisoned.rows(TOPIC_DEADLETTER) if b"deadletter.retried" in r[1]]
    assert len(markers) == 2

    # Once the stage is fixed, it takes the retried records where it left off.
    fixed = Checker(fixed=True)
    poisoned.run_stage(fixed, until=2)
    assert fixed.handled == [1, 3]
