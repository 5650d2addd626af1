"""The pieces a fold is made of: the working incident summary, the span of changes that
becomes one event, how consecutive changes merge, and what it keeps of each alert."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, Protocol

from classifier.changes import bounded_labels, bounded_reasons, clip
from schemas import AlertEventData
from schemas.incidents import (
    INCIDENT_ESCALATED,
    INCIDENT_RESOLVED,
    INCIDENT_UPDATED,
    Incident,
    IncidentAlert,
    IncidentCounts,
    IncidentEventType,
)
from schemas.severity import Classification, Severity

MAX_NOTES = 5
"""Change descriptions an event spells out; the rest are counted."""


def title_of(data: AlertEventData) -> str:
    summary = data.annotations.get("summary") or data.annotations.get("title") or ""
    name = data.alertname or data.group.group_key
    return clip(f"{name}: {summary}" if summary else name)


def incident_alert(data: AlertEventData, cls: Classification) -> IncidentAlert:
    # Every field comes from validated models: no need to validate again per alert.
    return IncidentAlert.model_construct(
        fingerprint=data.fingerprint,
        alertname=data.alertname,
        status=data.status,
        starts_at=data.starts_at,
        ends_at=data.ends_at,
        severity=cls.severity,
        reasons=cls.reasons,
        summary=clip(data.annotations.get("summary", ""), 1000),
        labels=bounded_labels(data.labels),
    )


def alert_reasons(data: AlertEventData, cls: Classification) -> tuple[str, ...]:
    name = data.alertname or data.fingerprint
    return bounded_reasons([f"{name}: {r}" for r in cls.reasons])


class AlertView(Protocol):
    """What the fold reads of an alert it holds: an IncidentAlert, or a simulation's Seen."""

    @property
    def fingerprint(self) -> str: ...
    @property
    def alertname(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def severity(self) -> Severity: ...


class Seen(NamedTuple):
    """All a simulating fold keeps of an alert: a backtest holds every alert of history, and
    a whole IncidentAlert each would cost it ten times the memory."""

    fingerprint: str
    alertname: str
    status: str
    severity: Severity


@dataclass(slots=True)
class Work:
    """A mutable incident summary while a batch folds; frozen into an Incident per event."""

    incident: Incident
    severity: Severity
    severity_source: str
    status: str
    reasons: tuple[str, ...]
    updated_at: datetime
    resolved_at: datetime | None
    resolving_since: datetime | None
    version: int
    alerts: int
    firing: int
    resolved: int

    @classmethod
    def of(cls, inc: Incident) -> Work:
        c = inc.counts
        return cls(
            inc,
            inc.severity,
            inc.severity_source,
            inc.status,
            inc.reasons,
            inc.updated_at,
            inc.resolved_at,
            inc.resolving_since,
            inc.version,
            c.alerts,
            c.firing,
            c.resolved,
        )

    @property
    def id(self) -> str:
        return self.incident.id

    def freeze(self) -> Incident:
        counts = IncidentCounts(alerts=self.alerts, firing=self.firing, resolved=self.resolved)
        return self.incident.model_copy(
            update={
                "severity": self.severity,
                "severity_source": self.severity_source,
                "status": self.status,
                "reasons": self.reasons,
                "counts": counts,
                "updated_at": self.updated_at,
                "resolved_at": self.resolved_at,
                "resolving_since": self.resolving_since,
                "version": self.version,
            }
        )

    def count(self, old: AlertView | None, new_status: str) -> None:
        """Move the counts from ``old``'s status (or no alert) to ``new_status``."""
        if old is None:
            self.alerts += 1
        elif old.status == "firing":
            self.firing -= 1
        else:
            self.resolved -= 1
        if new_status == "firing":
            self.firing += 1
        else:
            self.resolved += 1


@dataclass(slots=True)
class Span:
    """Consecutive changes of one incident that become one event (or a few, if large)."""

    type: IncidentEventType
    cause_id: str
    previous: Severity | None
    notes: list[str] = field(default_factory=list)
    steps: int = 0
    alerts: dict[str, IncidentAlert] = field(default_factory=dict)

    def note(self, text: str) -> None:
        self.steps += 1
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)

    def text(self) -> str:
        more = self.steps - len(self.notes)
        return "; ".join(self.notes) + (f"; and {more} more changes" if more > 0 else "")


def merged_type(span: IncidentEventType, step: IncidentEventType) -> IncidentEventType | None:
    """The type of ``span`` after absorbing ``step``, or None if ``step`` needs its own event.

    Opening, reopening and resolving are each an event of their own, so a consumer (comms,
    actions) sees every transition; an update folds into whatever came before it, and an
    escalation or a resolve makes a run of updates into an escalation or a resolve.
    """
    if step == INCIDENT_UPDATED:
        return span
    if step == INCIDENT_ESCALATED and span != INCIDENT_RESOLVED:
        return INCIDENT_ESCALATED if span == INCIDENT_UPDATED else span
    if step == INCIDENT_RESOLVED and span == INCIDENT_UPDATED:
        return INCIDENT_RESOLVED
    return None
