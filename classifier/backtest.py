"""Backtest: replay the log's alerts through two policies in memory and compare incidents.

Nothing is written anywhere: the lifecycle is pure, so both runs fold the same alert stream
into in-memory groups, and incidents are matched by id (an incident's id comes from the
alert event that opened it, so it is the same under both policies when grouping is).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from classifier.classify import classify_alert
from classifier.grouping import incident_key
from classifier.lifecycle import AlertInput, Fold
from classifier.policy import Policy
from eventlog import EventLog, Record
from schemas import TOPIC_ALERTS
from schemas.events import AlertEnvelope
from schemas.incident_state import GroupState
from schemas.incidents import Incident
from schemas.severity import Severity

log = logging.getLogger(__name__)

PROGRESS_EVERY = 5000
BATCH = 500
"""Alerts folded together, as the live stage folds a consumer batch."""


@dataclass(frozen=True)
class SeverityChangeRow:
    incident_id: str
    key: str
    title: str
    old: Severity
    new: Severity
    why: tuple[str, ...]


@dataclass
class BacktestReport:
    alerts: int = 0
    incidents: int = 0
    changed: list[SeverityChangeRow] = field(default_factory=list)
    only_old: int = 0
    only_new: int = 0


class Simulation:
    """One policy's view of history: groups and every incident they produced."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.groups: dict[str, GroupState] = {}
        self.incidents: dict[str, Incident] = {}

    def feed_batch(self, items: Sequence[AlertInput]) -> None:
        """Fold ``items`` as the live stage folds one batch (with every group in memory)."""
        policy = self.policy
        folds: dict[str, Fold] = {}
        for item in items:
            key = incident_key(item.data, policy)
            fold = folds.get(key)
            if fold is None:
                group = self.groups.get(key)
                if group is None:
                    group = self.groups[key] = GroupState(key)
                fold = folds[key] = Fold(group, policy.reopen_window, policy.resolve_grace)
            fold.alert(item, classify_alert(item.data, policy))
        for fold in folds.values():
            fold.finish()
            self.incidents.update(fold.final)
            fold.group.clear_changes()

    def feed(self, item: AlertInput) -> None:
        self.feed_batch([item])


async def alert_inputs(
    eventlog: EventLog, since: datetime | None, until: datetime | None
) -> AsyncIterator[AlertInput]:
    record: Record
    async for record in eventlog.read([TOPIC_ALERTS], since=since, until=until):
        try:
            env = record.decode(AlertEnvelope)
        except ValidationError as exc:
            # Skipped as the live stage skips it, so both see the same alert stream.
            log.warning("skipping alert event at offset %d: %s", record.offset, exc)
            continue
        yield AlertInput(env.id, env.time, env.data)


async def backtest(
    eventlog: EventLog,
    current: Policy,
    candidate: Policy,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> BacktestReport:
    old, new = Simulation(current), Simulation(candidate)
    report = BacktestReport()
    batch: list[AlertInput] = []
    async for item in alert_inputs(eventlog, since, until):
        batch.append(item)
        if len(batch) >= BATCH:
            old.feed_batch(batch)
            new.feed_batch(batch)
            batch = []
        report.alerts += 1
        if on_progress is not None and report.alerts % PROGRESS_EVERY == 0:
            on_progress(report.alerts)
    old.feed_batch(batch)
    new.feed_batch(batch)
    report.incidents = len(old.incidents)
    for incident_id, before in old.incidents.items():
        after = new.incidents.get(incident_id)
        if after is None:
            report.only_old += 1
        elif after.severity != before.severity:
            report.changed.append(
                SeverityChangeRow(
                    incident_id,
                    before.key,
                    before.title,
                    before.severity,
                    after.severity,
                    after.reasons,
                )
            )
    report.only_new = sum(1 for i in new.incidents if i not in old.incidents)
    return report
