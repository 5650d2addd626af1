"""A person's decisions about an incident: its severity, acknowledging it, taking command.

Each is a new version of the incident and an event that names the actor, who comes from the
caller's credentials, never from what the request says.
"""

from __future__ import annotations

from datetime import datetime

from classifier.changes import Change, clip
from schemas.incidents import (
    INCIDENT_ACKNOWLEDGED,
    INCIDENT_COMMANDER,
    INCIDENT_ESCALATED,
    INCIDENT_UPDATED,
    Incident,
    IncidentEventType,
)
from schemas.severity import Severity, is_more_severe


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
            "reasons": (clip(f"set by {actor}: {reason}"),),
            "updated_at": max(at, incident.updated_at),
            "version": incident.version + 1,
        }
    )
    type_: IncidentEventType = (
        INCIDENT_ESCALATED if is_more_severe(severity, incident.severity) else INCIDENT_UPDATED
    )
    change = f"severity {incident.severity} -> {severity} set by {actor}: {reason}"
    return updated, Change(request_id, type_, updated, change, incident.severity, actor)


def acknowledge(
    incident: Incident, *, actor: str, at: datetime, request_id: str
) -> tuple[Incident, Change] | None:
    """The first acknowledgement is recorded (who and when); a later one changes nothing."""
    if incident.acknowledged_by is not None:
        return None
    updated = incident.model_copy(
        update={
            "acknowledged_by": actor,
            "acknowledged_at": at,
            "updated_at": max(at, incident.updated_at),
            "version": incident.version + 1,
        }
    )
    change = f"acknowledged by {actor}"
    return updated, Change(
        request_id, INCIDENT_ACKNOWLEDGED, updated, change, incident.severity, actor
    )


def take_command(
    incident: Incident, *, actor: str, at: datetime, request_id: str
) -> tuple[Incident, Change] | None:
    """``actor`` becomes the commander (a handover when someone else was); None if already."""
    if incident.commander == actor:
        return None
    before = incident.commander
    updated = incident.model_copy(
        update={
            "commander": actor,
            "commander_since": at,
            # Taking command is acknowledging it, if nobody had.
            "acknowledged_by": incident.acknowledged_by or actor,
            "acknowledged_at": incident.acknowledged_at or at,
            "updated_at": max(at, incident.updated_at),
            "version": incident.version + 1,
        }
    )
    change = f"{actor} took command" + (f" from {before}" if before else "")
    return updated, Change(
        request_id, INCIDENT_COMMANDER, updated, change, incident.severity, actor
    )
