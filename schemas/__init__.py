"""The contracts between sevpipe's stages: pydantic v2 models only, no I/O."""

from schemas.alertmanager import Alert, Webhook, labels_fingerprint
from schemas.envelope import SCHEMA_VERSION, Envelope, derived_event_id, new_event_id
from schemas.events import (
    ALERT_FIRING,
    ALERT_RESOLVED,
    EVENT_MODELS,
    TOPIC_ACTIONS,
    TOPIC_ALERTS,
    TOPIC_INCIDENTS,
    TOPIC_NOTIFICATIONS,
    TOPICS,
    AlertEventData,
    GroupContext,
    alert_idempotency_key,
    event_type_for,
    normalise,
)
from schemas.severity import (
    SEVERITIES,
    Classification,
    Severity,
    highest,
    is_more_severe,
    is_severity,
    severity_rank,
)

__all__ = [
    "ALERT_FIRING",
    "ALERT_RESOLVED",
    "EVENT_MODELS",
    "SCHEMA_VERSION",
    "SEVERITIES",
    "TOPICS",
    "TOPIC_ACTIONS",
    "TOPIC_ALERTS",
    "TOPIC_INCIDENTS",
    "TOPIC_NOTIFICATIONS",
    "Alert",
    "AlertEventData",
    "Classification",
    "Envelope",
    "GroupContext",
    "Severity",
    "Webhook",
    "alert_idempotency_key",
    "derived_event_id",
    "event_type_for",
    "highest",
    "is_more_severe",
    "is_severity",
    "labels_fingerprint",
    "new_event_id",
    "normalise",
    "severity_rank",
]
