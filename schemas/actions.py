"""Remediation actions: what the actions stage planned, asked, did or refused, on
``sevpipe.actions``.

One action is one catalogue action on one target for one playbook step of one incident; its
id derives from (incident, step, target), so a redelivered incident event plans the same
action again and finds it. Every event carries the whole action as it stands, so a consumer
(comms, the API, a timeline) needs no other event to show it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.envelope import Envelope, derived_event_id

ACTION_PLANNED: Final = "action.planned"
ACTION_AWAITING_APPROVAL: Final = "action.awaiting_approval"
ACTION_APPROVED: Final = "action.approved"
ACTION_DENIED: Final = "action.denied"
ACTION_EXPIRED: Final = "action.expired"
ACTION_STARTED: Final = "action.started"
ACTION_SUCCEEDED: Final = "action.succeeded"
ACTION_FAILED: Final = "action.failed"
ACTION_SKIPPED: Final = "action.skipped"
ACTION_EVENT_TYPES: Final = (
    ACTION_PLANNED,
    ACTION_AWAITING_APPROVAL,
    ACTION_APPROVED,
    ACTION_DENIED,
    ACTION_EXPIRED,
    ACTION_STARTED,
    ACTION_SUCCEEDED,
    ACTION_FAILED,
    ACTION_SKIPPED,
)
ActionState = Literal[
    "planned",
    "awaiting_approval",
    "approved",
    "denied",
    "expired",
    "started",
    "succeeded",
    "failed",
    "skipped",
]
FINAL_STATES: Final = frozenset({"denied", "expired", "succeeded", "failed", "skipped"})
Risk = Literal["read_only", "mutating", "destructive"]
Mode = Literal["auto", "approve", "never"]


class Target(BaseModel):
    """What an action acts on, always an object the inventory names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = Field(description="e.g. Deployment, ConfigMap, Namespace, Pods")
    namespace: str = ""
    name: str = Field("", description="empty for a kind that takes a selector")
    selector: dict[str, str] = Field(default_factory=dict, description="label selector")

    def key(self) -> str:
        """One string per target, for ids, cooldowns and rate limits."""
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.selector.items()))
        return f"{self.kind}/{self.namespace}/{self.name}" + (f"?{labels}" if labels else "")


class ApiRequest(BaseModel):
    """A request to an API, as made or, in dry-run, as live mode would make it."""

    model_config = ConfigDict(frozen=True)

    method: str
    path: str
    body: Any = None
    content_type: str | None = None


class ActionEventData(BaseModel):
    """Payload of every ``action.*`` event: the action as it stands after the event."""

    model_config = ConfigDict(frozen=True)

    action_id: str
    incident_id: str
    incident_version: int
    playbook: str
    step: str
    action: str = Field(description="the catalogue action, e.g. kubernetes.rollout_restart")
    target: Target
    params: dict[str, Any] = Field(default_factory=dict)
    risk: Risk
    mode: Mode
    state: ActionState
    dry_run: bool
    requests: tuple[ApiRequest, ...] = Field(
        default=(), description="the requests made, or those live mode would make (dry-run)"
    )
    result: dict[str, Any] = Field(default_factory=dict, description="what the action found")
    reason: str | None = Field(None, description="why it was skipped, denied or failed")
    actor: str | None = Field(None, description="who approved or denied it")
    expires_at: AwareDatetime | None = Field(None, description="an unapproved action's end")
    decided_at: datetime | None = None


DECIDED_STATES: Final = frozenset({"approved", "denied", "expired"})
"""A person's (or the clock's) answer to an ``awaiting_approval`` action."""


def action_envelope(data: ActionEventData, *, source: str, at: datetime) -> Envelope:
    """The ``action.<state>`` event of ``data``. Its id derives from the action, the state and
    the incident version that asked for it, so a re-decided or re-relayed event is the same
    event to the log's dedup and downstream, while the same state reached again for a later
    version (a step skipped, then asked again when the incident escalates) is a new event."""
    return Envelope(
        id=derived_event_id(data.action_id, data.state, str(data.incident_version)),
        type=f"action.{data.state}",
        source=source,
        time=at,
        subject=data.incident_id,
        data=data.model_dump(mode="json"),
    )
