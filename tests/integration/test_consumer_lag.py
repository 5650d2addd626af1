"""Consumer lag on /metrics: how far a stage's subscription is behind the log's end."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from pydantic import BaseModel

from eventlog import EmbeddedLog
from schemas import TOPIC_ALERTS, Envelope
from sevpipe.http import ConsumerLagCollector


class _Payload(BaseModel):
    n: int


def _events(count: int) -> list[Envelope]:
    return [Envelope.new("test.event", "/test", f"k{i}", _Payload(n=i)) for i in range(count)]


async def test_lag_follows_fetches_and_appends(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path / "events.db") as log:
        await log.append(TOPIC_ALERTS, _events(5))
        sub = log.subscribe([TOPIC_ALERTS], "g")
        registry = CollectorRegistry()
        registry.register(ConsumerLagCollector("g", sub.lag))

        assert sub.lag() == {}  # nothing fetched yet: position unknown
        got = await sub.fetch(max_records=2, max_wait=0.1)
        assert len(got) == 2
        assert sub.lag() == {(TOPIC_ALERTS, 0): 3}
        text = generate_latest(registry).decode()
        assert 'sevpipe_consumer_lag{group="g",partition="0",topic="sevpipe.alerts"} 3.0' in text

        await log.append(TOPIC_ALERTS, _events(4))
        assert sub.lag() == {(TOPIC_ALERTS, 0): 7}
        while await sub.fetch(max_records=100, max_wait=0.1):
            pass
        assert sub.lag() == {(TOPIC_ALERTS, 0): 0}


async def test_lag_counts_what_was_there_before_a_restart(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path / "events.db") as log:
        await log.append(TOPIC_ALERTS, _events(6))
    async with EmbeddedLog(tmp_path / "events.db") as log:
        sub = log.subscribe([TOPIC_ALERTS], "g")
        await sub.fetch(max_records=1, max_wait=0.1)
        assert sub.lag() == {(TOPIC_ALERTS, 0): 5}
