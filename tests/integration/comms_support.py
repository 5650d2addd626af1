"""The comms stage on real embedded backends, fed by the real classifier, and a channel that
records what it was asked to post (the fake server side of a Slack-like API)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from incident_support import alert_json, append_webhook, drain, new_stage, records, webhook
from prometheus_client import CollectorRegistry

from comms.channel import ChannelRefused, ChannelRetry, Message, Outcome
from comms.console import ConsoleChannel
from comms.render import Renderer
from comms.routing import Routing, default_routing
from comms.stage import CONSUMER_GROUP, CommsMetrics, CommsStage
from eventlog import EmbeddedLog, Subscription
from schemas import TOPIC_ALERTS, TOPIC_INCIDENTS, TOPIC_NOTIFICATIONS, Envelope
from store import EmbeddedStore
from store.effects_embedded import EmbeddedEffectsLedger


class Crash(BaseException):
    """The process dies here (kill -9): nothing after it runs, no handler sees it."""


@dataclass
class Posted:
    """What the fake server received: every post, with its thread."""

    posts: list[tuple[Message, Outcome | None]] = field(default_factory=list)

    def effects(self) -> list[str]:
        return [m.effect_id for m, _ in self.posts]


class RecordingChannel:
    """A channel whose server is ``posted``; failures scripted per call."""

    def __init__(self, posted: Posted, name: str = "slack") -> None:
        self.name = name
        self.posted = posted
        self.fail_next: list[BaseException] = []
        self.crash_after_post = False
        self.sends = 0

    async def send(self, message: Message, thread: Outcome | None) -> Outcome:
        self.sends += 1
        if self.fail_next:
            raise self.fail_next.pop(0)
        self.posted.posts.append((message, thread))
        ts = f"{len(self.posted.posts)}.0001"
        if self.crash_after_post:
            raise Crash("killed after the server took the post")
        return {"channel": "C1", "ts": ts}

    async def check(self, message: Message, thread: Outcome | None) -> Outcome | None:
        for i, (m, _) in enumerate(self.posted.posts, 1):
            if m.effect_id == message.effect_id:
                return {"channel": "C1", "ts": f"{i}.0001"}
        return None

    async def close(self) -> None:
        return


@dataclass
class Comms:
    log: EmbeddedLog
    store: EmbeddedStore
    ledger: EmbeddedEffectsLedger
    data_dir: Path
    posted: Posted
    now: list[datetime]

    def stage(
        self, routing: Routing | None = None, *, lease: float = 60.0, **channels: Any
    ) -> CommsStage:
        console = ConsoleChannel(self.data_dir / "outbox" / "notifications.jsonl")
        return CommsStage(
            self.log,
            self.store,
            ledger=self.ledger,
            routing=routing or default_routing(),
            renderer=Renderer(),
            channels={"console": console, **channels},
            metrics=CommsMetrics(CollectorRegistry()),
            public_url="https://sevpipe.example",
            clock=lambda: self.now[0],
            lease=lease,
        )

    def subscribe(self) -> Subscription:
        return self.log.subscribe([TOPIC_INCIDENTS], CONSUMER_GROUP)

    async def incidents_from(self, *bodies: dict[str, Any]) -> None:
        """Alertmanager webhooks through the real classifier, incident events relayed."""
        classifier = new_stage(self.log, self.store)
        sub = self.log.subscribe([TOPIC_ALERTS], "classifier-under-test")
        for body in bodies:
            await append_webhook(self.log, body)
        await drain(classifier, sub)
        await sub.close()

    async def notifications(self) -> list[Envelope]:
        """The notifications topic read raw: every event appended, duplicates included."""
        return [r.envelope for r in await records(self.log, TOPIC_NOTIFICATIONS)]

    def outbox_lines(self) -> list[str]:
        path = self.data_dir / "outbox" / "notifications.jsonl"
        return path.read_text().splitlines() if path.exists() else []


@asynccontextmanager
async def open_comms(data_dir: Path) -> AsyncIterator[Comms]:
    async with (
        EmbeddedLog(data_dir / "events.db") as log,
        EmbeddedStore(data_dir / "store.db") as store,
        EmbeddedEffectsLedger(data_dir / "effects.db") as ledger,
    ):
        yield Comms(log, store, ledger, data_dir, Posted(), [datetime.now(UTC)])


async def run(stage: CommsStage, sub: Subscription, *, commit: bool = True) -> int:
    """What the runtime does for the stage until the incidents topic runs dry."""
    count = 0
    for _ in range(100):
        batch = await sub.fetch(500, max_wait=0.01)
        if not batch:
            return count
        await stage.handle(batch)
        if commit:
            await sub.commit()
        count += len(batch)
    raise AssertionError("the incidents topic never ran dry")


def sev1(group: str, *fingerprints: str, status: str = "firing") -> dict[str, Any]:
    return webhook(
        group,
        *(
            alert_json(fp, status, impact="feature_degraded", service="checkout")
            for fp in fingerprints
        ),
    )


def refused(reason: str) -> ChannelRefused:
    return ChannelRefused(reason, "the server said so")


def retry() -> ChannelRetry:
    return ChannelRetry("503 from the server", retry_after=None)


Clock = Callable[[], datetime]
