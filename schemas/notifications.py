"""Notifications: what the comms stage told whom, on ``sevpipe.notifications``.

One event per message and route: ``notification.sent`` (with what the channel returned: the
Slack channel and ts, the email's Message-ID, the Statuspage incident), ``.failed`` (a
permanent refusal, with its reason; never retried) or ``.suppressed`` (decided and not sent:
the route is off for that severity, or a cadence slot the incident no longer needs). Keyed by
incident id, so one incident's notifications keep their order.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

NOTIFICATION_SENT: Final = "notification.sent"
NOTIFICATION_FAILED: Final = "notification.failed"
NOTIFICATION_SUPPRESSED: Final = "notification.suppressed"
NOTIFICATION_EVENT_TYPES: Final = (NOTIFICATION_SENT, NOTIFICATION_FAILED, NOTIFICATION_SUPPRESSED)
NotificationEventType = Literal[
    "notification.sent", "notification.failed", "notification.suppressed"
]


class NotificationEventData(BaseModel):
    """Payload of every ``notification.*`` event."""

    model_config = ConfigDict(frozen=True)

    incident_id: str
    incident_version: int
    severity: str
    effect_id: str = Field(description="the effects-ledger key the message was sent under")
    kind: str = Field(
        description="opened, escalated, reopened, resolved, update, unacknowledged, "
        "acknowledged, commander, approval (an action awaits one), action (an action's outcome)"
    )
    route: str = Field(description="the routing entry, e.g. incident_channel, leadership_email")
    channel: str = Field(description="console, slack, email, statuspage, ...")
    audience: str
    subject: str
    cause: str | None = Field(None, description="id of the event that made comms send it")
    outcome: dict[str, Any] = Field(
        default_factory=dict, description="what the channel returned (ids, never secrets)"
    )
    reason: str | None = Field(None, description="why it failed or was suppressed")
    source: Literal["performed", "checked", "recorded", "decided"] = Field(
        "performed",
        description="performed now; found posted by an earlier attempt (checked); done before "
        "(recorded); decided without sending (suppressed)",
    )
