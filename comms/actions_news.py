"""Remediation news for the responders: ``sevpipe.actions`` in, chat messages out.

Nobody watches the actions API, so an approval nobody hears of runs out unseen. The comms
stage tells the chat routes of the incident's current routes (its severity's and those its
impacts add, see ``comms.impacts``: ``CHAT_ROUTES``, as for who acknowledged and who
commands, the security team's channel included for a security breach; never email,
leadership or a status page):

- ``action.awaiting_approval`` -> ``approval``: what would be done (the action, its target,
  its parameters as the guard capped them, the exact requests), why it waits, when it runs
  out, and how to answer. A dry-run approval says that approving runs nothing.
- ``action.succeeded`` and ``action.failed`` of a mutating or destructive action, and
  ``action.denied`` and ``action.expired`` of any -> ``action``, worded by state. A read's
  outcome, a plan, a start, a skip (dry-run's included) and an approval given are not news:
  the incident's timeline has them.
- ``action.succeeded`` of a ``people.*`` action (a task for people, e.g.
  ``people.credential_rotation``) -> ``task``: its title, checklist and reason, and the
  incident's link, on the chat routes and the security team's mail (``TASK_ROUTES``): the
  task is the news, not "done".

Effect ids derive from the action event's id (itself derived from the action and its state),
the route and the kind, so a redelivered or re-appended event finds its message sent. On a
threaded route the message follows the incident's first message, but never becomes that
first message itself: where it comes first (Kafka does not order two topics together) it is
posted on its own, and the incident's card still opens the thread.

Not news any more, so not sent (a log line says why): an approval that ran out, or that was
answered, before the stage saw it; an outcome older than ``fresh_for``. A stage that lagged,
or a consumer group that starts at the topic's beginning, must not post last month's
restarts.

The incident is read from the store (its severity now, its title, its threads). The
classifier stores an incident before its event reaches the log, and the actions stage acts
only on that event, so an action event whose incident the store lacks means the store lost
it (restored from an older backup, a rebuild under way, another store configured): waiting
would not bring it back and would hold up every message behind it, so the event is skipped
with a warning.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from comms.channel import MessageKind
from comms.impacts import incident_routes
from comms.routing import CHAT_ROUTES, TASK_ROUTES
from eventlog import Record
from schemas import derived_event_id
from schemas.actions import (
    ACTION_AWAITING_APPROVAL,
    ACTION_DENIED,
    ACTION_EXPIRED,
    ACTION_FAILED,
    ACTION_SUCCEEDED,
    ActionEventData,
)
from schemas.durations import format_duration
from store.actions import ActionsBook

if TYPE_CHECKING:
    from comms.stage import CommsStage

log = logging.getLogger(__name__)

NEWS: Final[dict[str, MessageKind]] = {
    ACTION_AWAITING_APPROVAL: "approval",
    ACTION_SUCCEEDED: "action",
    ACTION_FAILED: "action",
    ACTION_DENIED: "action",
    ACTION_EXPIRED: "action",
}
"""The action events people are told of (outcomes only of actions that change something)."""
TASK_PREFIX: Final = "people."
"""Actions that open a task for people: their success is a ``task`` message."""
FRESH_FOR: Final = timedelta(hours=1)
"""An outcome older than this when the stage sees it is history, not news."""


class ActionNews:
    """The comms stage's part for ``sevpipe.actions``: one record at a time, in order."""

    def __init__(self, stage: CommsStage, *, fresh_for: timedelta = FRESH_FOR) -> None:
        self.stage = stage
        self.fresh_for = fresh_for

    async def handle(self, record: Record) -> None:
        env = record.envelope
        kind = NEWS.get(env.type)
        if kind is None:
            return
        action = ActionEventData.model_validate(env.data)  # a bad one raises: a dead letter
        if kind == "action" and action.risk == "read_only":
            return
        if env.type == ACTION_SUCCEEDED and action.action.startswith(TASK_PREFIX):
            kind = "task"
        stale = await self._stale(kind, action, env.time)
        if stale:
            log.info("comms: %s of action %s not told: %s", env.type, action.action_id, stale)
            return
        stage = self.stage
        incident = await stage.store.get_incident(action.incident_id)
        if incident is None:
            log.warning(
                "comms: %s of action %s not told: incident %s is not in the store",
                env.type,
                action.action_id,
                action.incident_id,
            )
            return
        told = TASK_ROUTES if kind == "task" else CHAT_ROUTES
        routes = [
            r for r in await incident_routes(stage.routing, stage.store, incident) if r.name in told
        ]
        if not routes:
            told_where = "chat or security" if kind == "task" else "chat"
            why = f"no {told_where} route for {incident.severity}"
            await stage.suppressed(env.id, incident, kind, why)
            return
        for route in routes:
            message = stage._message(
                incident,
                kind,
                route,
                effect_id=derived_event_id(env.id, "notify", route.name, kind),
                cause=env.id,
                action=action,
            )
            await stage.deliver(message, route, root=False)

    async def _stale(self, kind: MessageKind, action: ActionEventData, at: datetime) -> str:
        """Why this event is no longer news ("" when it is)."""
        now = self.stage.clock()
        if kind in ("action", "task"):
            if now - at > self.fresh_for:
                return f"it happened more than {format_duration(self.fresh_for)} ago"
            return ""
        if action.expires_at is not None and action.expires_at <= now:
            return "the approval ran out before it could be told"
        book = self.stage.store
        if not isinstance(book, ActionsBook):
            return ""
        # The actions stage appends an event before its book records it, so the book may
        # not have this one yet; a state it holds that was decided later is an answer.
        stored = await book.get_action(action.action_id)
        asked = action.decided_at
        if (
            stored is not None
            and stored.state != "awaiting_approval"
            and stored.decided_at is not None
            and asked is not None
            and stored.decided_at > asked
        ):
            return f"it was {stored.state} meanwhile"
        return ""
