"""Decided incident events (``Change``) before they are wrapped, and how a big one is split.

An event carries the incident's summary and the alerts that changed in it. A change touching
thousands of alerts (one Alertmanager group in a storm) is split into several events, so that
no event comes near ``MAX_EVENT_BYTES`` and every one fits Kafka's default message size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from schemas import Envelope, derived_event_id
from schemas.incidents import (
    MAX_EVENT_BYTES,
    Incident,
    IncidentAlert,
    IncidentEventData,
    IncidentEventType,
)
from schemas.severity import Severity

SOURCE = "/sevpipe/classifier"

# What a part's alerts may weigh, leaving room for the summary and the envelope; the
# estimate below over-counts JSON's quoting of plain text, never under-counts it by much.
PART_BUDGET: Final = MAX_EVENT_BYTES // 2
MAX_TEXT: Final = 500
MAX_LABEL_VALUE: Final = 1024
MAX_LABELS: Final = 100
MAX_REASONS: Final = 20


@dataclass(frozen=True, slots=True)
class Change:
    """A decided incident event, before it is wrapped (backtests never need the envelope)."""

    cause_id: str
    type: IncidentEventType
    incident: Incident
    change: str
    previous: Severity | None
    actor: str | None = None
    alerts: tuple[IncidentAlert, ...] = ()

    def envelope(self) -> Envelope:
        """The event, with an id derived from its cause: re-deciding gives the same id."""
        data = IncidentEventData(
            incident=self.incident,
            change=self.change,
            previous_severity=self.previous,
            cause=self.cause_id,
            actor=self.actor,
            alerts=self.alerts,
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


def clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def bounded_labels(labels: dict[str, str]) -> dict[str, str]:
    """Labels as an incident keeps them: an alert's full labels stay on ``sevpipe.alerts``."""
    if len(labels) <= MAX_LABELS and all(len(v) <= MAX_LABEL_VALUE for v in labels.values()):
        return labels
    items = list(labels.items())[:MAX_LABELS]
    return {clip(k, MAX_LABEL_VALUE): clip(v, MAX_LABEL_VALUE) for k, v in items}


def bounded_reasons(reasons: Sequence[str]) -> tuple[str, ...]:
    return tuple(clip(r) for r in dict.fromkeys(reasons))[:MAX_REASONS]


def _weight(alert: IncidentAlert) -> int:
    # JSON escapes can at most double plain text (\uXXXX is 6 bytes per control character,
    # but labels are mostly printable); the fixed part covers keys, times and severity.
    text = len(alert.fingerprint) + len(alert.alertname) + len(alert.summary)
    text += sum(len(r) for r in alert.reasons)
    text += sum(len(k) + len(v) + 6 for k, v in alert.labels.items())
    return 2 * text + 300


def parts(alerts: Sequence[IncidentAlert], budget: int = PART_BUDGET) -> list[list[IncidentAlert]]:
    """``alerts`` cut into consecutive parts of at most ``budget`` estimated bytes each."""
    out: list[list[IncidentAlert]] = [[]]
    used = 0
    for alert in alerts:
        weight = _weight(alert)
        if out[-1] and used + weight > budget:
            out.append([])
            used = 0
        out[-1].append(alert)
        used += weight
    return out
