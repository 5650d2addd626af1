"""The classifier stage: ``sevpipe.alerts`` in, incidents in the store, ``sevpipe.incidents`` out.

Per batch: load the groups, decide (pure), save state + outbox in one store transaction,
relay the outbox to the log, and only then commit the consumer offset (at-least-once; a
redelivered alert finds its mark already in the group and changes nothing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from classifier.classify import classify_alert
from classifier.lifecycle import AlertInput, apply_alert, expire_grace, grace_deadline
from classifier.outbox import relay_outbox
from classifier.policy import Policy
from eventlog import EventLog, Record, Subscription
from schemas import TOPIC_ALERTS, TOPIC_INCIDENTS, AlertEventData, derived_event_id
from schemas.events import AlertEnvelope
from store.base import (
    GroupState,
    IncidentQuery,
    IncidentStore,
    IncidentWrite,
    OutboxEvent,
    StoreConflict,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
CONSUMER_GROUP = "sevpipe-classifier"
ALERT_TYPES = frozenset({"alert.firing", "alert.resolved"})


class ClassifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.alerts = Counter(
            "sevpipe_classifier_alerts_total", "Alert events classified", registry=registry
        )
        self.events = Counter(
            "sevpipe_incident_events_total",
            "Incident events decided, by type",
            ["type"],
            registry=registry,
        )
        self.conflicts = Counter(
            "sevpipe_classifier_conflicts_total",
            "Store conflicts (another writer changed a group); the batch was decided again",
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "sevpipe_classifier_batch_seconds",
            "Time to classify, store and relay one batch",
            registry=registry,
        )


def incident_key(data: AlertEventData, policy: Policy) -> str:
    if not policy.group_by:
        return data.group.group_key
    return "{" + ",".join(f'{n}="{data.labels.get(n, "")}"' for n in policy.group_by) + "}"


def _inputs(records: Sequence[Record]) -> list[AlertInput]:
    out = []
    for record in records:
        try:
            env = record.decode(AlertEnvelope)
        except ValidationError as exc:
            if _other_type(record):
                continue  # not ours to classify
            # A malformed event must not wedge the stage; it stays in the log for inspection.
            log.error(  # noqa: TRY400 - the validation message is the useful part
                "skipping malformed alert event at %s offset %d: %s",
                record.topic,
                record.offset,
                exc,
            )
            continue
        if env.type in ALERT_TYPES:
            out.append(AlertInput(env.id, env.time, env.data))
    return out


def _other_type(record: Record) -> bool:
    try:
        return record.envelope.type not in ALERT_TYPES
    except ValidationError:
        return False


@dataclass
class Decided:
    groups: list[GroupState]
    incidents: list[IncidentWrite]
    outbox: list[OutboxEvent]


def decide(inputs: Sequence[AlertInput], groups: dict[str, GroupState], policy: Policy) -> Decided:
    """Apply the inputs in log order to the loaded groups (mutated in place)."""
    loaded = {g.incident.id: g.incident.version for g in groups.values() if g.incident}
    touched_groups: dict[str, GroupState] = {}
    outbox: list[OutboxEvent] = []
    latest: dict[str, IncidentWrite] = {}
    for item in inputs:
        group = groups[incident_key(item.data, policy)]
        touched_groups[group.key] = group
        cls = classify_alert(item.data, policy)
        events = apply_alert(group, item, cls, policy.reopen_window, policy.resolve_grace)
        for change in events:
            outbox.append(OutboxEvent(TOPIC_INCIDENTS, change.incident.id, change.envelope()))
            inc = change.incident
            latest[inc.id] = IncidentWrite(inc, loaded.get(inc.id, 0))
    return Decided(list(touched_groups.values()), list(latest.values()), outbox)


def decide_expiries(groups: dict[str, GroupState], now: datetime, policy: Policy) -> Decided:
    """Resolve the loaded groups' incidents whose grace period ran out by ``now``."""
    decided = Decided([], [], [])
    for group in groups.values():
        before = group.incident
        if before is None:
            continue
        cause = derived_event_id(before.id[4:].upper(), "grace", str(before.version))
        for change in expire_grace(group, now, policy.resolve_grace, cause_id=cause):
            decided.outbox.append(
                OutboxEvent(TOPIC_INCIDENTS, change.incident.id, change.envelope())
            )
            decided.incidents.append(IncidentWrite(change.incident, before.version))
            decided.groups.append(group)
    return decided


def _retriable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retriable", False))


class _Stopped(Exception):
    """Raised instead of another retry once shutdown has begun."""


class ClassifierStage:
    def __init__(
        self,
        eventlog: EventLog,
        store: IncidentStore,
        policy: Policy,
        metrics: ClassifierMetrics,
        *,
        group: str = CONSUMER_GROUP,
        batch_size: int = 500,
        max_backoff: float = 30.0,
    ) -> None:
        self.log = eventlog
        self.store = store
        self.policy = policy
        self.metrics = metrics
        self.group = group
        self.batch_size = batch_size
        self.max_backoff = max_backoff
        self._next_expiry_scan = 0.0
        self._sub: Subscription | None = None

    def lag(self) -> dict[tuple[str, int], int]:
        """Per (topic, partition): how many offsets the stage is behind the log's end."""
        lag = getattr(self._sub, "lag", None)
        return dict(lag()) if callable(lag) else {}

    async def process(self, records: Sequence[Record]) -> Decided:
        """Decide, store and relay one batch; retried on conflicts."""
        inputs = _inputs(records)
        keys = list(dict.fromkeys(incident_key(i.data, self.policy) for i in inputs))
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, StoreConflict)),
            stop=stop_after_attempt(20),
            wait=wait_exponential(multiplier=0.005, max=0.5),
            reraise=True,
        ):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self.metrics.conflicts.inc()
                groups = await self.store.load_groups(keys)
                decided = decide(inputs, groups, self.policy)
                await self.store.save(decided.groups, decided.incidents, decided.outbox)
        await relay_outbox(self.store, self.log)
        self.metrics.alerts.inc(len(inputs))
        for item in decided.outbox:
            self.metrics.events.labels(item.envelope.type).inc()
        return decided

    async def expire_graces(self, now: datetime | None = None) -> int:
        """Resolve open incidents whose grace period has run out; returns how many."""
        if self.policy.resolve_grace <= timedelta(0):
            return 0
        if now is None:
            # Scanning open incidents on every batch would tax a busy stage; once a second
            # is as precise as a grace period needs.
            if time.monotonic() < self._next_expiry_scan:
                return 0
            self._next_expiry_scan = time.monotonic() + 1.0
            now = datetime.now(UTC)
        open_incidents = await self.store.list_incidents(IncidentQuery(status="open", limit=10_000))
        keys = [
            i.key
            for i in open_incidents
            if (deadline := grace_deadline(i, self.policy.resolve_grace)) and deadline <= now
        ]
        if not keys:
            return 0
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, StoreConflict)),
            stop=stop_after_attempt(20),
            wait=wait_exponential(multiplier=0.005, max=0.5),
            reraise=True,
        ):
            with attempt:
                groups = await self.store.load_groups(keys)
                decided = decide_expiries(groups, now, self.policy)
                await self.store.save(decided.groups, decided.incidents, decided.outbox)
        await relay_outbox(self.store, self.log)
        return len(decided.incidents)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; outages of the log or store are waited out."""
        sub = self.log.subscribe([TOPIC_ALERTS], self.group)
        self._sub = sub
        try:
            await self._consume(sub, stop)
        except _Stopped:
            log.info("classifier stopped while waiting out an outage")
        finally:
            await sub.close()

    async def _consume(self, sub: Subscription, stop: asyncio.Event) -> None:
        await self._with_backoff(stop, lambda: relay_outbox(self.store, self.log))
        while not stop.is_set():
            records = await self._with_backoff(
                stop, lambda: sub.fetch(self.batch_size, max_wait=0.5)
            )
            await self._with_backoff(stop, self.expire_graces)
            if not records:
                continue
            with self.metrics.batch_seconds.time():
                await self._with_backoff(stop, lambda r=records: self.process(r))  # type: ignore[misc]
            await self._with_backoff(stop, sub.commit)

    async def _with_backoff(self, stop: asyncio.Event, fn: Callable[[], Awaitable[T]]) -> T:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_retriable),
            wait=wait_exponential(multiplier=0.1, max=self.max_backoff),
            before_sleep=lambda rs: log.warning(
                "classifier: %s; retrying (attempt %d)",
                rs.outcome.exception() if rs.outcome else "?",
                rs.attempt_number,
            ),
            reraise=True,
        ):
            with attempt:
                if stop.is_set() and attempt.retry_state.attempt_number > 1:
                    raise _Stopped
                return await fn()
        raise AssertionError("unreachable")  # pragma: no cover
