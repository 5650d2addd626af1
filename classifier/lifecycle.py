"""Incident lifecycle as pure functions: a group's state plus its alerts gives events.

No I/O and no clock: every time comes from the input events, so replaying the same log
gives the same incidents (``sevpipe rebuild``, backtests) and the same event ids.

A batch of alerts of one group is folded alert by alert, in log order, into a working copy of
the incident summary; consecutive changes are then merged into as few events as their meaning
allows (one ``incident.opened`` for a storm's first thousand alerts, not a thousand events).
Counts are kept incrementally, so the work per alert does not grow with the incident.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from classifier.changes import (
    Change,
    parts,
)
from classifier.fold_parts import (
    MAX_NOTES,
    AlertView,
    Seen,
    Span,
    Work,
    alert_reasons,
    incident_alert,
    merged_type,
    title_of,
)
from schemas import AlertEventData, derived_event_id
from schemas.incident_state import AlertMark, GroupState
from schemas.incidents import (
    INCIDENT_ESCALATED,
    INCIDENT_OPENED,
    INCIDENT_REOPENED,
    INCIDENT_RESOLVED,
    INCIDENT_UPDATED,
    Incident,
    IncidentAlert,
    IncidentEventType,
)
from schemas.severity import Classification, highest, is_more_severe

__all__ = ["AlertInput", "Change", "Fold", "apply_alert", "expire_grace"]


class AlertInput:
    """An ``alert.*`` event as the lifecycle needs it (read-only by convention: a plain
    slotted class, as a frozen dataclass costs a backtest a microsecond per alert)."""

    __slots__ = ("data", "event_id", "starts", "time")

    def __init__(self, event_id: str, time: datetime, data: AlertEventData) -> None:
        self.event_id = event_id
        self.time = time
        self.data = data
        starts_at = data.starts_at
        self.starts = starts_at.isoformat() if starts_at else "-"
        """``startsAt`` as marks keep it, made once (a backtest folds each alert twice)."""

    def __repr__(self) -> str:
        return f"AlertInput({self.event_id!r}, {self.time!r}, {self.data!r})"


class Fold:
    """Folds one group's alerts, in log order, into the fewest incident events."""

    def __init__(
        self,
        group: GroupState,
        reopen_window: timedelta,
        resolve_grace: timedelta,
        *,
        simulate: bool = False,
    ) -> None:
        self.group = group
        self.simulate = simulate
        self._holding: dict[str, AlertView] = {} if simulate else group.alerts  # type: ignore[assignment]
        """The current incident's alerts as far as loaded: the group's, or what a
        simulation keeps of them (a ``Seen`` each)."""
        """Decide only, for a backtest: no events, no change tracking, and the incidents'
        summaries frozen once, at ``finish``. A simulating fold may take any number of
        alerts; severity, status and counts come out as the live fold decides them."""
        self.reopen_window = reopen_window
        self.resolve_grace = resolve_grace
        self.work = Work.of(group.incident) if group.incident else None
        self.span: Span | None = None
        self.changes: list[Change] = []
        self.loaded = {group.incident.id: group.incident.version} if group.incident else {}
        """Version of each incident as loaded (0: new); what a store write expects."""
        self.final: dict[str, Incident] = {}
        """Each incident changed, as it is after its last event."""

    # -- inputs ------------------------------------------------------------------------------

    def alert(self, alert: AlertInput, cls: Classification, *, admitted: bool = False) -> None:
        """Fold one alert in. ``admitted``: ``admit`` already took it against marks that are
        this group's (a backtest checks them once for both of its policies)."""
        status = alert.data.status
        if not admitted:
            if not admit(self.group.marks, alert):
                return
            if not self.simulate:
                self.group.changed_marks.add(alert.data.fingerprint)
        work = self.work
        if work is not None and work.resolving_since is not None:
            # A grace period that ran out while the group was quiet ends before this alert.
            self.expire(alert.time, alert.event_id)
        if status == "resolved":
            if work is not None and work.status == "open":
                self._resolve(work, alert)
        elif work is None or work.status == "resolved":
            self._open_or_reopen(work, alert, cls)
        else:
            self._fire(work, alert, cls)

    def expire(self, now: datetime, cause_id: str) -> None:
        """Resolve the group's incident if its grace period has run out by ``now``."""
        work = self.work
        if work is None or work.status != "open" or work.resolving_since is None:
            return
        deadline = work.resolving_since + self.resolve_grace
        if now < deadline:
            return
        self._begin(work, INCIDENT_RESOLVED, cause_id)
        work.status = "resolved"
        work.resolved_at = deadline
        work.resolving_since = None
        work.updated_at = max(deadline, work.updated_at)
        if self._noting():
            self._note(f"resolved: no alert fired again within the {self.resolve_grace} grace")

    def finish(self) -> list[Change]:
        """The events decided; ``group.incident`` is the current incident after them."""
        if self.simulate and self.work is not None:
            self.final[self.work.id] = self.work.incident = self.work.freeze()
        self._close()
        if self.work is not None:
            self.group.incident = self.final.get(self.work.id, self.work.incident)
        return self.changes

    # -- transitions -------------------------------------------------------------------------

    def _resolve(self, work: Work, alert: AlertInput) -> None:
        data = alert.data
        old = self._held(data.fingerprint)
        if old is None or old.status == "resolved":
            return
        all_resolved = work.firing == 1
        waiting = all_resolved and self.resolve_grace > timedelta(0)
        done = all_resolved and not waiting
        name = old.alertname or old.fingerprint
        self._begin(work, INCIDENT_RESOLVED if done else INCIDENT_UPDATED, alert.event_id)
        new: AlertView
        if isinstance(old, IncidentAlert):
            new = old.model_copy(update={"status": "resolved", "ends_at": data.ends_at})
        else:
            new = Seen(old.fingerprint, old.alertname, "resolved", old.severity)
        self._put(work, old, new)
        at = max(alert.time, work.updated_at)
        work.updated_at = at
        work.status = "resolved" if done else "open"
        work.resolved_at = at if done else None
        work.resolving_since = at if waiting else None
        if not self._noting():
            return
        if waiting:
            self._note(
                f"last alert {name} resolved; resolves after {self.resolve_grace} unless one fires"
            )
        elif done:
            self._note(f"resolved: last alert {name} resolved")
        else:
            self._note(f"alert {name} resolved")

    def _open_or_reopen(
        self, previous: Work | None, alert: AlertInput, cls: Classification
    ) -> None:
        item = self._item(alert.data, cls)
        at = alert.time
        name = item.alertname or item.fingerprint
        resolved_at = previous.resolved_at if previous else None
        if (
            previous is not None
            and resolved_at is not None
            and at - resolved_at <= self.reopen_window
        ):
            self._begin(previous, INCIDENT_REOPENED, alert.event_id)
            severity = highest(previous.severity, cls.severity)
            if severity != previous.severity:
                previous.reasons = alert_reasons(alert.data, cls)
                previous.severity_source = "policy"
            previous.severity = severity
            previous.status = "open"
            previous.updated_at = at
            previous.resolved_at = None
            self._put(previous, self._held(item.fingerprint), item)
            if self._noting():
                self._note(f"reopened by {name} firing")
            return
        self._close()
        if self.simulate and previous is not None:
            self.final[previous.id] = previous.incident = previous.freeze()
        incident = Incident(
            id="inc-" + derived_event_id(alert.event_id, "incident").lower(),
            key=self.group.key,
            severity=cls.severity,
            status="open",
            title=title_of(alert.data),
            reasons=alert_reasons(alert.data, cls),
            opened_at=at,
            updated_at=at,
            version=0,
        )
        work = self.work = Work.of(incident)
        self.loaded[incident.id] = 0
        # The alerts loaded were the previous incident's.
        if self.simulate:
            self._holding = {}
        else:
            self._holding = self.group.alerts = {}  # type: ignore[assignment]
        self._begin(work, INCIDENT_OPENED, alert.event_id)
        self._put(work, None, item)
        if self._noting():
            self._note(f"opened by {name} firing")

    def _fire(self, work: Work, alert: AlertInput, cls: Classification) -> None:
        data = alert.data
        old = self._holding.get(data.fingerprint)
        severity = cls.severity
        if old is not None and old.status == "firing" and old.severity == severity:
            return  # a repeat, or new annotations that change nothing we decide on
        item = self._item(data, cls)
        escalated = is_more_severe(severity, work.severity)
        self._begin(work, INCIDENT_ESCALATED if escalated else INCIDENT_UPDATED, alert.event_id)
        if escalated:
            if self._noting():
                name = item.alertname or item.fingerprint
                self._note(
                    f"escalated {work.severity} -> {severity} by {name}: " + "; ".join(cls.reasons)
                )
            work.severity = severity
            work.severity_source = "policy"
            work.reasons = alert_reasons(data, cls)
        elif self._noting():
            name = item.alertname or item.fingerprint
            self._note(f"alert {name} firing" + (" again" if old is not None else ""))
        work.resolving_since = None
        work.updated_at = max(work.updated_at, alert.time)
        self._put(work, old, item)

    # -- spans -------------------------------------------------------------------------------

    def _item(self, data: AlertEventData, cls: Classification) -> AlertView:
        if self.simulate:
            return Seen(data.fingerprint, data.alertname, data.status, cls.severity)
        return incident_alert(data, cls)

    def _held(self, fingerprint: str) -> AlertView | None:
        """The current incident's alert of that fingerprint, as far as loaded."""
        return self._holding.get(fingerprint)

    def _put(self, work: Work, old: AlertView | None, new: AlertView) -> None:
        work.count(old, new.status)
        self._holding[new.fingerprint] = new
        if not isinstance(new, IncidentAlert):
            return  # simulating
        self.group.changed_alerts[(work.id, new.fingerprint)] = new
        if self.span is not None:
            self.span.alerts[new.fingerprint] = new

    def _noting(self) -> bool:
        """Whether a note would be kept: its text is not even made otherwise (hot path)."""
        span = self.span
        if span is None:
            return False
        if len(span.notes) < MAX_NOTES:
            return True
        span.steps += 1  # counted in "and N more changes"
        return False

    def _note(self, text: str) -> None:
        if self.span is not None:
            self.span.note(text)

    def _begin(self, work: Work, type_: IncidentEventType, cause_id: str) -> None:
        if self.simulate:
            return
        span = self.span
        if span is not None:
            merged = merged_type(span.type, type_)
            if merged is not None:
                span.type = merged
                return
            self._close()
        previous = None if type_ == INCIDENT_OPENED else work.severity
        self.span = Span(type_, cause_id, previous)

    def _close(self) -> None:
        span, work = self.span, self.work
        self.span = None
        if span is None or work is None:
            return
        chunks = parts(list(span.alerts.values()))
        text = span.text()
        for n, chunk in enumerate(chunks, 1):
            work.version += 1
            incident = work.freeze()
            label = f" (part {n} of {len(chunks)})" if len(chunks) > 1 else ""
            self.changes.append(
                Change(
                    span.cause_id,
                    span.type if n == 1 else INCIDENT_UPDATED,
                    incident,
                    text + label,
                    span.previous if n == 1 else incident.severity,
                    alerts=tuple(chunk),
                )
            )
            self.final[incident.id] = incident
        work.incident = self.final[work.id]


def admit(marks: dict[str, AlertMark], alert: AlertInput) -> bool:
    """Whether ``alert`` is news to its group's ``marks``, which then record it.

    It is not when it was applied already (at-least-once delivery brought it again: event ids
    grow, so one not greater than the mark's is known) or when it is older than the mark.
    """
    data = alert.data
    status = data.status
    at = (data.ends_at or alert.time).isoformat() if status == "resolved" else ""
    mark = marks.get(data.fingerprint)
    if mark is not None and (alert.event_id <= mark.event or _stale(mark, alert, at)):
        return False
    marks[data.fingerprint] = AlertMark(alert.starts, status, at, alert.event_id)
    return True


def _stale(mark: AlertMark, alert: AlertInput, at: str) -> bool:
    """Older than what we know: an earlier startsAt, or a late delivery about the same one.

    A firing with the startsAt of a resolve is the alert firing again (Alertmanager resolved
    it when its endsAt passed, say while Prometheus could not reach it) when it comes after
    the resolve took effect; before that, it is a late delivery of the firing that was
    resolved. ``at`` is a resolve's endsAt (or its event time), "" for a firing.
    """
    starts = alert.starts
    if starts > mark.starts_at:
        return False
    if starts < mark.starts_at:
        return True
    if alert.data.status == "firing" and mark.status == "resolved":
        return alert.time.isoformat() <= mark.at
    return False


def apply_alert(
    group: GroupState,
    alert: AlertInput,
    cls: Classification,
    reopen_window: timedelta,
    resolve_grace: timedelta = timedelta(0),
) -> list[Change]:
    """Fold one alert into its group; returns the incident events it causes (maybe none)."""
    fold = Fold(group, reopen_window, resolve_grace)
    fold.alert(alert, cls)
    return fold.finish()


def expire_grace(
    group: GroupState, now: datetime, resolve_grace: timedelta, *, cause_id: str
) -> list[Change]:
    """Resolve the group's incident if its grace period has run out by ``now``."""
    fold = Fold(group, timedelta(0), resolve_grace)
    fold.expire(now, cause_id)
    return fold.finish()


def grace_deadline(incident: Incident, resolve_grace: timedelta) -> datetime | None:
    if incident.status != "open" or incident.resolving_since is None:
        return None
    return incident.resolving_since + resolve_grace
