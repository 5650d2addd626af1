"""The actions API over HTTP on a real embedded store: roles (the Alertmanager credential
cannot approve, a viewer only reads, the actor is never the body's), listing and filters, and
a decision as a compare-and-set that leaves exactly one event in the outbox. The CLI
(``sevpipe actions list``, ``approve``, ``deny``) is run against the same server."""

from __future__ import annotations

import argparse
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from test_actions_book import action, incident_id
from test_incidents_api import BEARER, TOKEN, bearer, operator

from eventlog import EmbeddedLog
from ingest import Credentials
from sevpipe import actions_cli
from sevpipe.actions_http import ActionsApi
from sevpipe.cli import build_parser
from sevpipe.http import build_app
from sevpipe.serve import authorizer
from store import EmbeddedStore

OPERATORS = [
    operator("vic", "v-token", "viewer"),
    operator("rita", "r-token", "responder"),
    operator("alex", "a-token", "approver"),
    operator("ada", "d-token", "approver"),
]
APPROVER = bearer("a-token")


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    store: EmbeddedStore

    async def call(
        self, method: str, path: str, headers: dict[str, str], body: Any = None, **params: str
    ) -> tuple[int, Any, Any]:
        data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
        async with self.client.request(
            method, path, data=data, headers=headers, params=params
        ) as resp:
            return resp.status, await resp.json(), resp.headers

    async def outbox(self, incident: str) -> list[dict[str, Any]]:
        """Every action event of ``incident`` waiting for the relayer, raw."""
        return [
            {"type": e.envelope.type, **e.envelope.data}
            for e in await self.store.unrelayed(10_000)
            if e.envelope.subject == incident
        ]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with EmbeddedStore(tmp_path / "store.db") as store, EmbeddedLog(tmp_path / "l.db") as log:
        authorize = authorizer(Credentials(bearer_token=TOKEN), OPERATORS)
        app = build_app(ActionsApi(store, authorize).routes(), log, CollectorRegistry(), 1 << 20)
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            yield Api(client, store)
        finally:
            await client.close()


async def waiting(api: Api, **more: Any) -> tuple[str, str]:
    inc = incident_id()
    stored = await api.store.record_action(
        action(inc, expires_at=datetime.now(UTC) + timedelta(minutes=30), **more)
    )
    return inc, stored.action_id


async def test_who_may_read_and_who_may_approve(api: Api) -> None:
    inc, action_id = await waiting(api)
    path = f"/api/v1/actions/{action_id}"
    assert (await api.call("GET", path, {}))[0] == 401
    assert (await api.call("GET", path, bearer("nope")))[0] == 401
    assert (await api.call("GET", path, BEARER))[0] == 403  # Alertmanager's: alerts only
    status, body, _ = await api.call("GET", path, bearer("v-token"))
    assert (status, body["state"]) == (200, "awaiting_approval")

    for who in (BEARER, bearer("v-token"), bearer("r-token")):
        status, body, _ = await api.call("POST", f"{path}/approve", who, {"reason": "go"})
        assert status == 403, body
        assert "approver" in body["error"] or "only post alerts" in body["error"]
    status, body, _ = await api.call("POST", f"{path}/approve", APPROVER, {"actor": "ada"})
    assert (status, body["field"]) == (400, "actor")  # the actor is the caller, never the body
    assert await api.outbox(inc) == []  # refused: nothing written

    status, body, _ = await api.call("POST", f"{path}/approve", APPROVER, {"reason": "go"})
    assert status == 200, body
    assert (body["state"], body["actor"], body["reason"]) == ("approved", "alex", "go")
    [event] = await api.outbox(inc)
    assert (event["type"], event["actor"], event["action_id"]) == (
        "action.approved",
        "alex",
        action_id,
    )


async def test_a_decision_is_made_once(api: Api) -> None:
    inc, action_id = await waiting(api)
    path = f"/api/v1/actions/{action_id}"
    status, body, _ = await api.call("POST", f"{path}/deny", APPROVER, b"")
    assert (status, body["field"]) == (400, "reason")  # a denial says why
    status, body, _ = await api.call("POST", f"{path}/deny", APPROVER, {"reason": "not now"})
    assert (status, body["state"]) == (200, "denied")
    status, body, headers = await api.call("POST", f"{path}/deny", APPROVER, {"reason": "not now"})
    assert (status, headers.get("Idempotent-Replayed")) == (200, "true")  # a retry
    status, body, _ = await api.call("POST", f"{path}/approve", bearer("d-token"))
    assert status == 409
    assert body["error"] == f"action {action_id} is denied by alex"
    assert body["action"]["state"] == "denied"
    assert [e["type"] for e in await api.outbox(inc)] == ["action.denied"]
    assert (await api.call("POST", "/api/v1/actions/nope/approve", APPROVER))[0] == 404


async def test_an_expired_approval_cannot_be_given(api: Api) -> None:
    inc, action_id = await waiting(api)
    await api.store.record_action(action(inc, expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    status, body, _ = await api.call("POST", f"/api/v1/actions/{action_id}/approve", APPROVER)
    assert status == 409
    assert "nobody approved it in time" in body["error"]
    assert await api.outbox(inc) == []


async def test_list_filters_and_refuses_a_bad_query(api: Api) -> None:
    inc, first = await waiting(api)
    await api.store.record_action(action(inc, "restart", "succeeded"))
    await waiting(api)  # another incident's: not listed
    viewer = bearer("v-token")
    status, body, _ = await api.call("GET", "/api/v1/actions", viewer, incident=inc)
    assert status == 200
    assert sorted(a["step"] for a in body["actions"]) == ["restart", "scale"]
    status, body, _ = await api.call(
        "GET", "/api/v1/actions", viewer, incident=inc, status="awaiting_approval"
    )
    assert [a["action_id"] for a in body["actions"]] == [first]
    for bad, field in (({"status": "done"}, "status"), ({"limit": "0"}, "limit")):
        status, body, _ = await api.call("GET", "/api/v1/actions", viewer, **bad)
        assert (status, body["field"]) == (400, field)
    assert (await api.call("GET", "/api/v1/actions/nope", viewer))[0] == 404


async def test_a_store_that_is_away_is_a_503(api: Api) -> None:
    _, action_id = await waiting(api)
    await api.store.close()
    status, body, _ = await api.call("POST", f"/api/v1/actions/{action_id}/approve", APPROVER)
    assert status == 503, body
    assert (await api.call("GET", "/api/v1/actions", APPROVER))[0] == 503


async def run_cli(api: Api, *argv: str) -> tuple[int, str, str]:
    args: argparse.Namespace = build_parser().parse_args(
        [*argv, "--url", str(api.client.make_url(""))]
    )
    out, err = io.StringIO(), io.StringIO()
    code = await actions_cli.run(args, out, err)
    return code, out.getvalue(), err.getvalue()


async def test_the_cli_lists_approves_and_denies_as_the_token_s_operator(
    api: Api, tmp_path: Path
) -> None:
    inc, action_id = await waiting(api)
    token_file = tmp_path / "token"
    token_file.write_text("a-token\n")
    code, out, err = await run_cli(api, "actions", "list", "--incident", inc, "--token", "v-token")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split()[:3] == ["ID", "STATE", "INCIDENT"]
    assert row.split()[:3] == [action_id, "awaiting_approval", inc]

    code, out, err = await run_cli(api, "approve", action_id, "--token", "v-token")
    assert (code, err) == (1, "sevpipe: 403: vic does not hold the approver role\n")
    code, out, err = await run_cli(
        api, "approve", action_id, "--reason", "origin is down", "--token-file", str(token_file)
    )
    assert (code, out) == (0, f"{action_id} approved by alex\n")
    code, out, err = await run_cli(
        api, "deny", action_id, "--reason", "too late", "--token", "d-token"
    )
    assert code == 1
    assert err == f"sevpipe: 409: action {action_id} is approved by alex\n"
    code, out, err = await run_cli(api, "actions", "show", action_id, "--token", "v-token")
    assert code == 0
    assert orjson.loads(out)["reason"] == "origin is down"
    assert [e["type"] for e in await api.outbox(inc)] == ["action.approved"]
