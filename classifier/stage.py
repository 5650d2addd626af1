"""The classifier stage: ``sevpipe.alerts`` in, incidents in the store, ``sevpipe.incidents`` out.

Per batch: load the groups, decide (pure), save state + outbox in one store transaction,
relay the outbox to the log, and only then commit the consumer offset (at-least-once; a
redelivered alert finds its mark already in the group and changes nothing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from classifier.classify import classify_alert
from classifier.grouping import incident_key
from classifier.lifecycle import AlertInput, Fold
from classifier.policy import Policy
from eventlog import EventLog, Record
from runtime.relay import relay_outbox
from runtime.stage import StageRuntime
from schemas import TOPIC_ALERTS, TOPIC_INCIDENTS, derived_event_id
from schemas.events import AlertEnvelope
from store.base import (
    GroupState,
    IncidentStore,
    IncidentWrite,
    OutboxEvent,
    StoreConflict,
)

log = logging.getLogger(__name__)

CONSUMER_GROUP = "sevpipe-classifier"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ALERT_TYPES = frozenset({"alert.firing", "alert.resolved"})


class ClassifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.alerts = Counter(
            "sevpipe_classifier_alerts_total", "Alert events classified", registry=registry
        )
        self.events = Counter(
            "sevpipe_incident_events_total",
            "Incident events decided, by type and the incident's severity after the event",
            ["type", "severity"],
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


def _inputs(records: Sequence[Record]) -> list[AlertInput]:
    """The alert events of ``records``; events of other types on the topic are not ours.

    A record that is not a valid alert event raises: the stage runtime then finds it and
    moves it to the dead letters, instead of it vanishing into a log line.
    """
    out = []
    for record in records:
        try:
            env = record.decode(AlertEnvelope)
        except ValidationError:
            if _other_type(record):
                continue
            raise
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

    def add(self, fold: Fold) -> None:
        """What ``fold`` decided, to be saved in one transaction with the rest of the batch."""
        changes = fold.finish()
        group = fold.group
        if not changes and not group.changed_marks:
            return  # nothing but stale alerts: the group stays as it is
        self.groups.append(group)
        self.outbox.extend(
            OutboxEvent(TOPIC_INCIDENTS, c.incident.id, c.envelope()) for c in changes
        )
        self.incidents.extend(
            IncidentWrite(inc, fold.loaded[inc.id]) for inc in fold.final.values()
        )


def fingerprints(inputs: Sequence[AlertInput], policy: Policy) -> dict[str, set[str]]:
    """The fingerprints each group key's alerts in ``inputs`` name: what a batch loads."""
    out: dict[str, set[str]] = {}
    for item in inputs:
        out.setdefault(incident_key(item.data, policy), set()).add(item.data.fingerprint)
    return out


def decide(inputs: Sequence[AlertInput], groups: dict[str, GroupState], policy: Policy) -> Decided:
    """Fold the inputs in log order into the loaded groups (mutated in place).

    All alerts of one group in the batch become one change of its incident: one version and
    one event (or a few, when the change is large or the incident opens or resolves in it).
    """
    folds: dict[str, Fold] = {}
    for item in inputs:
        key = incident_key(item.data, policy)
        fold = folds.get(key)
        if fold is None:
            fold = folds[key] = Fold(groups[key], policy.reopen_window, policy.resolve_grace)
        fold.alert(item, classify_alert(item.data, policy))
    decided = Decided([], [], [])
    for fold in folds.values():
        decided.add(fold)
    return decided


def decide_expiries(groups: dict[str, GroupState], now: datetime, policy: Policy) -> Decided:
    """Resolve the loaded groups' incidents whose grace period ran out by ``now``."""
    decided = Decided([], [], [])
    for group in groups.values():
        before = group.incident
        if before is None:
            continue
        fold = Fold(group, policy.reopen_window, policy.resolve_grace)
        fold.expire(now, derived_event_id(before.id[4:].upper(), "grace", str(before.version)))
        decided.add(fold)
    return decided


class ClassifierStage:
    """The classifier as a stage-runtime handler: alert batches in, incident changes out."""

    name = "classifier"
    topics = (TOPIC_ALERTS,)

    def __init__(
        self,
        eventlog: EventLog,
        store: IncidentStore,
        policy: Policy,
        metrics: ClassifierMetrics,
        *,
        group: str = CONSUMER_GROUP,
        batch_size: int = 2000,
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
        self._next_relay = 0.0
        self._event_time: datetime | None = None
        self._busy = False
        self.runtime: StageRuntime | None = None
        self.after_batch: Callable[[], None] | None = None
        """Called when a batch is done (the process's backpressure looks at the lag again)."""

    def lag(self) -> dict[tuple[str, int], int]:
        """Per (topic, partition): how many offsets the stage is behind the log's end."""
        return self.runtime.lag() if self.runtime is not None else {}

    def ready(self) -> bool:
        return self.runtime is not None and self.runtime.ready()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, on the stage runtime (outages waited out, poison
        records dead-lettered, the batch in hand finished on stop)."""
        self.runtime = StageRuntime(
            self.log,
            self,
            self.metrics.registry,
            group=self.group,
            batch_size=self.batch_size,
            max_backoff=self.max_backoff,
        )
        await self.runtime.run(stop)

    async def handle(self, records: Sequence[Record]) -> None:
        self._busy = True
        with self.metrics.batch_seconds.time():
            await self.process(records)
            await self.expire_graces()
        if self.after_batch is not None:
            self.after_batch()

    async def tick(self) -> None:
        """Before each poll: outbox rows others wrote (the API), and, when the last poll
        found nothing, grace periods that ran out while the log was quiet."""
        idle, self._busy = not self._busy, False
        now = time.monotonic()
        if idle or now >= self._next_relay:
            # A busy stage relays after each batch anyway; what others wrote (the API) is
            # picked up when idle, or at least once a second.
            self._next_relay = now + 1.0
            await relay_outbox(self.store, self.log)
        if idle and now >= self._next_expiry_scan:
            # Once a second is as precise as a grace period needs.
            self._next_expiry_scan = now + 1.0
            await self.expire_graces(max(self._event_time or _EPOCH, datetime.now(UTC)))

    async def process(self, records: Sequence[Record]) -> Decided:
        """Decide, store and relay one batch; retried on conflicts."""
        inputs = _inputs(records)
        wanted = fingerprints(inputs, self.policy)
        async for attempt in _on_conflict():
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self.metrics.conflicts.inc()
                groups = await self.store.load_groups(list(wanted), wanted)
                decided = decide(inputs, groups, self.policy)
                await self.store.save(decided.groups, decided.incidents, decided.outbox)
        await relay_outbox(self.store, self.log)
        if inputs:
            newest = max(i.time for i in inputs)
            self._event_time = max(self._event_time or newest, newest)
        self.metrics.alerts.inc(len(inputs))
        for item in decided.outbox:
            severity = item.envelope.data["incident"]["severity"]
            self.metrics.events.labels(item.envelope.type, severity).inc()
        return decided

    async def expire_graces(self, now: datetime | None = None) -> int:
        """Resolve open incidents whose grace period has run out by ``now``; returns how many.

        ``now`` defaults to the newest event time the stage has processed, so a replay of the
        same log expires the same incidents at the same points. Only a stage that has caught
        up with the log asks with the wall clock (``tick``): with nothing newer in the log,
        that is the best estimate of the time events would carry.
        """
        grace = self.policy.resolve_grace
        now = now or self._event_time
        if grace <= timedelta(0) or now is None:
            return 0
        keys = await self.store.due_graces(now, grace)
        if not keys:
            return 0
        async for attempt in _on_conflict():
            with attempt:
                groups = await self.store.load_groups(keys)
                decided = decide_expiries(groups, now, self.policy)
                await self.store.save(decided.groups, decided.incidents, decided.outbox)
        await relay_outbox(self.store, self.log)
        return len(decided.incidents)


def _on_conflict() -> AsyncRetrying:
    """Another writer changed a group or incident: reload and decide again, soon."""
    return AsyncRetrying(
        retry=retry_if_exception(lambda e: isinstance(e, StoreConflict)),
        stop=stop_after_attempt(20),
        wait=wait_exponential(multiplier=0.005, max=0.5),
        reraise=True,
    )
