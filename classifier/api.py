"""The incidents API: list, show with timeline, and a person's severity decision."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from classifier.lifecycle import set_severity
from classifier.outbox import relay_outbox
from eventlog import EventLog, EventLogError
from schemas import TOPIC_INCIDENTS, new_event_id
from schemas.incidents import Incident
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

Authorize = Callable[[web.Request], str | None]
"""Returns who is calling (e.g. the basic-auth user, or "api"), or None to refuse."""

MAX_LIMIT = 1000


class SeverityChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    severity: Severity
    reason: str = Field(min_length=1, max_length=2000)
    actor: str | None = Field(None, max_length=200, description="who decided; default: the caller")


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return _json(status, {"error": message, **extra})


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
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise ValueError("limit: must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit: must be between 1 and {MAX_LIMIT}")
    return IncidentQuery(status, severity, since, limit)  # type: ignore[arg-type]


class IncidentsApi:
    def __init__(self, store: IncidentStore, eventlog: EventLog, authorize: Authorize) -> None:
        self.store = store
        self.log = eventlog
        self.authorize = authorize

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/incidents", self.list),
            web.get("/api/v1/incidents/{id}", self.show),
            web.post("/api/v1/incidents/{id}/severity", self.set_severity),
        ]

    def _refuse(self) -> web.Response:
        return _error(401, "missing or wrong credentials")

    async def list(self, request: web.Request) -> web.Response:
        if self.authorize(request) is None:
            return self._refuse()
        try:
            query = _query(request)
        except ValueError as exc:
            return _error(400, str(exc), field=str(exc).split(":", 1)[0])
        try:
            incidents = await self.store.list_incidents(query)
        except StoreError as exc:
            return _error(503, f"store unavailable: {exc}")
        return _json(200, {"incidents": [incident_json(i) for i in incidents]})

    async def show(self, request: web.Request) -> web.Response:
        if self.authorize(request) is None:
            return self._refuse()
        incident_id = request.match_info["id"]
        try:
            incident = await self.store.get_incident(incident_id)
            events = await self.store.timeline(incident_id) if incident else []
        except StoreError as exc:
            return _error(503, f"store unavailable: {exc}")
        if incident is None:
            return _error(404, f"no incident {incident_id}")
        body = incident_json(incident)
        body["events"] = [e.model_dump(mode="json") for e in events]
        return _json(200, body)

    async def set_severity(self, request: web.Request) -> web.Response:
        caller = self.authorize(request)
        if caller is None:
            return self._refuse()
        try:
            change = SeverityChange.model_validate_json(await request.read())
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in err["loc"]) or "body"
            return _error(400, f"{field}: {err['msg']}", field=field)
        try:
            incident = await self._apply(request.match_info["id"], change, change.actor or caller)
        except LookupError as exc:
            return _error(404, str(exc))
        except (StoreError, EventLogError) as exc:
            return _error(503, f"unavailable: {exc}")
        return _json(200, incident_json(incident))

    async def _apply(self, incident_id: str, change: SeverityChange, actor: str) -> Incident:
        request_id = new_event_id()
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(StoreConflict), stop=stop_after_attempt(10), reraise=True
        ):
            with attempt:
                incident = await self.store.get_incident(incident_id)
                if incident is None:
                    raise LookupError(f"no incident {incident_id}")
                groups = await self.store.load_groups([incident.key])
                group = groups[incident.key]
                now = datetime.now(UTC)
                updated, event = set_severity(
                    incident,
                    change.severity,
                    reason=change.reason,
                    actor=actor,
                    at=now,
                    request_id=request_id,
                )
                changed_groups = []
                if group.incident is not None and group.incident.id == incident_id:
                    group.incident = updated
                    changed_groups.append(group)
                await self.store.save(
                    changed_groups,
                    [IncidentWrite(updated, incident.version)],
                    [OutboxEvent(TOPIC_INCIDENTS, incident_id, event.envelope())],
                )
        log.info("incident %s severity set to %s by %s", incident_id, change.severity, actor)
        try:
            await relay_outbox(self.store, self.log)
        except EventLogError as exc:
            # Decided and stored; the classifier stage relays the outbox when the log is back.
            log.warning("severity change of %s stored, not yet in the log: %s", incident_id, exc)
        return updated
