"""A fake Statuspage REST API v1 (the incident endpoints sevpipe uses), on aiohttp.

It answers with Statuspage's shapes (the incident object, incident updates newest first,
``{"error": ...}`` bodies) and keeps its incidents' state, so tests assert on what the page
would show, and it records every request so tests count what was really sent. Failures are
scripted: the next requests answer 420/429 (with ``Retry-After``) or 5xx, or hang.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

API_KEY = "sp-test-key-5f1c9e"
PAGE_ID = "pg1"
COMPONENTS = {"cmp_api": "API", "cmp_web": "Website", "cmp_db": "Database"}

UNRESOLVED = ("investigating", "identified", "monitoring")
INCIDENT_STATUSES = (*UNRESOLVED, "resolved", "postmortem")
COMPONENT_STATUSES = (
    "operational",
    "under_maintenance",
    "degraded_performance",
    "partial_outage",
    "major_outage",
)
IMPACTS = ("none", "minor", "major", "critical")


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    json: Any
    headers: dict[str, str]


@dataclass
class _Scripted:
    status: int = 0
    retry_after: str | None = None
    error: str = "scripted failure"
    hang: bool = False
    apply_then_hang: bool = False


@dataclass
class FakeStatuspage:
    api_key: str = API_KEY
    page_id: str = PAGE_ID
    components: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            cid: {"id": cid, "name": name, "status": "operational"}
            for cid, name in COMPONENTS.items()
        }
    )
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    _script: deque[_Scripted] = field(default_factory=deque)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None
    url: str = ""

    # -- scripting -----------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        count: int = 1,
        retry_after: str | None = None,
        error: str = "scripted failure",
    ) -> None:
        """The next ``count`` requests answer ``status`` with ``{"error": error}`` (nothing
        applied)."""
        self._script.extend(_Scripted(status, retry_after, error) for _ in range(count))

    def hang_next(self, *, applied: bool = False) -> None:
        """The next request gets no answer until the server closes; with ``applied`` it takes
        effect first (a response lost after the server did the work)."""
        self._script.append(_Scripted(hang=not applied, apply_then_hang=applied))

    def sent(self, method: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if method is None or r.method == method]

    async def wait_for_requests(self, count: int) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(middlewares=[self._middleware])
        base = "/v1/pages/{page_id}/incidents"
        app.router.add_post(base, self._create)
        app.router.add_get(f"{base}/unresolved", self._unresolved)
        app.router.add_get(f"{base}/{{incident_id}}", self._get)
        app.router.add_patch(f"{base}/{{incident_id}}", self._patch)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1/"
        return self.url

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the API -------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Any,
    ) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append(Recorded(request.method, request.path, body, dict(request.headers)))
        async with self._arrived:
            self._arrived.notify_all()
        scripted = self._script.popleft() if self._script else None
        if scripted is not None and scripted.hang:
            await self._closing.wait()
            return _error(503, "closing")
        if scripted is not None and scripted.status:
            headers = {"Retry-After": scripted.retry_after} if scripted.retry_after else {}
            return _error(scripted.status, scripted.error, headers)
        if request.headers.get("Authorization") != f"OAuth {self.api_key}":
            return _error(401, "Could not authenticate")
        if request.match_info.get("page_id") != self.page_id:
            return _error(404, "The requested resource could not be found.")
        response: web.StreamResponse = await handler(request)
        if scripted is not None and scripted.apply_then_hang:
            await self._closing.wait()
        return response

    async def _create(self, request: web.Request) -> web.StreamResponse:
        fields = _incident_fields(await request.json())
        if not fields.get("name"):
            return _error(422, "Name can't be blank")
        invalid = self._invalid(fields)
        if invalid:
            return _error(422, invalid)
        now = _now()
        incident_id = f"inc{next(self._ids):04d}"
        incident: dict[str, Any] = {
            "id": incident_id,
            "page_id": self.page_id,
            "name": fields["name"],
            "status": fields.get("status", "investigating"),
            "impact": fields.get("impact_override", "none"),
            "impact_override": fields.get("impact_override"),
            "shortlink": f"https://stspg.io/{incident_id}",
            "created_at": now,
            "updated_at": now,
            "resolved_at": None,
            "metadata": fields.get("metadata") or {},
            "components": [],
            "incident_updates": [],
        }
        self.incidents[incident_id] = incident
        self._apply(incident, fields, now)
        return web.json_response(incident, status=201)

    async def _patch(self, request: web.Request) -> web.StreamResponse:
        incident = self.incidents.get(request.match_info["incident_id"])
        if incident is None:
            return _error(404, "The requested resource could not be found.")
        fields = _incident_fields(await request.json())
        invalid = self._invalid(fields)
        if invalid:
            return _error(422, invalid)
        now = _now()
        if "status" in fields:
            incident["status"] = fields["status"]
        if "impact_override" in fields:
            incident["impact_override"] = fields["impact_override"]
            incident["impact"] = fields["impact_override"]
        if "name" in fields:
            incident["name"] = fields["name"]
        if isinstance(fields.get("metadata"), dict):
            incident["metadata"] = {**incident["metadata"], **fields["metadata"]}
        incident["updated_at"] = now
        self._apply(incident, fields, now)
        return web.json_response(incident)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        incident = self.incidents.get(request.match_info["incident_id"])
        if incident is None:
            return _error(404, "The requested resource could not be found.")
        return web.json_response(incident)

    async def _unresolved(self, request: web.Request) -> web.StreamResponse:
        listed = [i for i in self.incidents.values() if i["status"] in UNRESOLVED]
        return web.json_response(list(reversed(listed)))

    # -- state ---------------------------------------------------------------------------------

    def _invalid(self, fields: dict[str, Any]) -> str:
        if "status" in fields and fields["status"] not in INCIDENT_STATUSES:
            return f"Status {fields['status']!r} is not included in the list"
        if "impact_override" in fields and fields["impact_override"] not in IMPACTS:
            return "Impact override is not included in the list"
        statuses = fields.get("components") or {}
        ids = {*(fields.get("component_ids") or ()), *statuses}
        unknown = sorted(ids - self.components.keys())
        if unknown:
            return f"Component {unknown[0]} could not be found"
        bad = sorted(s for s in statuses.values() if s not in COMPONENT_STATUSES)
        return f"Component status {bad[0]!r} is not valid" if bad else ""

    def _apply(self, incident: dict[str, Any], fields: dict[str, Any], now: str) -> None:
        """Component statuses, the incident's component list and a new incident update: what
        Statuspage does with ``components``, ``component_ids``, ``status`` and ``body``."""
        affected = []
        for cid, new in (fields.get("components") or {}).items():
            component = self.components[cid]
            if component["status"] != new:
                affected.append(
                    {
                        "code": cid,
                        "name": component["name"],
                        "old_status": component["status"],
                        "new_status": new,
                    }
                )
            component["status"] = new
        listed = fields.get("component_ids")
        if listed is not None:
            incident["components"] = [dict(self.components[cid]) for cid in listed]
        else:
            incident["components"] = [
                dict(self.components[c["id"]]) for c in incident["components"]
            ]
        if incident["status"] == "resolved" and incident["resolved_at"] is None:
            incident["resolved_at"] = now
        elif incident["status"] != "resolved":
            incident["resolved_at"] = None
        if "status" in fields or "body" in fields:
            update = {
                "id": f"upd{next(self._ids):04d}",
                "incident_id": incident["id"],
                "status": incident["status"],
                "body": fields.get("body", ""),
                "created_at": now,
                "updated_at": now,
                "display_at": now,
                "affected_components": affected or None,
                "deliver_notifications": bool(fields.get("deliver_notifications", True)),
            }
            incident["incident_updates"].insert(0, update)


def _incident_fields(body: Any) -> dict[str, Any]:
    fields = body.get("incident") if isinstance(body, dict) else None
    return fields if isinstance(fields, dict) else {}


def _error(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": text}, status=status, headers=headers)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
