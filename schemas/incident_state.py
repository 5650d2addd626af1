"""The classifier's working state of one incident group, as the store loads and saves it.

Only what one batch needs is loaded: the group's current incident (a summary), and the marks
and alerts of the fingerprints the batch mentions. A group of 100,000 alerts therefore costs a
batch what its own alerts cost, not what the group holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from schemas.incidents import Incident, IncidentAlert


class AlertMark(NamedTuple):
    """The latest (startsAt, status) seen for an alert of a group: what makes a repeat.

    ``at`` is when a resolve took effect (its endsAt, else the event's time): a firing with the
    same startsAt that arrives after it is the alert firing again, not a late delivery.
    ``event`` is the id of the alert event that set the mark: ids grow with the time ingest
    received them, so an event whose id is not greater was applied already (a redelivered
    batch) or is older. A NamedTuple: one is made per alert, and a tuple is the cheapest.
    """

    starts_at: str
    status: str
    at: str = ""
    event: str = ""


@dataclass(slots=True)
class GroupState:
    """Everything the lifecycle needs to decide about one incident group key."""

    key: str
    version: int = 0
    incident: Incident | None = None
    marks: dict[str, AlertMark] = field(default_factory=dict)
    """Marks of the fingerprints loaded (and those decided since)."""
    alerts: dict[str, IncidentAlert] = field(default_factory=dict)
    """Alerts of ``incident`` for the fingerprints loaded (and those decided since)."""
    changed_marks: set[str] = field(default_factory=set)
    changed_alerts: dict[tuple[str, str], IncidentAlert] = field(default_factory=dict)
    """(incident id, fingerprint) -> the alert as it is now, to be written."""

    def clear_changes(self) -> None:
        self.changed_marks.clear()
        self.changed_alerts.clear()
