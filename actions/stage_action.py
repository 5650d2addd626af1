"""One action of one playbook step on one target, as the actions stage takes it and its
``action.*`` events describe it: its id, what it will do, and how each state is told (the
event appended first, then the actions book, then the metric)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import Counter

from actions.playbooks import PlannedStep
from eventlog import EventLog
from schemas import TOPIC_ACTIONS, derived_event_id
from schemas.actions import ActionEventData, ActionState, ApiRequest, Target, action_envelope
from store.actions import ActionsBook

log = logging.getLogger("actions.stage")


class Emitter(Protocol):
    """What an action needs of its stage to tell its states."""

    source: str
    live: bool
    log: EventLog
    book: ActionsBook
    clock: Callable[[], datetime]

    @property
    def counter(self) -> Counter: ...


class StageAction:
    """One action of one step on one target, as its events describe it."""

    def __init__(
        self,
        stage: Emitter,
        incident_id: str,
        incident_version: int,
        step: PlannedStep,
        target: Target,
    ) -> None:
        self.stage = stage
        self.incident_id = incident_id
        self.incident_version = incident_version
        self.step = step
        self.target = target
        parts = (step.step, target.key(), *([step.variant] if step.variant else []))
        self.action_id = derived_event_id(
            incident_id.removeprefix("inc-").upper(), "action", *parts
        )
        self.risk: Any = "read_only"
        self.params: dict[str, Any] = dict(step.params)
        self.requests: tuple[ApiRequest, ...] = ()
        self.result: dict[str, Any] = {}
        self.actor: str | None = None
        """Who approved it: named on every event of the run that follows."""

    @classmethod
    def of(cls, stage: Emitter, data: ActionEventData) -> StageAction:
        """The action as the book holds it (an approved one, about to run)."""
        step = PlannedStep(
            playbook=data.playbook,
            step=data.step,
            action=data.action,
            params=data.params,
            mode=data.mode,
            target=data.target,
        )
        action = cls(stage, data.incident_id, data.incident_version, step, data.target)
        action.action_id = data.action_id
        action.risk = data.risk
        action.requests = data.requests
        action.actor = data.actor
        return action

    async def emit(
        self, state: ActionState, *, reason: str | None = None, expires_at: datetime | None = None
    ) -> None:
        stage = self.stage
        at = stage.clock()
        data = ActionEventData(
            action_id=self.action_id,
            incident_id=self.incident_id,
            incident_version=self.incident_version,
            playbook=self.step.playbook,
            step=self.step.step,
            action=self.step.action,
            target=self.target,
            params=self.params,
            risk=self.risk,
            mode=self.step.mode,
            state=state,
            dry_run=not stage.live,
            requests=self.requests,
            result=self.result,
            reason=reason,
            actor=self.actor,
            expires_at=expires_at,
            decided_at=at,
        )
        env = action_envelope(data, source=stage.source, at=at)
        await stage.log.append(TOPIC_ACTIONS, [env], dedup_keys=[env.id])
        await stage.book.record_action(data)
        stage.counter.labels(data.action, state).inc()
        log.info("action %s %s: %s", self.step.action, state, reason or self.target.key())
