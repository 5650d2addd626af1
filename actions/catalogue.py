"""The action catalogue's contract: what every remediation offers the actions stage.

An action is registered explicitly (``Catalogue.register``) with a pydantic model of its
parameters, its risk, the target kind it accepts, and three coroutines:

- ``plan``: the exact API requests live mode would make, without making any (dry-run shows
  them, and the ``action.*`` events carry them);
- ``execute``: make them, under the effects ledger's fencing token; returns what it found
  and did (JSON);
- ``check``: after a crash, whether the action already took effect (its outcome), or None;
  the stage never re-runs a mutating action blindly.

Errors follow the channels' convention: an exception with ``retriable = True`` (a timeout, a
429, a 5xx, a 409 to re-read) is retried later, checking first; anything else (a 403 from
RBAC, a 404, a refused patch) is the action's failed outcome, reported and not retried.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from schemas.actions import ApiRequest, Risk, Target

P = TypeVar("P", bound=BaseModel)

ACTION_ID: ContextVar[str | None] = ContextVar("sevpipe_action_id", default=None)
"""The id of the action being planned, run or checked, set by the stage around each call: an
action that marks what it changes (a restart's annotation) marks it with this, so its
``check`` knows its own mark from another action's. None outside the stage."""
Outcome = Mapping[str, Any]


@dataclass(frozen=True)
class ActionSpec(Generic[P]):
    name: str
    """``<area>.<verb>``, e.g. ``kubernetes.rollout_restart``: what playbooks name."""
    params: type[P]
    risk: Risk
    target_kind: str
    plan: Callable[[Target, P], Awaitable[tuple[ApiRequest, ...]]]
    execute: Callable[[Target, P, int], Awaitable[Outcome]]
    check: Callable[[Target, P], Awaitable[Outcome | None]]
    description: str = ""


class UnknownAction(KeyError):
    """A playbook names an action the catalogue does not have."""


@dataclass
class Catalogue:
    """Every action the stage may run, by name; nothing runs that is not registered here."""

    actions: dict[str, ActionSpec[Any]] = field(default_factory=dict)

    def register(self, spec: ActionSpec[Any]) -> None:
        if spec.name in self.actions:
            raise ValueError(f"action {spec.name} is registered twice")
        self.actions[spec.name] = spec

    def get(self, name: str) -> ActionSpec[Any]:
        try:
            return self.actions[name]
        except KeyError:
            raise UnknownAction(name) from None

    def names(self) -> list[str]:
        return sorted(self.actions)
