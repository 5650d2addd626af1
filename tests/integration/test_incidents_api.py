"""The incidents API over HTTP, as ``sevpipe run`` serves it: receiver + incidents routes on
one aiohttp app, a real EmbeddedLog and EmbeddedStore, and the classifier stage in between.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from incident_support import (
    T0,
    alert_json,
    append_webhook,
    drain,
    event_incident,
    incident_events,
    new_stage,
    webhook,
)
from prometheus_client import CollectorRegistry

from classifier.api import IncidentsApi
from classifier.stage import CONSUMER_GROUP, ClassifierStage
from eventlog import EmbeddedLog, Subscription
from ingest import Credentials, Receiver, ReceiverConfig, ReceiverMetrics
from runtime.relay import relay_outbox
from schemas import TOPIC_ALERTS
from sevpipe.access import OperatorToken
from sevpipe.http import build_app
from sevpipe.serve import authorizer
from store import EmbeddedStore, GroupState, IncidentWrite, OutboxEvent

TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
GK = {name: f'{{}}:{{service="{name}"}}' for name in ("checkout", "search", "billing")}


class RacingStore(EmbeddedStore):
    """Runs ``before_next_save`` once, just before the next save: a writer that got in first."""

    before_next_save: Callable[[], Awaitable[None]] | None = None

    async def save(
        self,
        groups: Sequence[GroupState],
        incidents: Sequence[IncidentWrite],
        outbox: Sequence[OutboxEvent],
    ) -> None:
        hook, self.before_next_save = self.before_next_save, None
        if hook is not None:
            await hook()
        await super().save(groups, incidents, outbox)


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    log: EmbeddedLog
    store: RacingStore
    stage: ClassifierStage
    sub: Subscription
    headers: dict[str, str]

    async def post_alerts(self, group_key: str, *alerts: dict[str, Any]) -> None:
        """POST a webhook through the receiver, then let the classifier take it."""
        body = orjson.dumps(webhook(group_key, *alerts))
        async with self.client.post(
            "/api/v1/alerts",
            data=body,
            headers={"Content-Type": "application/json", **self.headers},
        ) as resp:
            assert resp.status == 200, await resp.text()
        await drain(self.stage, self.sub)

    async def get(
        self, path: str, *, params: dict[str, str] | None = None, auth: bool = True
    ) -> tuple[int, Any]:
        headers = self.headers if auth else {}
        async with self.client.get(path, params=params, headers=headers) as resp:
            return resp.status, await resp.json()

    async def post_severity(
        self, incident_id: str, body: Any, *, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        async with self.client.post(
            f"/api/v1/incidents/{incident_id}/severity",
            data=raw,
            headers={
                "Content-Type": "application/json",
                **(self.headers if headers is None else headers),
            },
        ) as resp:
            answer = resp.status, await resp.json()
        # The API leaves relaying to the stages (the classifier relays when it is idle).
        await relay_outbox(self.store, self.log)
        return answer

    async def alerts(self, incident_id: str, **params: str) -> list[dict[str, Any]]:
        """One page (``limit`` 100 unless given) of an incident's alerts."""
        status, body = await self.get(f"/api/v1/incidents/{incident_id}/alerts", params=params)
        assert status == 200, body
        out: list[dict[str, Any]] = body["alerts"]
        return out

    async def incidents(self, **params: str) -> list[dict[str, Any]]:
        status, body = await self.get("/api/v1/incidents", params=params)
        assert status == 200, body
        out: list[dict[str, Any]] = body["incidents"]
        return out


@asynccontextmanager
async def open_api(
    data_dir: Path, creds: Credentials | None = None, operators: Sequence[OperatorToken] = ()
) -> AsyncIterator[Api]:
    creds = creds or Credentials()
    store = RacingStore(data_dir / "store.db")
    async with EmbeddedLog(data_dir / "events.db") as log, store:
        registry = CollectorRegistry()
        receiver = Receiver(ReceiverConfig(credentials=creds), log, ReceiverMetrics(registry))
        api = IncidentsApi(store, authorizer(creds, operators))
        app = build_app([*receiver.routes(), *api.routes()], log, registry, 1024 * 1024)
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            headers = BEARER if creds.bearer_token else {}
            stage = new_stage(log, store)
            sub = log.subscribe([TOPIC_ALERTS], CONSUMER_GROUP)
            yield Api(client, log, store, stage, sub, headers)
        finally:
            await client.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with open_api(tmp_path) as a:
        yield a


async def three_incidents(api: Api) -> dict[str, dict[str, Any]]:
    """checkout SEV-0 open (T0), billing SEV-3 open (T0+2m), search SEV-2 resolved (T0+3m).

    Appended to the log with their times (as ingest would at those times), so the order
    and the ``since`` boundaries are exact.
    """
    history = [
        (GK["checkout"], alert_json("c1", service="checkout", impact="outage")),
        (GK["search"], alert_json("s1", service="search", impact="error_rate")),
        (GK["billing"], alert_json("b1", service="billing", impact="minor")),
        (GK["search"], alert_json("s1", "resolved", service="search")),
    ]
    for minutes, (group_key, alert) in enumerate(history):
        await append_webhook(api.log, webhook(group_key, alert), at=T0 + timedelta(minutes=minutes))
    await drain(api.stage, api.sub)
    return {inc["key"].split('"')[1]: inc for inc in await api.incidents()}


def names(incidents: list[dict[str, Any]]) -> list[str]:
    return [inc["key"].split('"')[1] for inc in incidents]


# -- list -------------------------------------------------------------------------------------


async def test_list_is_newest_first_with_each_filter(api: Api) -> None:
    inc = await three_incidents(api)
    assert names(await api.incidents()) == ["search", "billing", "checkout"]
    assert {n: (i["status"], i["severity"]) for n, i in inc.items()} == {
        "checkout": ("open", "SEV-0"),
        "search": ("resolved", "SEV-2"),
        "billing": ("open", "SEV-3"),
    }

    assert names(await api.incidents(status="open")) == ["billing", "checkout"]
    assert names(await api.incidents(status="resolved")) == ["search"]
    assert names(await api.incidents(severity="SEV-0")) == ["checkout"]
    assert names(await api.incidents(severity="SEV-1")) == []
    assert names(await api.incidents(status="open", severity="SEV-3")) == ["billing"]
    assert names(await api.incidents(limit="2")) == ["search", "billing"]
    assert names(await api.incidents(limit="1", status="open")) == ["billing"]


async def test_since_keeps_incidents_updated_at_or_after_it_in_any_offset(api: Api) -> None:
    inc = await three_incidents(api)
    assert inc["billing"]["updated_at"] == "2026-03-01T12:02:00Z"

    billing = T0 + timedelta(minutes=2)
    for since in (
        "2026-03-01T12:02:00Z",
        "2026-03-01T14:02:00+02:00",
        "2026-03-01T07:02:00-05:00",
        "2026-03-01T12:02:00",  # no offset: UTC
        billing.isoformat(),
    ):
        assert names(await api.incidents(since=since)) == ["search", "billing"], since
    assert names(await api.incidents(since="2026-03-01T12:02:00.001Z")) == ["search"]
    assert names(await api.incidents(since="2026-03-01T11:00:00Z")) == [
        "search",
        "billing",
        "checkout",
    ]
    assert await api.incidents(since="2026-03-01T12:03:00.001Z") == []
    assert names(await api.incidents(since="2026-03-01T12:00:00Z", status="open")) == [
        "billing",
        "checkout",
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "closed"}, "status"),
        ({"status": ""}, "status"),
        ({"severity": "SEV-4"}, "severity"),
        ({"severity": "sev-0"}, "severity"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-13-01T00:00:00Z"}, "since"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"status": "open", "limit": "-1"}, "limit"),
    ],
)
async def test_a_bad_filter_is_a_400_naming_the_field(
    api: Api, params: dict[str, str], field: str
) -> None:
    status, body = await api.get("/api/v1/incidents", params=params)
    assert status == 400
    assert body["field"] == field
    assert body["error"].startswith(f"{field}:")


# -- show -------------------------------------------------------------------------------------


async def test_show_has_the_incident_and_its_timeline_in_order(api: Api) -> None:
    await api.post_alerts(GK["checkout"], alert_json("c1", service="checkout", impact="minor"))
    await api.post_alerts(GK["checkout"], alert_json("c2", service="checkout", impact="outage"))
    await api.post_alerts(
        GK["checkout"],
        alert_json("c1", "resolved", service="checkout"),
        alert_json("c2", "resolved", service="checkout"),
    )
    await api.post_alerts(GK["search"], alert_json("s1", service="search"))
    [checkout] = await api.incidents(severity="SEV-0")

    status, body = await api.get(f"/api/v1/incidents/{checkout['id']}")

    assert status == 200
    events = body.pop("events")
    alerts = body.pop("alerts")
    assert body.pop("alerts_next_cursor") is None
    assert body == checkout
    assert [(a["fingerprint"], a["status"]) for a in alerts] == [
        ("c1", "resolved"),
        ("c2", "resolved"),
    ]
    # The two resolves came in one webhook, so they are one change: the resolve.
    assert [e["type"] for e in events] == [
        "incident.opened",
        "incident.escalated",
        "incident.resolved",
    ]
    assert [e["data"]["incident"]["version"] for e in events] == [1, 2, 3]
    assert [e["data"]["alerts_changed"] for e in events] == [1, 1, 2]
    assert all("alerts" not in e["data"] for e in events)  # paged separately, never inline
    in_log = [e for e in await incident_events(api.log) if e.subject == checkout["id"]]
    assert [e["id"] for e in events] == [e.id for e in in_log]
    assert events[-1]["data"]["incident"] == checkout


async def test_an_unknown_incident_is_a_404(api: Api) -> None:
    status, body = await api.get("/api/v1/incidents/inc-nope")
    assert status == 404
    assert "inc-nope" in body["error"]
    status, body = await api.post_severity("inc-nope", {"severity": "SEV-1", "reason": "x"})
    assert status == 404
    assert "inc-nope" in body["error"]


# -- a person's severity decision -------------------------------------------------------------


async def test_post_severity_lowers_it_records_the_event_and_shows_it(api: Api) -> None:
    await api.post_alerts(GK["checkout"], alert_json("c1", service="checkout", impact="outage"))
    [inc] = await api.incidents()
    log_before = await incident_events(api.log)

    status, body = await api.post_severity(
        inc["id"], {"severity": "SEV-2", "reason": "only the staging shard"}
    )

    assert status == 200, body
    assert (body["severity"], body["severity_source"]) == ("SEV-2", "manual")
    assert body["version"] == inc["version"] + 1
    assert body["reasons"] == ["set by anonymous: only the staging shard"]

    log_after = await incident_events(api.log)
    assert log_after[: len(log_before)] == log_before
    [new] = log_after[len(log_before) :]
    assert (new.type, new.subject) == ("incident.updated", inc["id"])
    assert new.data["actor"] == "anonymous"
    assert new.data["previous_severity"] == "SEV-0"
    assert event_incident(new).model_dump(mode="json") == body
    assert await api.store.unrelayed() == []

    _, shown = await api.get(f"/api/v1/incidents/{inc['id']}")
    assert shown["events"][-1]["id"] == new.id
    assert shown["severity"] == "SEV-2"
    assert names(await api.incidents(severity="SEV-2")) == ["checkout"]

    # The lowered severity holds: a repeat of the alert is no reason to raise it again.
    await api.post_alerts(GK["checkout"], alert_json("c1", service="checkout", impact="outage"))
    assert (await api.incidents())[0]["severity"] == "SEV-2"


async def test_post_severity_raising_is_an_escalation_by_the_caller_never_the_body(
    api: Api,
) -> None:
    await api.post_alerts(GK["billing"], alert_json("b1", service="billing", impact="minor"))
    [inc] = await api.incidents()
    spoofed = {"severity": "SEV-1", "reason": "customers are calling", "actor": "carol"}
    status, body = await api.post_severity(inc["id"], spoofed)
    assert (status, body["field"]) == (400, "actor")
    status, body = await api.post_severity(
        inc["id"], {"severity": "SEV-1", "reason": "customers are calling"}
    )
    assert status == 200, body
    last = (await incident_events(api.log))[-1]
    assert last.type == "incident.escalated"
    assert last.data["actor"] == "anonymous"  # no credentials configured: loopback only
    assert body["reasons"] == ["set by anonymous: customers are calling"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"severity": "SEV-9", "reason": "x"}, "severity"),
        ({"severity": "critical", "reason": "x"}, "severity"),
        ({"reason": "x"}, "severity"),
        ({"severity": "SEV-1"}, "reason"),
        ({"severity": "SEV-1", "reason": ""}, "reason"),
        ({"severity": "SEV-1", "reason": "x", "sevrity": "SEV-0"}, "sevrity"),
        (b"{not json", "body"),
        (b"", "body"),
    ],
)
async def test_a_bad_severity_change_is_a_400_and_changes_nothing(
    api: Api, body: Any, field: str
) -> None:
    await api.post_alerts(GK["checkout"], alert_json("c1", service="checkout", impact="outage"))
    [inc] = await api.incidents()
    log_before = await incident_events(api.log)

    status, answer = await api.post_severity(inc["id"], body)

    assert status == 400
    assert answer["field"] == field
    assert answer["error"].startswith(f"{field}:")
    assert await incident_events(api.log) == log_before
    assert await api.incidents() == [inc]


async def test_a_change_racing_the_classifier_loses_neither_update(api: Api) -> None:
    await api.post_alerts(GK["billing"], alert_json("b1", service="billing", impact="minor"))
    [inc] = await api.incidents()

    async def person_first() -> None:
        status, body = await api.post_severity(
            inc["id"], {"severity": "SEV-1", "reason": "VIP customer"}
        )
        assert status == 200, body

    # The stage has loaded the group and decided; the person's change lands before its save.
    api.store.before_next_save = person_first
    await api.post_alerts(GK["billing"], alert_json("b2", service="billing", impact="minor"))

    assert api.store.before_next_save is None
    [after] = await api.incidents()
    assert (after["severity"], after["severity_source"]) == ("SEV-1", "manual")
    assert [a["fingerprint"] for a in await api.alerts(after["id"])] == ["b1", "b2"]
    events = await incident_events(api.log)
    assert [e.type for e in events] == ["incident.opened", "incident.escalated", "incident.updated"]
    assert [event_incident(e).version for e in events] == [1, 2, 3]


async def test_a_classifier_save_racing_the_change_loses_neither_update(api: Api) -> None:
    await api.post_alerts(GK["billing"], alert_json("b1", service="billing", impact="minor"))
    [inc] = await api.incidents()

    async def classifier_first() -> None:
        await api.post_alerts(GK["billing"], alert_json("b2", service="billing", impact="minor"))

    # The API has read the incident and decided; the classifier's save lands before its own.
    api.store.before_next_save = classifier_first
    status, body = await api.post_severity(
        inc["id"], {"severity": "SEV-1", "reason": "VIP customer"}
    )

    assert status == 200, body
    assert api.store.before_next_save is None
    assert [a["fingerprint"] for a in await api.alerts(body["id"])] == ["b1", "b2"]
    assert (body["severity"], body["severity_source"], body["version"]) == ("SEV-1", "manual", 3)
    assert await api.incidents() == [body]
    events = await incident_events(api.log)
    assert [e.type for e in events] == ["incident.opened", "incident.updated", "incident.escalated"]
    assert [event_incident(e).version for e in events] == [1, 2, 3]


# -- credentials ------------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_with_credentials_configured_every_route_wants_them(tmp_path: Path) -> None:
    creds = Credentials(bearer_token=TOKEN, basic_username="erin", basic_password="pw")
    async with open_api(tmp_path, creds) as api:
        await api.post_alerts(GK["checkout"], alert_json("c1", service="checkout", impact="minor"))
        [inc] = await api.incidents()
        change = {"severity": "SEV-1", "reason": "x"}
        log_before = await incident_events(api.log)

        for headers in ({}, {"Authorization": "Bearer wrong"}, basic("erin", "nope")):
            for path in ("/api/v1/incidents", f"/api/v1/incidents/{inc['id']}"):
                async with api.client.get(path, headers=headers) as resp:
                    assert resp.status == 401, (path, headers)
                    assert "error" in await resp.json()
            status, _ = await api.post_severity(inc["id"], change, headers=headers)
            assert status == 401
        assert await incident_events(api.log) == log_before

        status, body = await api.post_severity(inc["id"], change, headers=basic("erin", "pw"))
        assert status == 200, body
        assert body["reasons"] == ["set by erin: x"]
        status, body = await api.post_severity(
            inc["id"], {"severity": "SEV-2", "reason": "y"}, headers=BEARER
        )
        assert status == 200, body
        assert body["reasons"] == ["set by api: y"]
        actors = [e.data["actor"] for e in await incident_events(api.log)][len(log_before) :]
        assert actors == ["erin", "api"]


async def test_since_with_a_raw_plus_in_the_query_string(api: Api) -> None:
    """``?since=...+02:00`` typed into curl arrives with the "+" decoded as a space."""
    await three_incidents(api)
    status, body = await api.get("/api/v1/incidents?since=2026-03-01T14:02:00+02:00")
    assert status == 200, body
    assert names(body["incidents"]) == ["search", "billing"]


# -- re-fire, paging, idempotency ---------------------------------------------------------------


async def test_firing_again_with_the_same_starts_at_after_a_resolve_reopens(api: Api) -> None:
    """Alertmanager resolved the alert when its endsAt passed (Prometheus could not reach it),
    then sends it firing again with the same startsAt: the SEV-0 must page again."""
    firing = alert_json("c1", service="checkout", impact="outage")
    await api.post_alerts(GK["checkout"], firing)
    await api.post_alerts(GK["checkout"], alert_json("c1", "resolved", service="checkout"))
    [resolved] = await api.incidents()
    assert resolved["status"] == "resolved"

    async with api.client.post(
        "/api/v1/alerts",
        data=orjson.dumps(webhook(GK["checkout"], firing)),
        headers={"Content-Type": "application/json", **api.headers},
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["repeats"] == 0
    await drain(api.stage, api.sub)

    [again] = await api.incidents()
    assert (again["id"], again["status"], again["severity"]) == (resolved["id"], "open", "SEV-0")
    types = [e.type for e in await incident_events(api.log)]
    assert types == ["incident.opened", "incident.resolved", "incident.reopened"]


async def test_alerts_are_paged_with_a_cursor_and_filtered_by_status(api: Api) -> None:
    fps = [f"p{n:03d}" for n in range(25)]
    await api.post_alerts(GK["checkout"], *(alert_json(fp, service="checkout") for fp in fps))
    await api.post_alerts(
        GK["checkout"], *(alert_json(fp, "resolved", service="checkout") for fp in fps[:5])
    )
    [inc] = await api.incidents()
    assert inc["counts"] == {"alerts": 25, "firing": 20, "resolved": 5}
    assert "alerts" not in inc  # lists are summaries

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "10", **({"cursor": cursor} if cursor else {})}
        status, body = await api.get(f"/api/v1/incidents/{inc['id']}/alerts", params=params)
        assert status == 200, body
        seen += [a["fingerprint"] for a in body["alerts"]]
        pages += 1
        cursor = body["alerts_next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == (fps, 3)
    resolved = await api.alerts(inc["id"], status="resolved")
    assert [a["fingerprint"] for a in resolved] == fps[:5]
    firing = await api.alerts(inc["id"], status="firing", limit="1000")
    assert len(firing) == 20

    _, shown = await api.get(f"/api/v1/incidents/{inc['id']}")
    assert [a["fingerprint"] for a in shown["alerts"]] == fps  # the first page
    assert shown["alerts_next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "open"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"cursor": "%%%"}, "cursor"),
    ],
)
async def test_a_bad_alerts_query_is_a_400_naming_the_field(
    api: Api, params: dict[str, str], field: str
) -> None:
    await api.post_alerts(GK["checkout"], alert_json("c1", service="checkout"))
    [inc] = await api.incidents()
    status, body = await api.get(f"/api/v1/incidents/{inc['id']}/alerts", params=params)
    assert status == 400, body
    assert body["field"] == field
    status, body = await api.get("/api/v1/incidents/inc-nope/alerts")
    assert status == 404


async def test_a_severity_change_retried_with_its_idempotency_key_is_made_once(api: Api) -> None:
    await api.post_alerts(GK["checkout"], alert_json("c1", service="checkout", impact="outage"))
    [inc] = await api.incidents()
    change = {"severity": "SEV-2", "reason": "staging only"}
    key = {**api.headers, "Idempotency-Key": "req-7f3a"}

    first = await api.post_severity(inc["id"], change, headers=key)
    again = await api.post_severity(inc["id"], change, headers=key)  # the client's retry
    other = await api.post_severity(
        inc["id"], {"severity": "SEV-1", "reason": "worse"}, headers={"Idempotency-Key": "req-2"}
    )

    assert first[0] == again[0] == other[0] == 200
    assert again[1] == first[1]
    manual = [e for e in await incident_events(api.log) if e.data.get("actor")]
    assert [event_incident(e).severity for e in manual] == ["SEV-2", "SEV-1"]
    status, body = await api.post_severity(
        inc["id"], change, headers={"Idempotency-Key": "x" * 300}
    )
    assert (status, body["field"]) == (400, "Idempotency-Key")


# -- people: acknowledge, take command ---------------------------------------------------------


async def post_person(
    api: Api, incident_id: str, what: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with api.client.post(
        f"/api/v1/incidents/{incident_id}/{what}",
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    ) as resp:
        answer = resp.status, await resp.json()
    await relay_outbox(api.store, api.log)
    return answer


async def test_acknowledge_and_command_name_the_caller_never_the_body(tmp_path: Path) -> None:
    creds = Credentials(bearer_token=TOKEN, basic_username="erin", basic_password="pw")
    async with open_api(tmp_path, creds) as api:
        await api.post_alerts(GK["checkout"], alert_json("c1", service="checkout", impact="outage"))
        [inc] = await api.incidents()
        before = await incident_events(api.log)

        assert (await post_person(api, inc["id"], "acknowledge"))[0] == 401
        status, body = await post_person(
            api, inc["id"], "acknowledge", b'{"actor": "mallory"}', basic("erin", "pw")
        )
        assert (status, body["field"]) == (400, "actor")
        assert await incident_events(api.log) == before  # refused: nothing changed

        status, body = await post_person(
            api, inc["id"], "acknowledge", b'{"note": "on it"}', basic("erin", "pw")
        )
        assert status == 200, body
        assert body["acknowledged_by"] == "erin"
        assert body["acknowledged_at"] is not None
        again = await post_person(api, inc["id"], "acknowledge", b"", basic("erin", "pw"))
        assert again[1]["acknowledged_at"] == body["acknowledged_at"]  # the first one stands

        status, body = await post_person(api, inc["id"], "commander", b"", basic("erin", "pw"))
        assert (status, body["commander"]) == (200, "erin")
        unknown = await post_person(api, "inc-nope", "commander", b"", basic("erin", "pw"))
        assert unknown[0] == 404

        events = (await incident_events(api.log))[len(before) :]
    assert [(e.type, e.data["actor"]) for e in events] == [
        ("incident.acknowledged", "erin"),
        ("incident.commander", "erin"),
    ]
    assert events[-1].data["incident"]["commander"] == "erin"


# -- operators and roles ------------------------------------------------------------------------


def operator(name: str, token: str, *roles: str) -> OperatorToken:
    return OperatorToken(name, frozenset(roles), hashlib.sha256(token.encode()).digest())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_operators_hold_roles_and_the_alertmanager_credential_only_posts_alerts(
    tmp_path: Path,
) -> None:
    ops = [
        operator("vic", "v-token", "viewer"),
        operator("rita", "r-token", "responder"),
        operator("alex", "a-token", "approver"),
    ]
    async with open_api(tmp_path, Credentials(bearer_token=TOKEN), ops) as api:
        await api.post_alerts(GK["checkout"], alert_json("c1", service="checkout", impact="minor"))
        path = "/api/v1/incidents"

        async def get(headers: dict[str, str]) -> int:
            async with api.client.get(path, headers=headers) as resp:
                return resp.status

        assert await get({}) == 401
        assert await get(bearer("not-a-token")) == 401
        assert await get(BEARER) == 403  # Alertmanager's token: alerts only
        assert await get(bearer("v-token")) == 200
        async with api.client.get(path, headers=bearer("a-token")) as resp:
            [inc] = (await resp.json())["incidents"]
        change = {"severity": "SEV-1", "reason": "customers call"}
        before = await incident_events(api.log)
        for headers in (BEARER, bearer("v-token")):
            status, body = await api.post_severity(inc["id"], change, headers=headers)
            assert status == 403, body
            ack = await post_person(api, inc["id"], "acknowledge", b"", headers)
            assert ack[0] == 403
        assert await incident_events(api.log) == before  # refused: nothing changed

        status, body = await api.post_severity(inc["id"], change, headers=bearer("r-token"))
        assert status == 200, body
        spoofed = {**change, "actor": "alex"}
        status, body = await api.post_severity(inc["id"], spoofed, headers=bearer("r-token"))
        assert (status, body["field"]) == (400, "actor")
        raised = {"severity": "SEV-0", "reason": "worse"}
        status, body = await api.post_severity(inc["id"], raised, headers=bearer("a-token"))
        assert status == 200, body
        actors = [e.data["actor"] for e in await incident_events(api.log)][len(before) :]
    assert actors == ["rita", "alex"]  # an approver may do what a responder may
