"""The built-in status page on the HTTP edge: GET /status (HTML) and /status.json.

Public by design: no credentials, and nothing on it but the public view
(``comms.status_page``). Each answer may be cached for 30 s, so a crowd refreshing the page
during an outage costs the store a few queries, not one per visitor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import orjson
from aiohttp import web

from comms.routing import Routing
from comms.status_page import HISTORY, StatusPageRenderer, StatusView
from schemas.incidents import Incident
from store import IncidentStore
from store.base import IncidentQuery, StoreError

log = logging.getLogger(__name__)

MAX_PER_QUERY: Final = 1000
"""Incidents read per (severity, status) query. The store lists newest first with no cursor,
so this is a cap, not a page: past 1000 open incidents of one public severity, or 1000 resolved
in 90 days, the oldest are left off the page."""

CACHE: Final = "public, max-age=30"
# The page carries its CSS inline and needs nothing else; nothing may be loaded or run.
CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def load_public_incidents(
    store: IncidentStore, routing: Routing, now: datetime
) -> list[Incident]:
    """Open incidents, and those resolved within the history window, of the severities that
    reach the status page. One query per severity, so incidents the page never shows (SEV-2
    and SEV-3 by default, usually the most numerous) do not use up the cap."""
    public = [sev for sev, routes in routing.severities.items() if "status_page" in routes]
    found: dict[str, Incident] = {}
    for sev in public:
        # ``since`` bounds updated_at, which is never before resolved_at: every incident
        # resolved in the window is among these; the view drops the few updated later.
        for query in (
            IncidentQuery(status="open", severity=sev, limit=MAX_PER_QUERY),
            IncidentQuery(
                status="resolved", severity=sev, since=now - HISTORY, limit=MAX_PER_QUERY
            ),
        ):
            for inc in await store.list_incidents(query):
                found[inc.id] = inc
    return list(found.values())


def status_routes(
    store: IncidentStore,
    routing: Routing,
    clock: Callable[[], datetime] = _utcnow,
    *,
    templates_dir: Path | None = None,
) -> list[web.RouteDef]:
    renderer = StatusPageRenderer(templates_dir)

    async def view() -> StatusView:
        now = clock()
        return StatusView.build(await load_public_incidents(store, routing, now), routing, now)

    async def page(_: web.Request) -> web.Response:
        try:
            shown = await view()
        except StoreError as exc:
            log.warning("status page: store unavailable: %s", exc)
            return web.Response(
                status=503,
                text=_UNAVAILABLE_HTML,
                content_type="text/html",
                charset="utf-8",
                headers=_error_headers(),
            )
        return web.Response(
            text=renderer.html(shown),
            content_type="text/html",
            charset="utf-8",
            headers={
                "Cache-Control": CACHE,
                "Content-Security-Policy": CSP,
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def as_json(_: web.Request) -> web.Response:
        try:
            shown = await view()
        except StoreError as exc:
            log.warning("status page: store unavailable: %s", exc)
            return web.Response(
                status=503,
                body=orjson.dumps({"error": "status temporarily unavailable; retry later"}),
                content_type="application/json",
                headers=_error_headers(),
            )
        return web.Response(
            body=shown.model_dump_json().encode(),
            content_type="application/json",
            headers={"Cache-Control": CACHE, "X-Content-Type-Options": "nosniff"},
        )

    return [web.get("/status", page), web.get("/status.json", as_json)]


def _error_headers() -> dict[str, str]:
    # A cached error would hide the page for longer than the store is away.
    return {"Cache-Control": "no-store", "Retry-After": "5", "X-Content-Type-Options": "nosniff"}


_UNAVAILABLE_HTML: Final = (
    '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
    '<meta http-equiv="refresh" content="10"><title>Service status</title></head><body>'
    "<h1>Service status</h1><p>The status is temporarily unavailable. "
    "This page will try again in a few seconds.</p></body></html>"
)
