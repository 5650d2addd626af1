"""Event payloads, one pydantic model per event type, and the topics they travel on."""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.actions import ACTION_EVENT_TYPES, ActionEventData
from schemas.alertmanager import Alert, AlertStatus, Webhook
from schemas.deadletter import DEADLETTER_EVENT_MODELS, TOPIC_DEADLETTER
from schemas.envelope import Envelope
from schemas.incidents import INCIDENT_EVENT_TYPES, IncidentEventData
from schemas.notifications import NOTIFICATION_EVENT_TYPES, NotificationEventData

TOPIC_ALERTS: Final = "sevpipe.alerts"
TOPIC_INCIDENTS: Final = "sevpipe.incidents"
TOPIC_ACTIONS: Final = "sevpipe.actions"
TOPIC_NOTIFICATIONS: Final = "sevpipe.notifications"
TOPICS: Final = (
    TOPIC_ALERTS,
    TOPIC_INCIDENTS,
    TOPIC_ACTIONS,
    TOPIC_NOTIFICATIONS,
    TOPIC_DEADLETTER,
)

ALERT_FIRING: Final = "alert.firing"
ALERT_RESOLVED: Final = "alert.resolved"


class GroupContext(BaseModel):
    """What the webhook said about the group an alert came in."""

    model_config = ConfigDict(frozen=True)

    receiver: str
    group_key: str = Field(description="the webhook's groupKey (or one made like it)")
    external_url: str = ""
    group_labels: dict[str, str] = Field(default_factory=dict)
    common_labels: dict[str, str] = Field(default_factory=dict)
    truncated_alerts: int = 0


class AlertEventData(BaseModel):
    """Payload of ``alert.firing`` and ``alert.resolved``: one normalised alert."""

    model_config = ConfigDict(frozen=True)

    status: AlertStatus
    fingerprint: str = Field(description="sent by Alertmanager, or computed from the labels")
    fingerprint_computed: bool = Field(
        default=False, description="true when the body had none (Alertmanager < 0.19)"
    )
    alertname: str = Field(default="", description="the alertname label, for convenience")
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime | None = None
    ends_at: datetime | None = Field(default=None, description="null while firing")
    generator_url: str = ""
    group: GroupContext
    received_at: datetime = Field(description="when sevpipe received the webhook, UTC")

    def idempotency_key(self) -> str:
        """(groupKey, fingerprint, startsAt, status): this change of this alert."""
        return alert_idempotency_key(
            self.group.group_key, self.fingerprint, self.starts_at, self.status
        )

    def state_key(self) -> tuple[str, str]:
        """(the alert, its state), what the receiver dedups by: see ``alert_state_key``."""
        return alert_state_key(self.group.group_key, self.fingerprint, self.starts_at, self.status)


def alert_state_key(
    group_key: str, fingerprint: str, starts_at: datetime | None, status: str
) -> tuple[str, str]:
    """(groupKey and fingerprint, startsAt and status): which alert, and in which state.

    An alert is a repeat only when its state is the latest one appended for it, not any
    state it ever had: firing, resolved, then firing again with the same startsAt (its
    endsAt passed while Prometheus could not reach it) is three changes, all appended.
    """
    starts = starts_at.isoformat() if starts_at else "-"
    return "\x1f".join((group_key, fingerprint)), "\x1f".join((starts, status))


def alert_idempotency_key(
    group_key: str, fingerprint: str, starts_at: datetime | None, status: str
) -> str:
    """The state key's two parts joined: one string per (alert, state)."""
    return "\x1f".join(alert_state_key(group_key, fingerprint, starts_at, status))


def normalise(webhook: Webhook, group_key: str, received_at: datetime) -> list[AlertEventData]:
    """One payload per alert of the body, with its group context."""
    group = GroupContext(
        receiver=webhook.receiver,
        group_key=group_key,
        external_url=webhook.external_url,
        group_labels=webhook.group_labels,
        common_labels=webhook.common_labels,
        truncated_alerts=webhook.truncated_alerts,
    )
    return [_normalise_alert(alert, group, received_at) for alert in webhook.alerts]


def _normalise_alert(alert: Alert, group: GroupContext, received_at: datetime) -> AlertEventData:
    fingerprint, computed = alert.effective_fingerprint()
    return AlertEventData(
        status=alert.status,
        fingerprint=fingerprint,
        fingerprint_computed=computed,
        alertname=alert.labels.get("alertname", ""),
        labels=alert.labels,
        annotations=alert.annotations,
        starts_at=alert.starts_at,
        ends_at=alert.ends_at,
        generator_url=alert.generator_url,
        group=group,
        received_at=received_at,
    )


EVENT_MODELS: Final[dict[str, type[BaseModel]]] = {
    ALERT_FIRING: AlertEventData,
    ALERT_RESOLVED: AlertEventData,
    **dict.fromkeys(INCIDENT_EVENT_TYPES, IncidentEventData),
    **dict.fromkeys(NOTIFICATION_EVENT_TYPES, NotificationEventData),
    **dict.fromkeys(ACTION_EVENT_TYPES, ActionEventData),
    **DEADLETTER_EVENT_MODELS,
}
"""Every event type and its payload model; ``sevpipe schemas`` writes one JSON Schema each."""


class AlertEnvelope(Envelope):
    """An ``alert.*`` envelope with its payload typed: parsed from JSON in one pass."""

    data: AlertEventData  # type: ignore[assignment]


def event_type_for(status: AlertStatus) -> Literal["alert.firing", "alert.resolved"]:
    return ALERT_FIRING if status == "firing" else ALERT_RESOLVED


class IncidentEnvelope(Envelope):
    """An ``incident.*`` envelope with its payload typed: parsed from JSON in one pass."""

    data: IncidentEventData  # type: ignore[assignment]
