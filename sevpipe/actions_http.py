"""The actions API: what the actions stage planned, asked, ran or refused, and a person's
answer to what waits for approval.

- ``GET /api/v1/actions?incident=&status=&limit=`` (viewer): newest first;
- ``GET /api/v1/actions/{id}`` (viewer);
- ``POST /api/v1/actions/{id}/approve`` (approver), body ``{"reason": "..."}`` or empty;
- ``POST /api/v1/actions/{id}/deny`` (approver), body ``{"reason": "..."}`` (required).

The actor recorded is the authenticated caller, never a body field (a body naming one is
refused). A decision is a compare-and-set in the actions book written with its event in the
outbox (``store.actions``): 409 when the action is not awaiting approval (answered, expired,
or never asked), with the action as it is; the same answer by the same person again is a
200 that changes nothing (``Idempotent-Replayed: true``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, cast, get_args

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from classifier.api import Authorize, Role, caller
from classifier.api import error_response as _error
from classifier.api import json_response as _json
from schemas.actions import ActionEventData, ActionState
from store.actions import (
    MAX_LIST,
    MAX_REASON,
    ActionConflict,
    ActionNotFound,
    ActionQuery,
    ActionsBook,
    Decision,
    DecisionRequest,
)
from store.base import StoreError

log = logging.getLogger(__name__)

SOURCE = "/sevpipe/api"
DEFAULT_LIMIT = 100
STATES = frozenset(get_args(ActionState))


class Approval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, min_length=1, max_length=MAX_REASON)


class Denial(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=MAX_REASON)


def action_json(action: ActionEventData) -> dict[str, Any]:
    return action.model_dump(mode="json")


def _query(request: web.Request) -> ActionQuery:
    q = request.query
    state = q.get("status") or None
    if state is not None and state not in STATES:
        raise ValueError(f"status: one of {', '.join(sorted(STATES))}")
    raw = q.get("limit")
    try:
        limit = DEFAULT_LIMIT if raw is None else int(raw)
    except ValueError:
        raise ValueError(f"limit: a whole number from 1 to {MAX_LIST}") from None
    if not 1 <= limit <= MAX_LIST:
        raise ValueError(f"limit: a whole number from 1 to {MAX_LIST}")
    return ActionQuery(
        incident_id=q.get("incident") or None,
        state=cast("ActionState | None", state),
        limit=limit,
    )


def _parse(body: type[Approval | Denial], raw: bytes) -> Approval | Denial | web.Response:
    """The request's body (empty reads as ``{}``), or a 400 naming the first field wrong."""
    try:
        return body.model_validate_json(raw if raw.strip() else b"{}")
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        return _error(400, f"{field}: {err['msg']}", field=field)


class ActionsApi:
    def __init__(self, book: ActionsBook, authorize: Authorize) -> None:
        self.book = book
        self.authorize = authorize

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/actions", self.list),
            web.get("/api/v1/actions/{id}", self.show),
            web.post("/api/v1/actions/{id}/approve", self.approve),
            web.post("/api/v1/actions/{id}/deny", self.deny),
        ]

    def _who(self, request: web.Request, role: Role) -> str | web.Response:
        return caller(self.authorize, request, role)

    async def list(self, request: web.Request) -> web.Response:
        if isinstance(who := self._who(request, "viewer"), web.Response):
            return who
        try:
            query = _query(request)
        except ValueError as exc:
            return _error(400, str(exc), field=str(exc).split(":", 1)[0])
        try:
            actions = await self.book.list_actions(query)
        except StoreError as exc:
            return _error(503, f"store unavailable: {exc}")
        return _json(200, {"actions": [action_json(a) for a in actions]})

    async def show(self, request: web.Request) -> web.Response:
        if isinstance(who := self._who(request, "viewer"), web.Response):
            return who
        action_id = request.match_info["id"]
        try:
            action = await self.book.get_action(action_id)
        except StoreError as exc:
            return _error(503, f"store unavailable: {exc}")
        if action is None:
            return _error(404, f"no action {action_id}")
        return _json(200, action_json(action))

    async def approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, "approved", Approval)

    async def deny(self, request: web.Request) -> web.Response:
        return await self._decide(request, "denied", Denial)

    async def _decide(
        self, request: web.Request, decision: Decision, body: type[Approval | Denial]
    ) -> web.Response:
        caller = self._who(request, "approver")
        if isinstance(caller, web.Response):
            return caller
        given = _parse(body, await request.read())
        if isinstance(given, web.Response):
            return given
        ask = DecisionRequest(decision, caller, datetime.now(UTC), given.reason)
        return await self._answer(request.match_info["id"], ask)

    async def _answer(self, action_id: str, ask: DecisionRequest) -> web.Response:
        try:
            action, repeat = await self.book.decide_action(action_id, ask, source=SOURCE)
        except ActionNotFound as exc:
            return _error(404, str(exc))
        except ActionConflict as exc:
            return _error(409, str(exc), action=action_json(exc.current))
        except StoreError as exc:
            return _error(503, f"store unavailable: {exc}")
        if repeat:
            return _json(200, action_json(action), **{"Idempotent-Replayed": "true"})
        log.info("action %s %s by %s: %s", action_id, ask.decision, ask.actor, ask.reason or "")
        return _json(200, action_json(action))
