"""Incidents: the state the classifier keeps, and the events it appends about them.

An incident event never grows with its incident: it carries the incident's summary (severity,
status, counts, times, version) and only the alerts that changed in it. The full alert list is
a projection in the store, paged by the API; ``sevpipe rebuild`` folds the events' changed
alerts back into it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.alertmanager import AlertStatus
from schemas.severity import Severity

INCIDENT_OPENED: Final = "incident.opened"
INCIDENT_ESCALATED: Final = "incident.escalated"
INCIDENT_UPDATED: Final = "incident.updated"
INCIDENT_RESOLVED: Final = "incident.resolved"
INCIDENT_REOPENED: Final = "incident.reopened"
INCIDENT_ACKNOWLEDGED: Final = "incident.acknowledged"
INCIDENT_COMMANDER: Final = "incident.commander"
INCIDENT_EVENT_TYPES: Final = (
    INCIDENT_OPENED,
    INCIDENT_ESCALATED,
    INCIDENT_UPDATED,
    INCIDENT_RESOLVED,
    INCIDENT_REOPENED,
    INCIDENT_ACKNOWLEDGED,
    INCIDENT_COMMANDER,
)
IncidentEventType = Literal[
    "incident.opened",
    "incident.escalated",
    "incident.updated",
    "incident.resolved",
    "incident.reopened",
    "incident.acknowledged",
    "incident.commander",
]
IncidentStatus = Literal["open", "resolved"]

MAX_EVENT_BYTES: Final = 256 * 1024
"""No incident event may be larger than this (DESIGN.md); big changes are split."""


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


class IncidentCounts(BaseModel):
    """How many alerts an incident has, and how many of them fire now."""

    model_config = ConfigDict(frozen=True)

    alerts: int = 0
    firing: int = 0
    resolved: int = 0


class Incident(BaseModel):
    """An incident's summary: what the API lists and every incident event carries."""

    model_config = ConfigDict(frozen=True)

    id: str
    key: str = Field(description="the incident group key")
    severity: Severity
    severity_source: Literal["policy", "manual"] = "policy"
    status: IncidentStatus
    title: str
    reasons: tuple[str, ...] = Field(description="why it has its severity (at most 20)")
    counts: IncidentCounts = Field(default_factory=IncidentCounts)
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None = None
    resolving_since: datetime | None = Field(
        None,
        description="all alerts resolved at this time; resolves after the policy's grace "
        "period unless one fires again",
    )
    version: int = Field(1, description="grows by one with every event about this incident")
    acknowledged_by: str | None = Field(None, description="who acknowledged it first")
    acknowledged_at: datetime | None = None
    commander: str | None = Field(None, description="the incident commander, who took it")
    commander_since: datetime | None = None


class IncidentEventData(BaseModel):
    """Payload of every ``incident.*`` event: what changed, why, and the incident after it."""

    model_config = ConfigDict(frozen=True)

    incident: Incident
    change: str = Field(description='what happened, e.g. "alert CPUHot firing"')
    previous_severity: Severity | None = None
    cause: str | None = Field(None, description="id of the event that caused this one")
    actor: str | None = Field(None, description="who changed it by hand, if anyone")
    alerts: tuple[IncidentAlert, ...] = Field(
        (), description="the alerts that changed in this event, as they are after it"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_whole_incident(cls, value: Any) -> Any:
        """Events written before incidents were bounded carried every alert in the incident;
        read them as a change of all those alerts, so old logs still rebuild."""
        if not isinstance(value, dict) or "alerts" in value:
            return value
        incident = value.get("incident")
        if not isinstance(incident, dict) or "alerts" not in incident:
            return value
        alerts = incident["alerts"]
        firing = sum(1 for a in alerts if isinstance(a, dict) and a.get("status") == "firing")
        counts = {"alerts": len(alerts), "firing": firing, "resolved": len(alerts) - firing}
        rest = {k: v for k, v in incident.items() if k != "alerts"}
        return {**value, "incident": {**rest, "counts": counts}, "alerts": alerts}
