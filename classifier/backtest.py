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
        self.groups: dict[str, GroupState] = {}
        self._folds: dict[str, Fold] = {}
        self._incidents: dict[str, Incident] = {}

    def feed(self, item: AlertInput) -> None:
        policy = self.policy
        key = incident_key(item.data, policy)
        fold = self._folds.get(key)
        if fold is None:
            group = self.groups[key] = GroupState(key)
            fold = self._folds[key] = Fold(
                group, policy.reopen_window, policy.resolve_grace, simulate=True
            )
        fold.alert(item, classify_alert(item.data, policy))

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
    async for item in alert_inputs(eventlog, since, until):
        old.feed(item)
        new.feed(item)
        report.alerts += 1
        if on_progress is not None and report.alerts % PROGRESS_EVERY == 0:
            on_progress(report.alerts)
    before_all, after_all = old.incidents, new.incidents
    report.incidents = len(before_all)
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
