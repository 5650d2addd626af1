"""Incidents: the state the classifier keeps, and the events it appends about them.

Every incident event carries the whole incident as it stands after the change, so the store
can be rebuilt from the ``sevpipe.incidents`` topic alone (``sevpipe rebuild``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.alertmanager import AlertStatus
from schemas.severity import Severity

INCIDENT_OPENED: Final = "incident.opened"
INCIDENT_ESCALATED: Final = "incident.escalated"
INCIDENT_UPDATED: Final = "incident.updated"
INCIDENT_RESOLVED: Final = "incident.resolved"
INCIDENT_REOPENED: Final = "incident.reopened"
INCIDENT_EVENT_TYPES: Final = (
    INCIDENT_OPENED,
    INCIDENT_ESCALATED,
    INCIDENT_UPDATED,
    INCIDENT_RESOLVED,
    INCIDENT_REOPENED,
)
IncidentEventType = Literal[
    "incident.opened",
    "incident.escalated",
    "incident.updated",
    "incident.resolved",
    "incident.reopened",
]
IncidentStatus = Literal["open", "resolved"]


class IncidentAlert(BaseModel):
    """One alert's latest known state inside an incident."""

    model_config = ConfigDict(frozen=True)

    fingerprint: str
    alertname: str = ""
    status: AlertStatus
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    severity: Severity
    reasons: tuple[str, ...] = ()
    summary: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


class Incident(BaseModel):
    """An incident as the API shows it."""

    model_config = ConfigDict(frozen=True)

    id: str
    key: str = Field(description="the incident group key")
    severity: Severity
    severity_source: Literal["policy", "manual"] = "policy"
    status: IncidentStatus
    title: str
    reasons: tuple[str, ...] = Field(description="why it has its severity")
    alerts: tuple[IncidentAlert, ...] = ()
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None = None
    resolving_since: datetime | None = Field(
        None,
        description="all alerts resolved at this time; resolves after the policy's grace "
        "period unless one fires again",
    )
    version: int = Field(1, description="grows by one with every event about this incident")


class IncidentEventData(BaseModel):
    """Payload of every ``incident.*`` event: what changed, why, and the incident after it."""

    model_config = ConfigDict(frozen=True)

    incident: Incident
    change: str = Field(description='what happened, e.g. "alert CPUHot firing"')
    previous_severity: Severity | None = None
    cause: str | None = Field(None, description="id of the event that caused this one")
    actor: str | None = Field(None, description="who changed it by hand, if anyone")
