"""Incident lifecycle as pure functions: a group's state plus one input gives events.

No I/O and no clock: every time comes from the input events, so replaying the same log
gives the same incidents (``sevpipe rebuild``, backtests) and the same event ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas import AlertEventData, Envelope, derived_event_id
from schemas.incidents import (
    INCIDENT_ESCALATED,
    INCIDENT_OPENED,
    INCIDENT_REOPENED,
    INCIDENT_RESOLVED,
    INCIDENT_UPDATED,
    Incident,
    IncidentAlert,
    IncidentEventData,
    IncidentEventType,
)
from schemas.severity import Classification, Severity, highest, is_more_severe
from store.base import AlertIndex, AlertMark, GroupState

SOURCE = "/sevpipe/classifier"
_STATUS_ORDER = {"firing": 0, "resolved": 1}


@dataclass(frozen=True, slots=True)
class AlertInput:
    """An ``alert.*`` event as the lifecycle needs it."""

    event_id: str
    time: datetime
    data: AlertEventData


def _title(data: AlertEventData) -> str:
    summary = data.annotations.get("summary") or data.annotations.get("title") or ""
    name = data.alertname or data.group.group_key
    return f"{name}: {summary}" if summary else name


def _incident_alert(data: AlertEventData, cls: Classification) -> IncidentAlert:
    return IncidentAlert(
        fingerprint=data.fingerprint,
        alertname=data.alertname,
        status=data.status,
        starts_at=data.starts_at,
        ends_at=data.ends_at,
        severity=cls.severity,
        reasons=cls.reasons,
        summary=data.annotations.get("summary", ""),
        labels=data.labels,
    )


def _reasons(alerts: tuple[IncidentAlert, ...], severity: Severity) -> tuple[str, ...]:
    out: list[str] = []
    for alert in alerts:
        if alert.severity == severity:
            out.extend(f"{alert.alertname or alert.fingerprint}: {r}" for r in alert.reasons)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True, slots=True)
class Change:
    """A decided incident event, before it is wrapped (backtests never need the envelope)."""

    cause_id: str
    type: IncidentEventType
    incident: Incident
    change: str
    previous: Severity | None
    actor: str | None = None

    def envelope(self) -> Envelope:
        """The event, with an id derived from its cause: re-deciding gives the same id."""
        data = IncidentEventData(
            incident=self.incident,
            change=self.change,
            previous_severity=self.previous,
            cause=self.cause_id,
            actor=self.actor,
        )
        return Envelope(
            id=derived_event_id(
                self.cause_id, "incident", self.incident.id, str(self.incident.version)
            ),
            type=self.type,
            source=SOURCE,
            time=self.incident.updated_at,
            subject=self.incident.id,
            data=data.model_dump(mode="json"),
        )


def _event(
    cause_id: str,
    type_: IncidentEventType,
    incident: Incident,
    *,
    change: str,
    previous: Severity | None,
    actor: str | None = None,
) -> Change:
    return Change(cause_id, type_, incident, change, previous, actor)


def _stale(mark: AlertMark | None, new: AlertMark) -> bool:
    """Older than what we know: an earlier startsAt, or a firing after its own resolve."""
    if mark is None:
        return False
    return (new.starts_at, _STATUS_ORDER[new.status]) < (
        mark.starts_at,
        _STATUS_ORDER[mark.status],
    )


def apply_alert(
    group: GroupState,
    alert: AlertInput,
    cls: Classification,
    reopen_window: timedelta,
    resolve_grace: timedelta = timedelta(0),
) -> list[Change]:
    """Fold one alert into its group; returns the incident events it causes (maybe none)."""
    data = alert.data
    new_mark = AlertMark(data.starts_at.isoformat() if data.starts_at else "-", data.status)
    if _stale(group.marks.get(data.fingerprint), new_mark):
        return []
    group.marks[data.fingerprint] = new_mark
    # A grace period that ran out while the group was quiet ends before this alert counts.
    changes = expire_grace(group, alert.time, resolve_grace, cause_id=alert.event_id)
    incident = group.incident
    if data.status == "resolved":
        if incident is None or incident.status == "resolved":
            return changes
        return changes + _resolve_alert(group, incident, alert, resolve_grace)
    if incident is None or incident.status == "resolved":
        return changes + _open_or_reopen(group, incident, alert, cls, reopen_window)
    return changes + _fire_in_open(group, incident, alert, cls)


def grace_deadline(incident: Incident, resolve_grace: timedelta) -> datetime | None:
    if incident.status != "open" or incident.resolving_since is None:
        return None
    return incident.resolving_since + resolve_grace


def expire_grace(
    group: GroupState, now: datetime, resolve_grace: timedelta, *, cause_id: str
) -> list[Change]:
    """Resolve the group's incident if its grace period has run out by ``now``."""
    incident = group.incident
    deadline = grace_deadline(incident, resolve_grace) if incident else None
    if incident is None or deadline is None or now < deadline:
        return []
    updated = incident.model_copy(
        update={
            "status": "resolved",
            "resolved_at": deadline,
            "resolving_since": None,
            "updated_at": max(deadline, incident.updated_at),
            "version": incident.version + 1,
        }
    )
    group.incident = updated
    change = f"resolved: no alert fired again within the {resolve_grace} grace period"
    return [_event(cause_id, INCIDENT_RESOLVED, updated, change=change, previous=incident.severity)]


def _index(group: GroupState, alerts: tuple[IncidentAlert, ...]) -> AlertIndex:
    index = group.alert_index
    if index is None or index.alerts is not alerts:
        index = group.alert_index = AlertIndex.of(alerts)
    return index


def _find_alert(
    group: GroupState, alerts: tuple[IncidentAlert, ...], fingerprint: str
) -> IncidentAlert | None:
    pos = _index(group, alerts).positions.get(fingerprint)
    return None if pos is None else alerts[pos]


def _replace_alert(
    group: GroupState, alerts: tuple[IncidentAlert, ...], new: IncidentAlert
) -> tuple[tuple[IncidentAlert, ...], IncidentAlert | None]:
    index = _index(group, alerts)
    pos = index.positions.get(new.fingerprint)
    if pos is None:
        out = (*alerts, new)
        index.positions[new.fingerprint] = len(alerts)
        index.alerts = out
        return out, None
    old = alerts[pos]
    out = (*alerts[:pos], new, *alerts[pos + 1 :])
    index.alerts = out
    return out, old


def _open_or_reopen(
    group: GroupState,
    previous: Incident | None,
    alert: AlertInput,
    cls: Classification,
    reopen_window: timedelta,
) -> list[Change]:
    item = _incident_alert(alert.data, cls)
    at = alert.time
    resolved_at = previous.resolved_at if previous else None
    if previous is not None and resolved_at is not None and at - resolved_at <= reopen_window:
        alerts, _ = _replace_alert(group, previous.alerts, item)
        severity = highest(previous.severity, cls.severity)
        incident = previous.model_copy(
            update={
                "status": "open",
                "severity": severity,
                "reasons": _reasons(alerts, severity) or previous.reasons,
                "alerts": alerts,
                "updated_at": at,
                "resolved_at": None,
                "version": previous.version + 1,
            }
        )
        group.incident = incident
        change = f"reopened by {item.alertname or item.fingerprint} firing"
        return [
            _event(
                alert.event_id,
                INCIDENT_REOPENED,
                incident,
                change=change,
                previous=previous.severity,
            )
        ]
    incident = Incident(
        id="inc-" + derived_event_id(alert.event_id, "incident").lower(),
        key=group.key,
        severity=cls.severity,
        status="open",
        title=_title(alert.data),
        reasons=_reasons((item,), cls.severity),
        alerts=(item,),
        opened_at=at,
        updated_at=at,
    )
    group.incident = incident
    change = f"opened by {item.alertname or item.fingerprint} firing"
    return [_event(alert.event_id, INCIDENT_OPENED, incident, change=change, previous=None)]


def _fire_in_open(
    group: GroupState, incident: Incident, alert: AlertInput, cls: Classification
) -> list[Change]:
    item = _incident_alert(alert.data, cls)
    alerts, old = _replace_alert(group, incident.alerts, item)
    if old is not None and old.status == "firing" and old.severity == item.severity:
        return []  # a repeat, or new annotations that change nothing we decide on
    severity = highest(incident.severity, cls.severity)
    escalated = severity != incident.severity
    updated = incident.model_copy(
        update={
            "resolving_since": None,
            "severity": severity,
            "severity_source": "policy" if escalated else incident.severity_source,
            "reasons": _reasons(alerts, severity) if escalated else incident.reasons,
            "alerts": alerts,
            "updated_at": max(alert.time, incident.updated_at),
            "version": incident.version + 1,
        }
    )
    group.incident = updated
    name = item.alertname or item.fingerprint
    if escalated:
        change = f"escalated {incident.severity} -> {severity} by {name}: " + "; ".join(cls.reasons)
        return [
            _event(
                alert.event_id,
                INCIDENT_ESCALATED,
                updated,
                change=change,
                previous=incident.severity,
            )
        ]
    change = f"alert {name} firing" + (" again" if old is not None else "")
    return [
        _event(alert.event_id, INCIDENT_UPDATED, updated, change=change, previous=incident.severity)
    ]


def _resolve_alert(
    group: GroupState, incident: Incident, alert: AlertInput, resolve_grace: timedelta
) -> list[Change]:
    data = alert.data
    old = _find_alert(group, incident.alerts, data.fingerprint)
    if old is None or old.status == "resolved":
        return []
    resolved = old.model_copy(update={"status": "resolved", "ends_at": data.ends_at})
    alerts, _ = _replace_alert(group, incident.alerts, resolved)
    at = max(alert.time, incident.updated_at)
    all_resolved = all(a.status == "resolved" for a in alerts)
    waiting = all_resolved and resolve_grace > timedelta(0)
    done = all_resolved and not waiting
    updated = incident.model_copy(
        update={
            "alerts": alerts,
            "status": "resolved" if done else "open",
            "resolved_at": at if done else None,
            "resolving_since": at if waiting else None,
            "updated_at": at,
            "version": incident.version + 1,
        }
    )
    group.incident = updated
    name = old.alertname or old.fingerprint
    if waiting:
        change = f"last alert {name} resolved; resolves after {resolve_grace} unless one fires"
        return [
            _event(
                alert.event_id, INCIDENT_UPDATED, updated, change=change, previous=incident.severity
            )
        ]
    if done:
        change = f"resolved: last alert {name} resolved"
        return [
            _event(
                alert.event_id,
                INCIDENT_RESOLVED,
                updated,
                change=change,
                previous=incident.severity,
            )
        ]
    change = f"alert {name} resolved"
    return [
        _event(alert.event_id, INCIDENT_UPDATED, updated, change=change, previous=incident.severity)
    ]


def set_severity(
    incident: Incident,
    severity: Severity,
    *,
    reason: str,
    actor: str,
    at: datetime,
    request_id: str,
) -> tuple[Incident, Change]:
    """A person's decision: may lower or raise; recorded with who and why."""
    updated = incident.model_copy(
        update={
            "severity": severity,
            "severity_source": "manual",
            "reasons": (f"set by {actor}: {reason}",),
            "updated_at": max(at, incident.updated_at),
            "version": incident.version + 1,
        }
    )
    type_: IncidentEventType = (
        INCIDENT_ESCALATED if is_more_severe(severity, incident.severity) else INCIDENT_UPDATED
    )
    change = f"severity {incident.severity} -> {severity} set by {actor}: {reason}"
    event = _event(
        request_id, type_, updated, change=change, previous=incident.severity, actor=actor
    )
    return updated, event
