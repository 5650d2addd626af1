"""The Slack card buttons: ``POST /api/v1/slack/interactions`` signed by Slack records who
acknowledged or took command (the Slack user who clicked); anything not signed right is a 401
and changes nothing; a click Slack delivers twice is recorded once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp.test_utils import TestClient, TestServer
from incident_support import (
    alert_json,
    append_webhook,
    drain,
    incident_events,
    new_stage,
    webhook,
)
from prometheus_client import CollectorRegistry

from classifier.api import IncidentsApi
from comms.slack_blocks import ACKNOWLEDGE, COMMANDER
from comms.slack_signing import expected_signature
from eventlog import EmbeddedLog
from ingest import Credentials
from runtime.relay import relay_outbox
from schemas import TOPIC_ALERTS
from sevpipe.http import build_app
from sevpipe.serve import authorizer
from sevpipe.slack_http import slack_routes
from store import EmbeddedStore

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
GK = '{}:{service="checkout"}'


@dataclass
class Slack:
    client: TestClient[Any, Any]
    log: EmbeddedLog
    store: EmbeddedStore
    incident_id: str

    async def click(
        self,
        action: str,
        *,
        user: str = "erin",
        trigger: str = "t-1",
        secret: str = SECRET,
        age: float = 0.0,
        raw: bytes | None = None,
    ) -> int:
        payload = {
            "type": "block_actions",
            "trigger_id": trigger,
            "user": {"id": "U0ERIN", "username": user},
            "actions": [{"action_id": action, "value": self.incident_id, "action_ts": "1.2"}],
        }
        body = raw if raw is not None else urlencode({"payload": orjson.dumps(payload)}).encode()
        ts = str(int(time.time() - age))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": expected_signature(secret, ts, body),
        }
        async with self.client.post("/api/v1/slack/interactions", data=body, headers=headers) as r:
            status = r.status
        await relay_outbox(self.store, self.log)
        return status

    async def people_events(self) -> list[tuple[str, str]]:
        return [
            (e.type, e.data["actor"])
            for e in await incident_events(self.log)
            if e.type in ("incident.acknowledged", "incident.commander")
        ]


@asynccontextmanager
async def slack_app(tmp_path: Path) -> AsyncIterator[Slack]:
    async with (
        EmbeddedLog(tmp_path / "events.db") as log,
        EmbeddedStore(tmp_path / "s.db") as store,
    ):
        await append_webhook(
            log, webhook(GK, alert_json("a1", impact="outage", service="checkout"))
        )
        await drain(new_stage(log, store), log.subscribe([TOPIC_ALERTS], "classifier"))
        [incident] = [e.data["incident"]["id"] for e in await incident_events(log)]
        api = IncidentsApi(store, authorizer(Credentials()))
        app = build_app([*slack_routes(api, SECRET)], log, CollectorRegistry(), 1024 * 1024)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        try:
            yield Slack(client, log, store, incident)
        finally:
            await client.close()


async def test_a_signed_click_records_the_slack_user_once(tmp_path: Path) -> None:
    async with slack_app(tmp_path) as slack:
        assert await slack.click(ACKNOWLEDGE) == 200
        assert await slack.click(ACKNOWLEDGE) == 200  # Slack's retry of the same click
        assert await slack.click(COMMANDER, trigger="t-2") == 200
        assert await slack.people_events() == [
            ("incident.acknowledged", "slack:erin"),
            ("incident.commander", "slack:erin"),
        ]
        incident = await slack.store.get_incident(slack.incident_id)
    assert incident is not None
    assert (incident.acknowledged_by, incident.commander) == ("slack:erin", "slack:erin")


async def test_an_unsigned_forged_or_stale_request_is_a_401_and_changes_nothing(
    tmp_path: Path,
) -> None:
    async with slack_app(tmp_path) as slack:
        assert await slack.click(ACKNOWLEDGE, secret="not-the-secret") == 401
        assert await slack.click(ACKNOWLEDGE, age=301) == 401  # beyond 5 minutes
        async with slack.client.post(
            "/api/v1/slack/interactions", data=b"payload=%7B%7D"
        ) as resp:  # no signature headers at all
            assert resp.status == 401
        assert await slack.click(ACKNOWLEDGE, raw=b"not a form") == 400  # signed, but garbage
        assert await slack.people_events() == []
