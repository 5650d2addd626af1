"""``sevpipe deadletter list|show|retry`` driven as a user does, on the embedded default.

The dead letters are made for real: a stage runtime with a handler that refuses some
records runs over the data dir's log (in this process), then the CLI reads and retries them.
What changed is read back from the log's own file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from eventlog import EmbeddedLog, Record
from runtime.stage import StageRuntime
from schemas import Envelope, new_event_id
from schemas.deadletter import TOPIC_DEADLETTER

from .harness import TOPIC_ALERTS, sevpipe

pytestmark = pytest.mark.e2e

STAGE = "checker"
GROUP = "sevpipe-checker"


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


async def run_stage(db: Path, handler: Checker, until: int) -> None:
    """Run the stage over the log until ``until`` records were handled or dead-lettered."""
    async with EmbeddedLog(db) as log:
        registry = CollectorRegistry()
        runtime = StageRuntime(log, handler, registry, group=GROUP, max_wait=0.1)
        stop = asyncio.Event()
        task = asyncio.create_task(runtime.run(stop))
        async with asyncio.timeout(60):  # a hang guard
            while True:  # polled: the stage has no event to wait on for this
                if len(handler.handled) + dead_letters(registry) >= until:
                    break
                await asyncio.sleep(0.02)
        stop.set()
        await task


def alert(n: int, *, poison: bool = False) -> Envelope:
    return Envelope(
        id=new_event_id(),
        type="alert.firing",
        source="/test",
        time=datetime.now(UTC),
        subject="group-1",
        data={"n": n, "poison": poison},
    )


def insert_naive(db: Path) -> str:
    """A record a foreign producer wrote: its time has no UTC offset."""
    event_id = new_event_id()
    blob = orjson.dumps(
        {
            "id": event_id,
            "type": "alert.firing",
            "source": "/foreign",
            "time": "2026-03-01T12:00:00",
            "subject": "group-1",
            "schemaversion": "1",
            "data": {"n": 5},
        }
    )
    conn = sqlite3.connect(db)
    try:
        conn.execute(
            "INSERT INTO events (topic, key, id, type, time_ms, dedup_key, envelope)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (TOPIC_ALERTS, "group-1", event_id, "alert.firing", 0, None, blob),
        )
        conn.commit()
    finally:
        conn.close()
    return event_id


@dataclass(frozen=True)
class Poisoned:
    data_dir: Path
    sent: list[Envelope]  # n = 0..4; 1 and 3 are refused
    naive_id: str

    @property
    def db(self) -> Path:
        return self.data_dir / "events.db"

    def cli(self, *args: str) -> Any:
        return sevpipe("deadletter", *args, "--data-dir", str(self.data_dir))

    def rows(self, topic: str) -> list[tuple[str, bytes]]:
        """(id, envelope) of every row of ``topic``, straight from the log's file."""
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(
                "SELECT id, envelope FROM events WHERE topic = ? ORDER BY seq", (topic,)
            ).fetchall()
        finally:
            conn.close()

    def letters(self) -> list[dict[str, Any]]:
        done = self.cli("list", "--format", "json")
        assert done.returncode == 0, done.stderr
        letters = orjson.loads(done.stdout)
        assert isinstance(letters, list)
        return letters

    def letter_of(self, event_id: str) -> dict[str, Any]:
        [found] = [x for x in self.letters() if x["original"]["event_id"] == event_id]
        return found


async def _append(db: Path, events: list[Envelope]) -> None:
    async with EmbeddedLog(db) as log:
        await log.append(TOPIC_ALERTS, events)


@pytest.fixture
def poisoned(tmp_path: Path) -> Poisoned:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = data_dir / "events.db"
    sent = [alert(n, poison=n in (1, 3)) for n in range(5)]
    asyncio.run(_append(db, sent))
    naive_id = insert_naive(db)
    handler = Checker()
    asyncio.run(run_stage(db, handler, until=6))
    assert handler.handled == [0, 2, 4]
    return Poisoned(data_dir, sent, naive_id)


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
    assert naive["record"]["time"] == "2026-03-01T12:00:00"

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
    asyncio.run(run_stage(poisoned.db, fixed, until=2))
    assert fixed.handled == [1, 3]
