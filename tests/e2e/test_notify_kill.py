"""kill -9 of ``sevpipe notify`` in the middle of a Slack post, on Kafka + PostgreSQL: Slack
took the message, the process died before it heard so. The restarted process finds the post
(its check reads the channel's history) and does not post it again; every message once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from slack_server import TOKEN, FakeSlack

from .backends import Backend, backend_named
from .harness import Launcher, one_alert_webhook, replay

pytestmark = pytest.mark.e2e

DEADLINE = 90.0  # a restarted consumer may wait out the killed one's Kafka session
GK = '{}:{service="checkout"}'


@pytest.fixture
def production(request: pytest.FixtureRequest) -> Any:
    with backend_named("production", request) as backend:
        yield backend


def sev1() -> bytes:
    return one_alert_webhook(
        GK,
        {"alertname": "CheckoutSlow", "service": "checkout", "impact": "cdn_failure"},
        "feed01",
        summary="checkout assets are not served",
        starts_at="2026-11-29T21:00:00Z",
    )


async def notifications(data: Path, backend: Backend) -> list[dict[str, Any]]:
    return await asyncio.to_thread(
        replay, data, "--topic", "sevpipe.notifications", env=backend.env
    )


async def test_a_notify_killed_mid_post_is_restarted_and_the_post_is_not_repeated(
    production: Backend, launcher: Launcher, tmp_path: Path
) -> None:
    slack = FakeSlack()
    await slack.start()
    try:
        config = tmp_path / "sevpipe.yaml"
        settings = {
            "slack": {
                "api_url": slack.api_url,
                "token": TOKEN,
                "responders": ["U0RESPOND"],
                "per_channel_interval": 0,
                "timeout": 120,
            },
            "notify_lease": 2,
        }
        config.write_text(yaml.safe_dump(settings))
        args = ("--config", str(config))
        env = production.env
        # Slack takes the post, then never answers: the process is killed while it waits.
        slack.fail("chat.postMessage", land=True, delay=120)
        start = launcher.start
        ingest = await asyncio.to_thread(start, tmp_path / "i", *args, env=env, command="ingest")
        await asyncio.to_thread(start, tmp_path / "c", *args, env=env, command="classify")
        notify = await asyncio.to_thread(start, tmp_path / "n", *args, env=env, command="notify")
        async with aiohttp.ClientSession() as session:
            headers = {"Content-Type": "application/json"}
            async with session.post(ingest.alerts_url, data=sev1(), headers=headers) as resp:
                assert resp.status == 200, await resp.text()
        async with asyncio.timeout(DEADLINE):
            while not slack.calls("chat.postMessage"):  # noqa: ASYNC110 - the server's own list
                await asyncio.sleep(0.05)
        notify.kill()

        await asyncio.to_thread(start, tmp_path / "n", *args, env=env, command="notify")
        async with asyncio.timeout(DEADLINE):
            while True:
                events = await notifications(tmp_path / "n", production)
                routes = {e["data"]["route"] for e in events}
                if {"incident_channel", "leadership_email", "status_page"} <= routes:
                    break
                await asyncio.sleep(0.5)
    finally:
        await slack.close()

    [channel] = slack.channels
    assert channel.name.startswith("incident-")
    assert len(slack.calls("chat.postMessage")) == 1  # the restarted process did not post
    assert len(slack.roots(channel.id)) == 1
    assert len(slack.calls("conversations.create")) == 1
    by_route = {e["data"]["route"]: e for e in events}
    sent = by_route["incident_channel"]
    assert sent["type"] == "notification.sent"
    assert sent["data"]["source"] == "checked"
    assert sent["data"]["outcome"]["channel"] == channel.id
    assert len([e for e in events if e["data"]["route"] == "incident_channel"]) == 1
