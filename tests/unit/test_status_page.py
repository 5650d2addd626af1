"""The public status page: component states, current incidents and 90 days of history from
hand-made incidents; SEV routing respected; no alert text anywhere on it; and the HTTP
handlers' headers and store outage, called directly (no sockets)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from comms.routing import Routing
from comms.status_page import StatusPageRenderer, StatusView, public_id
from schemas.incidents import Incident
from sevpipe.status_http import MAX_PER_QUERY, load_public_incidents, status_routes
from store.base import IncidentQuery, StoreUnavailable

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
MARKER = "ALERTTEXT-7f3a"
ROUTING = Routing(components={"checkout": "Checkout", "search": "Search", "db-primary": "Database"})


def incident(n: int, sev: str = "SEV-0", status: str = "open", **kw: Any) -> Incident:
    opened = kw.pop("opened_at", NOW - timedelta(hours=n + 1))
    resolved_at = kw.pop("resolved_at", NOW - timedelta(hours=n) if status == "resolved" else None)
    fields: dict[str, Any] = {
        "id": f"01INC{n:04d}",
        "key": f'{{}}:{{service="checkout", note="{MARKER}"}}',
        "severity": sev,
        "status": status,
        "title": f"{MARKER} checkout 5xx",
        "reasons": (f"impact outage ({MARKER})",),
        "opened_at": opened,
        "updated_at": resolved_at or opened,
        "resolved_at": resolved_at,
    }
    return Incident(**(fields | kw))


def states(view: StatusView) -> dict[str, str]:
    return {c.name: c.status for c in view.components}


def test_no_incidents_every_component_operational_sorted() -> None:
    view = StatusView.build([], ROUTING, NOW)
    assert [c.name for c in view.components] == ["Checkout", "Database", "Search"]
    assert set(states(view).values()) == {"operational"}
    assert view.overall == "operational"
    assert (view.current, view.history) == ((), ())


@pytest.mark.parametrize(
    ("sev", "state"),
    [
        ("SEV-0", "major_outage"),
        ("SEV-1", "partial_outage"),
        ("SEV-2", "degraded_performance"),
        ("SEV-3", "degraded_performance"),
    ],
)
def test_component_state_follows_severity_when_routed_to_the_page(sev: str, state: str) -> None:
    everywhere = Routing(
        components=ROUTING.components,
        severities=dict.fromkeys(("SEV-0", "SEV-1", "SEV-2", "SEV-3"), ("status_page",)),
    )
    view = StatusView.build([incident(1, sev)], everywhere, NOW)
    assert states(view) == {"Checkout": state, "Database": "operational", "Search": "operational"}
    assert view.overall == state


def test_worst_open_incident_wins_per_component() -> None:
    search = '{}:{service="search"}'
    both = '{}:{service=~"checkout|db-primary"}/{app="checkout",db="db-primary"}'
    incidents = [
        incident(1, "SEV-1", key=search),
        incident(2, "SEV-0", key=both),
        incident(3, "SEV-1"),  # checkout again, less severe than the SEV-0
        incident(4, "SEV-0", "resolved", key=search),  # resolved: no longer counts
    ]
    view = StatusView.build(incidents, ROUTING, NOW)
    assert states(view) == {
        "Checkout": "major_outage",
        "Database": "major_outage",
        "Search": "partial_outage",
    }
    assert view.overall == "major_outage"


def test_default_routing_keeps_sev2_and_sev3_off_the_page() -> None:
    incidents = [
        incident(1, "SEV-2"),
        incident(2, "SEV-3"),
        incident(3, "SEV-2", "resolved"),
    ]
    view = StatusView.build(incidents, ROUTING, NOW)
    assert view.overall == "operational"
    assert set(states(view).values()) == {"operational"}
    assert (view.current, view.history) == ((), ())


def test_routing_without_status_page_for_sev1_hides_it() -> None:
    routing = Routing(
        components=ROUTING.components,
        severities={"SEV-0": ("status_page",), "SEV-1": (), "SEV-2": (), "SEV-3": ()},
    )
    view = StatusView.build([incident(1, "SEV-1"), incident(2, "SEV-0")], routing, NOW)
    assert [i.id for i in view.current] == [public_id("01INC0002")]


def test_current_and_history_in_public_words() -> None:
    opened = incident(1, "SEV-0")
    done = incident(2, "SEV-1", "resolved")
    view = StatusView.build([done, opened], ROUTING, NOW)

    (cur,) = view.current
    assert cur.title == "Investigating: a major outage affecting Checkout"
    assert (cur.impact, cur.status, cur.components) == (
        "a major outage",
        "investigating",
        ("Checkout",),
    )
    assert (cur.started_at, cur.resolved_at) == (opened.opened_at, None)

    (past,) = view.history
    assert past.title == "Resolved: degraded service affecting Checkout"
    assert (past.status, past.resolved_at) == ("resolved", done.resolved_at)


def test_public_id_is_short_stable_and_not_the_internal_id() -> None:
    view = StatusView.build([incident(1)], ROUTING, NOW)
    (cur,) = view.current
    assert cur.id == public_id("01INC0001") == public_id("01INC0001")
    assert cur.id != public_id("01INC0002")
    assert "01INC0001" not in cur.id
    assert len(cur.id) == 12


def test_history_is_90_days_newest_first() -> None:
    resolved = [
        incident(1, resolved_at=NOW - timedelta(days=89, hours=23), status="resolved"),
        incident(2, resolved_at=NOW - timedelta(days=90), status="resolved"),  # the edge: in
        incident(3, resolved_at=NOW - timedelta(days=90, seconds=1), status="resolved"),
        incident(4, resolved_at=NOW - timedelta(minutes=5), status="resolved"),
        incident(5, resolved_at=NOW - timedelta(days=200), status="resolved"),
    ]
    view = StatusView.build(resolved, ROUTING, NOW)
    assert [i.id for i in view.history] == [
        public_id("01INC0004"),
        public_id("01INC0001"),
        public_id("01INC0002"),
    ]


def test_an_incident_on_no_component_still_shows_in_overall() -> None:
    view = StatusView.build([incident(1, "SEV-0", key='{}:{service="billing"}')], ROUTING, NOW)
    assert set(states(view).values()) == {"operational"}
    assert view.overall == "major_outage"
    (cur,) = view.current
    assert cur.title == "Investigating: a major outage"
    assert cur.components == ()


def test_no_alert_text_in_json_or_html() -> None:
    incidents = [incident(1), incident(2, "SEV-1", "resolved")]
    view = StatusView.build(incidents, ROUTING, NOW)
    body = view.model_dump_json()
    page = StatusPageRenderer().html(view)
    for text in (body, page):
        assert MARKER not in text
        assert "01INC" not in text  # neither internal id
        assert "service=" not in text  # nor the group key
    assert "Checkout" in page
    assert "Major outage" in page
    assert "Investigating: a major outage affecting Checkout" in page
    assert "Resolved: degraded service affecting Checkout" in page
    decoded = json.loads(body)
    assert set(decoded["current"][0]) == {
        "id",
        "title",
        "impact",
        "status",
        "components",
        "started_at",
        "resolved_at",
    }


def test_component_names_are_escaped_in_html() -> None:
    routing = Routing(components={"checkout": "<script>alert(1)</script>"})
    view = StatusView.build([incident(1)], routing, NOW)
    page = StatusPageRenderer().html(view)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_page_is_self_contained() -> None:
    page = StatusPageRenderer().html(StatusView.build([incident(1)], ROUTING, NOW))
    assert "<style>" in page
    for external in ("<script", "<link", "src=", "http://", "https://", "@import"):
        assert external not in page


# -- the HTTP handlers, called without a server ----------------------------------------------


class FakeStore:
    """Answers ``list_incidents`` as the real stores do (filters, newest first, limit)."""

    def __init__(self, incidents: list[Incident], *, down: bool = False) -> None:
        self.incidents = incidents
        self.down = down
        self.queries: list[IncidentQuery] = []

    async def list_incidents(self, query: IncidentQuery) -> list[Incident]:
        self.queries.append(query)
        if self.down:
            raise StoreUnavailable("database is away")
        found = [
            i
            for i in self.incidents
            if (query.status is None or i.status == query.status)
            and (query.severity is None or i.severity == query.severity)
            and (query.since is None or i.updated_at >= query.since)
        ]
        found.sort(key=lambda i: i.updated_at, reverse=True)
        return found[: query.limit]


def handlers(store: FakeStore) -> dict[str, Any]:
    routes = status_routes(store, ROUTING, clock=lambda: NOW)  # type: ignore[arg-type]
    return {r.path: r.handler for r in routes if isinstance(r, web.RouteDef)}


async def get(store: FakeStore, path: str) -> web.Response:
    response = await handlers(store)[path](make_mocked_request("GET", path))
    assert isinstance(response, web.Response)
    return response


async def test_queries_only_public_severities_within_the_window() -> None:
    store = FakeStore([])
    await load_public_incidents(store, ROUTING, NOW)  # type: ignore[arg-type]
    asked = {(q.status, q.severity, q.since, q.limit) for q in store.queries}
    since = NOW - timedelta(days=90)
    assert asked == {
        ("open", "SEV-0", None, MAX_PER_QUERY),
        ("resolved", "SEV-0", since, MAX_PER_QUERY),
        ("open", "SEV-1", None, MAX_PER_QUERY),
        ("resolved", "SEV-1", since, MAX_PER_QUERY),
    }


async def test_status_html_and_json_are_public_and_cacheable() -> None:
    store = FakeStore([incident(1), incident(2, "SEV-2"), incident(3, "SEV-1", "resolved")])
    page = await get(store, "/status")
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Cache-Control"] == "public, max-age=30"
    assert page.text is not None
    assert "Major outage" in page.text
    assert MARKER not in page.text

    doc = await get(store, "/status.json")
    assert doc.status == 200
    assert doc.content_type == "application/json"
    assert doc.headers["Cache-Control"] == "public, max-age=30"
    assert isinstance(doc.body, bytes)
    body = json.loads(doc.body)
    assert body["overall"] == "major_outage"
    assert [i["id"] for i in body["current"]] == [public_id("01INC0001")]
    assert [i["id"] for i in body["history"]] == [public_id("01INC0003")]


@pytest.mark.parametrize("path", ["/status", "/status.json"])
async def test_store_away_answers_503_not_500(path: str) -> None:
    response = await get(FakeStore([], down=True), path)
    assert response.status == 503
    assert response.headers["Cache-Control"] == "no-store"
    assert "Retry-After" in response.headers
    if path == "/status.json":
        assert isinstance(response.body, bytes)
        assert "error" in json.loads(response.body)
    else:
        assert response.content_type == "text/html"
        assert response.text is not None
        assert "temporarily unavailable" in response.text
