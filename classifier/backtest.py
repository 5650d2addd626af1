"""Backtest: replay the log's alerts through two policies in memory and compare incidents.

Nothing is written anywhere: the lifecycle is pure, so both runs fold the same alert stream
into in-memory groups, and incidents are matched by id (an incident's id comes from the
alert event that opened it, so it is the same under both policies when grouping is).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from classifier.classify import classify
from classifier.grouping import incident_key
from classifier.lifecycle import AlertInput, Fold, admit
from classifier.policy import Policy
from eventlog import EventLog, Record
from schemas import TOPIC_ALERTS
from schemas.events import AlertEnvelope
from schemas.incident_state import AlertMark, GroupState
from schemas.incidents import Incident
from schemas.severity import Severity

log = logging.getLogger(__name__)

PROGRESS_EVERY = 5000
FREEZE_EVERY = 1000


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
    """One policy's view of history: every group folded in memory, deciding only.

    Each group keeps one simulating fold for the whole replay (no events, no change
    tracking): the fold decides alert by alert exactly as the live stage does, so batching
    changes nothing here, and each incident's summary is made once, at the end.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._folds: dict[str, Fold] = {}
        self._incidents: dict[str, Incident] = {}

    def key(self, item: AlertInput) -> str:
        """The incident group ``item`` falls in under this policy."""
        data = item.data
        return incident_key(data, self.policy) if self.policy.group_by else data.group.group_key

    def fold(self, key: str) -> Fold:
        """The group's simulating fold, made on first use."""
        fold = self._folds.get(key)
        if fold is None:
            policy = self.policy
            fold = self._folds[key] = Fold(
                GroupState(key), policy.reopen_window, policy.resolve_grace, simulate=True
            )
        return fold

    def feed(self, item: AlertInput) -> None:
        data = item.data
        cls = classify(data.labels, data.annotations, self.policy)
        self.fold(self.key(item)).alert(item, cls)

    def feed_batch(self, items: Sequence[AlertInput]) -> None:
        for item in items:
            self.feed(item)

    @property
    def incidents(self) -> dict[str, Incident]:
        """Every incident the groups produced, by id, as they stand after what was fed."""
        for fold in self._folds.values():
            fold.finish()
            self._incidents.update(fold.final)
        return self._incidents


def alert_input(record: Record) -> AlertInput | None:
    """The alert ``record`` carries, or None (logged) when the live stage would skip it."""
    try:
        env: AlertEnvelope = _parse_alert(record.raw)
    except ValidationError as exc:
        # Skipped as the live stage skips it, so both see the same alert stream.
        log.warning("skipping alert event at offset %d: %s", record.offset, exc)
        return None
    return AlertInput(env.id, env.time, env.data)


_parse_alert = AlertEnvelope.__pydantic_validator__.validate_json
"""``AlertEnvelope.model_validate_json`` less a call: a backtest parses millions."""


async def alert_inputs(
    eventlog: EventLog, since: datetime | None, until: datetime | None
) -> AsyncIterator[AlertInput]:
    async for record in eventlog.read([TOPIC_ALERTS], since=since, until=until):
        item = alert_input(record)
        if item is not None:
            yield item


@dataclass(frozen=True)
class Simulated:
    """Both policies' incidents after the same alerts, by id."""

    alerts: int
    current: dict[str, Incident]
    candidate: dict[str, Incident]


async def simulate(
    eventlog: EventLog,
    current: Policy,
    candidate: Policy,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Simulated:
    """Fold the log's alerts under both policies side by side, in memory."""
    old, new = Simulation(current), Simulation(candidate)
    # Under the same grouping, whether an alert is news to its group does not depend on the
    # policy: decided once for both, by the marks beside the group's two folds.
    shared: dict[str, tuple[dict[str, AlertMark], Fold, Fold]] | None = (
        {} if current.group_by == candidate.group_by else None
    )
    alerts = 0
    try:
        async for record in eventlog.read([TOPIC_ALERTS], since=since, until=until):
            item = alert_input(record)
            if item is None:
                continue
            alerts += 1
            if shared is None:
                old.feed(item)
                new.feed(item)
            else:
                key = old.key(item)
                group = shared.get(key)
                if group is None:
                    group = shared[key] = ({}, old.fold(key), new.fold(key))
                marks, old_fold, new_fold = group
                if admit(marks, item):
                    labels, annotations = item.data.labels, item.data.annotations
                    cls = classify(labels, annotations, current)
                    old_fold.alert(item, cls, admitted=True)
                    cls = classify(labels, annotations, candidate)
                    new_fold.alert(item, cls, admitted=True)
            if alerts % FREEZE_EVERY == 0:
                # What the simulations hold lives until the end: out of the collector's
                # sight, it is not traversed again at every full collection (a third of
                # the run's time otherwise). Freezing is O(1).
                gc.freeze()
                if on_progress is not None and alerts % PROGRESS_EVERY == 0:
                    on_progress(alerts)
        return Simulated(alerts, old.incidents, new.incidents)
    finally:
        gc.unfreeze()


async def backtest(
    eventlog: EventLog,
    current: Policy,
    candidate: Policy,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> BacktestReport:
    """The incidents whose severity differs between the two policies over the same alerts."""
    done = await simulate(
        eventlog, current, candidate, since=since, until=until, on_progress=on_progress
    )
    before_all, after_all = done.current, done.candidate
    report = BacktestReport(alerts=done.alerts, incidents=len(before_all))
    for incident_id, before in before_all.items():
        after = after_all.get(incident_id)
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
    report.only_new = sum(1 for i in after_all if i not in before_all)
    return report
