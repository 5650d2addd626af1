"""The incidents API: list, show with timeline, page through alerts, a person's decisions
(severity, acknowledge, take command).

The API writes a severity decision and its event to the store (state and outbox in one
transaction) and leaves relaying to the stages' relayer: it never publishes to the log itself.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from classifier.changes import Change
from classifier.people import acknowledge, set_severity, take_command
from schemas import TOPIC_INCIDENTS, Envelope, derived_event_id, new_event_id
from schemas.alertmanager import AlertStatus
from schemas.incidents import Incident, IncidentAlert
from schemas.severity import SEVERITIES, Severity
from store.base import (
    IncidentQuery,
    IncidentStore,
    IncidentWrite,
    OutboxEvent,
    StoreConflict,
    StoreError,
)

log = logging.getLogger(__name__)

Role = Literal["viewer", "responder", "approver"]
"""What a caller may do: read; also re-rate, acknowledge, command; also approve actions."""


@dataclass(frozen=True)
class Refusal:
    status: Literal[401, 403]
    message: str


Authorize = Callable[[web.Request, Role], "str | Refusal"]
"""Who is calling, when they hold ``role`` (the operator's name; the credential's without
operators configured), or why not: 401 without valid credentials, 403 without the role."""

MAX_LIMIT = 1000
ALERTS_PAGE = 100
MAX_IDEMPOTENCY_KEY = 255


Decide = Callable[[Incident, str], "tuple[Incident, Change] | None"]
"""Given the incident and the request's event id: its new version and event, or None."""


class PersonAct(Protocol):
    def __call__(
        self, incident: Incident, *, actor: str, at: datetime, request_id: str
    ) -> tuple[Incident, Change] | None: ...


PEOPLE: dict[str, PersonAct] = {"acknowledge": acknowledge, "commander": take_command}


class PersonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(None, max_length=2000)


class SeverityChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    severity: Severity
    reason: str = Field(min_length=1, max_length=2000)


def json_response(status: int, body: Any, **headers: str) -> web.Response:
    """A JSON answer; the API's one way of writing one."""
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def error_response(status: int, message: str, **extra: Any) -> web.Response:
    """``{"error": message, ...}``: what every refusal of the API looks like."""
    return json_response(status, {"error": message, **extra})


def caller(authorize: Authorize, request: web.Request, role: Role) -> str | web.Response:
    """Who calls, holding ``role``, or the 401/403 answer to give instead."""
    who = authorize(request, role)
    if isinstance(who, Refusal):
        return error_response(who.status, who.message)
    return who


def _invalid(exc: ValidationError) -> web.Response:
    """A 400 naming the first field the body got wrong."""
    err = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in err["loc"]) or "body"
    return error_response(400, f"{field}: {err['msg']}", field=field)


def _bad_key(key: str | None) -> web.Response | None:
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        return error_response(
            400,
            f"Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY} characters",
            field="Idempotency-Key",
        )
    return None


def incident_json(incident: Incident) -> dict[str, Any]:
    out: dict[str, Any] = incident.model_dump(mode="json")
    return out


def _query(request: web.Request) -> IncidentQuery:
    q = request.query
    status = q.get("status")
    if status not in (None, "open", "resolved"):
        raise ValueError("status: must be open or resolved")
    severity = q.get("severity")
    if severity is not None and severity not in SEVERITIES:
        raise ValueError(f"severity: must be one of {', '.join(SEVERITIES)}")
    since = None
    if "since" in q:
        try:
            # A raw "+" in a query string arrives as a space ("...12:00:00 02:00").
            raw = q["since"].strip().replace(" ", "+")
            since = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("since: must be an ISO 8601 time") from None
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
    limit = _limit(q.get("limit"), 100)
    return IncidentQuery(status, severity, since, limit)  # type: ignore[arg-type]


def _limit(raw: str | None, default: int) -> int:
    try:
        limit = int(raw) if raw is not None else default
    except ValueError:
        raise ValueError("limit: must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit: must be between 1 and {MAX_LIMIT}")
    return limit


def _alert_status(raw: str | None) -> AlertStatus | None:
    if raw is None or raw in ("firing", "resolved"):
        return raw  # type: ignore[return-value]
    raise ValueError("status: must be firing or resolved")


def _cursor(fingerprint: str) -> str:
    return base64.urlsafe_b64encode(fingerprint.encode()).decode().rstrip("=")


def _after(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        return raw.decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("cursor: not a cursor this API gave out") from None


def _event_json(envelope: Envelope) -> dict[str, Any]:
    """A timeline entry: the event without its alerts (they are paged separately)."""
    out: dict[str, Any] = envelope.model_dump(mode="json")
    alerts = out["data"].pop("alerts", None) or []
    out["data"]["alerts_changed"] = len(alerts)
    return out


def _page(alerts: Sequence[IncidentAlert], limit: int) -> dict[str, Any]:
    """``limit`` alerts, and a cursor when ``alerts`` (asked for ``limit + 1``) had more."""
    page = alerts[:limit]
    return {
        "alerts": [a.model_dump(mode="json") for a in page],
        "alerts_next_cursor": _cursor(page[-1].fingerprint) if len(alerts) > limit else None,
    }


class IncidentsApi:
    def __init__(self, store: IncidentStore, authorize: Authorize) -> None:
        self.store = store
        self.authorize = authorize

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/incidents", self.list),
            web.get("/api/v1/incidents/{id}", self.show),
            web.get("/api/v1/incidents/{id}/alerts", self.alerts),
            web.post("/api/v1/incidents/{id}/severity", self.set_severity),
            web.post("/api/v1/incidents/{id}/acknowledge", self.acknowledge),
            web.post("/api/v1/incidents/{id}/commander", self.commander),
        ]

    def _who(self, request: web.Request, role: Role) -> str | web.Response:
        return caller(self.authorize, request, role)

    async def list(self, request: web.Request) -> web.Response:
        if isinstance(who := self._who(request, "viewer"), web.Response):
            return who
        try:
            query = _query(request)
        except ValueError as exc:
            return error_response(400, str(exc), field=str(exc).split(":", 1)[0])
        try:
            incidents = await self.store.list_incidents(query)
        except StoreError as exc:
            return error_response(503, f"store unavailable: {exc}")
        return json_response(200, {"incidents": [incident_json(i) for i in incidents]})

    async def show(self, request: web.Request) -> web.Response:
        if isinstance(who := self._who(request, "viewer"), web.Response):
            return who
        incident_id = request.match_info["id"]
        try:
            incident = await self.store.get_incident(incident_id)
            if incident is None:
                return error_response(404, f"no incident {incident_id}")
            alerts = await self.store.list_alerts(incident_id, limit=ALERTS_PAGE + 1)
            events = await self.store.timeline(incident_id)
        except StoreError as exc:
            return error_response(503, f"store unavailable: {exc}")
        body = incident_json(incident)
        body.update(_page(alerts, ALERTS_PAGE))
        body["events"] = [_event_json(e) for e in events]
        return json_response(200, body)

    async def alerts(self, request: web.Request) -> web.Response:
        """``?status=firing|resolved&limit=&cursor=``: an incident's alerts, a page at a time."""
        if isinstance(who := self._who(request, "viewer"), web.Response):
            return who
        incident_id = request.match_info["id"]
        q = request.query
        try:
            status = _alert_status(q.get("status"))
            limit = _limit(q.get("limit"), ALERTS_PAGE)
            after = _after(q.get("cursor"))
        except ValueError as exc:
            return error_response(400, str(exc), field=str(exc).split(":", 1)[0])
        try:
            if await self.store.get_incident(incident_id) is None:
                return error_response(404, f"no incident {incident_id}")
            alerts = await self.store.list_alerts(
                incident_id,
                status=status,
                limit=limit + 1,
                after=after,
            )
        except StoreError as exc:
            return error_response(503, f"store unavailable: {exc}")
        return json_response(200, _page(alerts, limit))

    async def set_severity(self, request: web.Request) -> web.Response:
        caller = self._who(request, "responder")
        if isinstance(caller, web.Response):
            return caller
        try:
            change = SeverityChange.model_validate_json(await request.read())
        except ValidationError as exc:
            return _invalid(exc)
        key = request.headers.get("Idempotency-Key")
        if (refused := _bad_key(key)) is not None:
            return refused
        actor = caller

        def decide(incident: Incident, request_id: str) -> tuple[Incident, Change]:
            return set_severity(
                incident,
                change.severity,
                reason=change.reason,
                actor=actor,
                at=datetime.now(UTC),
                request_id=request_id,
            )

        return await self._respond(request, decide, key and f"{caller}\x1f{key}", "severity")

    async def acknowledge(self, request: web.Request) -> web.Response:
        """Records who acknowledged the incident first (the caller) and when."""
        return await self._person(request, "acknowledge", acknowledge)

    async def commander(self, request: web.Request) -> web.Response:
        """The caller becomes the incident commander (a handover if someone else was)."""
        return await self._person(request, "commander", take_command)

    async def act_as(
        self, incident_id: str, what: str, actor: str, key: str | None = None
    ) -> Incident:
        """``acknowledge`` or ``commander`` for ``actor`` whom the caller authenticated (the
        Slack buttons); raises LookupError for an unknown incident, StoreError when away."""
        act = PEOPLE[what]

        def decide(incident: Incident, request_id: str) -> tuple[Incident, Change] | None:
            return act(incident, actor=actor, at=datetime.now(UTC), request_id=request_id)

        incident, _ = await self._apply(incident_id, decide, key, what)
        return incident

    async def _person(self, request: web.Request, what: str, act: PersonAct) -> web.Response:
        caller = self._who(request, "responder")
        if isinstance(caller, web.Response):
            return caller
        raw = await request.read()
        try:
            # The acting person is who the credentials say, never what the body says: it
            # may hold a note, and anything else is refused.
            body = PersonBody.model_validate_json(raw) if raw.strip() else PersonBody()
        except ValidationError as exc:
            return _invalid(exc)
        key = request.headers.get("Idempotency-Key")
        if (refused := _bad_key(key)) is not None:
            return refused

        def decide(incident: Incident, request_id: str) -> tuple[Incident, Change] | None:
            return act(incident, actor=caller, at=datetime.now(UTC), request_id=request_id)

        del body  # the note is for the caller's records; the event names the actor
        return await self._respond(request, decide, key and f"{caller}\x1f{key}", what)

    async def _respond(
        self, request: web.Request, decide: Decide, key: str | None, what: str
    ) -> web.Response:
        incident_id = request.match_info["id"]
        try:
            incident, replayed = await self._apply(incident_id, decide, key, what)
        except LookupError as exc:
            return error_response(404, str(exc))
        except StoreError as exc:
            return error_response(503, f"unavailable: {exc}")
        response = json_response(200, incident_json(incident))
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response

    async def _apply(
        self, incident_id: str, decide: Decide, key: str | None, what: str
    ) -> tuple[Incident, bool]:
        """The decision, stored with its event; with an idempotency key that was used before
        on this incident, the incident as it is and True (nothing is changed again)."""
        if key is None:
            request_id = new_event_id()
        else:
            # The incident id keeps its opening event's time prefix; an id derived from it and
            # the key is the same on every retry of the request.
            request_id = derived_event_id(incident_id[4:].upper(), what, key)
            if await self.store.caused(incident_id, request_id):
                return await self._get(incident_id), True
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(StoreConflict), stop=stop_after_attempt(10), reraise=True
        ):
            with attempt:
                incident = await self._get(incident_id)
                decided = decide(incident, request_id)
                if decided is None:
                    return incident, False  # already so: nothing to record
                updated, event = decided
                groups = await self.store.load_groups([incident.key])
                group = groups[incident.key]
                changed_groups = []
                if group.incident is not None and group.incident.id == incident_id:
                    group.incident = updated
                    changed_groups.append(group)
                await self.store.save(
                    changed_groups,
                    [IncidentWrite(updated, incident.version)],
                    [OutboxEvent(TOPIC_INCIDENTS, incident_id, event.envelope())],
                )
        log.info("incident %s: %s", incident_id, event.change, extra={"incident_id": incident_id})
        return updated, False

    async def _get(self, incident_id: str) -> Incident:
        incident = await self.store.get_incident(incident_id)
        if incident is None:
            raise LookupError(f"no incident {incident_id}")
        return incident
