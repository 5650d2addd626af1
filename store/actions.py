"""The actions book: every remediation action as it stands, and the decisions people make.

The actions stage records each action after each of its events (``record_action``), so the
API can list them and an approver can find what waits. A decision (``approved``, ``denied``,
or ``expired`` when nobody answered in time) is a compare-and-set on an action that is
``awaiting_approval``, written in one transaction with its ``action.<state>`` event in the
store's outbox: the relayer publishes it to ``sevpipe.actions``, where the stage picks an
approval up and runs the action. The API never publishes to the log itself.

Both backends share ``decide`` and ``recordable``, so they accept and refuse alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, Protocol, runtime_checkable

from schemas.actions import ActionEventData, ActionState
from store.base import StoreError

Decision = Literal["approved", "denied", "expired"]
MAX_REASON: Final = 2000
MAX_LIST: Final = 1000

_IN_HAND: Final = frozenset({"approved", "denied", "expired", "started"})
"""States a stage's re-plan (``planned``, ``awaiting_approval``) must not overwrite: a
person's answer, or a run under way."""


_RAN: Final = frozenset({"started", "succeeded", "failed"})


class ActionNotFound(StoreError):
    """No action has this id."""


class ActionConflict(StoreError):
    """The action is not awaiting approval (any more): ``current`` says what it is."""

    def __init__(self, message: str, current: ActionEventData) -> None:
        super().__init__(message)
        self.current = current


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    decision: Decision
    actor: str
    at: datetime
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ActionQuery:
    incident_id: str | None = None
    state: ActionState | None = None
    limit: int = 100


def recordable(stored: ActionState | None, new: ActionState) -> bool:
    """Whether the stage's ``new`` state replaces the ``stored`` one. A run's outcome always
    does, and a new attempt replaces an old refusal; a re-plan never undoes an answer or a run
    in progress, and a refusal never hides a run (the same event handled by two workers at
    once: one runs it, the other finds it locked)."""
    if stored is None:
        return True
    if new in ("planned", "awaiting_approval"):
        return stored not in _IN_HAND
    if new == "skipped":
        return stored not in _RAN
    return True


def decide(current: ActionEventData, request: DecisionRequest) -> ActionEventData | None:
    """The action after ``request``; None when it is already so by the same actor (a retried
    request: nothing to write). Raises ActionConflict when it cannot be decided."""
    what = request.decision
    if current.state == what and current.actor == request.actor:
        return None
    if current.state != "awaiting_approval":
        by = f" by {current.actor}" if current.actor else ""
        raise ActionConflict(f"action {current.action_id} is {current.state}{by}", current)
    expires = current.expires_at
    if what == "expired":
        if expires is None or expires > request.at:
            raise ActionConflict(f"action {current.action_id} has not expired", current)
    elif expires is not None and expires <= request.at:
        raise ActionConflict(
            f"action {current.action_id} expired at {expires.isoformat()}: nobody approved it"
            " in time; it will not run",
            current,
        )
    return current.model_copy(
        update={
            "state": what,
            "actor": request.actor,
            "reason": request.reason,
            "decided_at": request.at,
        }
    )


@runtime_checkable
class ActionsBook(Protocol):
    async def record_action(self, data: ActionEventData) -> ActionEventData:
        """Store the action as the stage's event describes it, unless ``recordable`` says the
        stored state stands; returns the action as stored."""
        ...

    async def get_action(self, action_id: str) -> ActionEventData | None: ...

    async def list_actions(self, query: ActionQuery) -> list[ActionEventData]:
        """Newest first (by last change)."""
        ...

    async def due_approvals(self, now: datetime, limit: int = 100) -> list[str]:
        """Ids of actions awaiting approval whose time ran out by ``now``, oldest first."""
        ...

    async def decide_action(
        self, action_id: str, request: DecisionRequest, *, source: str
    ) -> tuple[ActionEventData, bool]:
        """Apply ``decide`` under the row's lock and write the action with its
        ``action.<decision>`` event (``source``) to the outbox, in one transaction. Returns
        the action and whether this was a repeat that changed nothing. Raises
        ActionNotFound, ActionConflict."""
        ...
