"""Communications as a user meets them in the embedded default: ``sevpipe run`` with nothing
configured tells the console outbox what it would have sent, once per route, and neither a
repeated webhook nor a restart sends anything again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from .harness import Launcher, Server, one_alert_webhook, replay, sevpipe

pytestmark = pytest.mark.e2e

GK = '{}:{service="checkout"}'
SEV0_ROUTES = ["incident_channel", "leadership_email", "org_email", "status_page", "team_email"]
DEADLINE = 30.0


def body(status: str = "firing") -> bytes:
    return one_alert_webhook(
        GK,
        {"alertname": "CheckoutDown", "service": "checkout", "impact": "outage"},
        "c0ffee",
        summary="checkout is down <!channel>",
        starts_at="2026-11-29T21:00:00Z",
        status=status,
        ends_at="2026-11-29T21:30:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
    )


def outbox(server: Server) -> list[dict[str, Any]]:
    path = server.data_dir / "outbox" / "notifications.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


async def post(session: aiohttp.ClientSession, server: Server, raw: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    async with session.post(server.alerts_url, data=raw, headers=headers) as resp:
        assert resp.status == 200, await resp.text()


async def until_lines(server: Server, n: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(DEADLINE):
        while len(lines := outbox(server)) < n:  # noqa: ASYNC110 - another process writes it
            await asyncio.sleep(0.05)
    return lines


async def test_run_tells_the_outbox_once_per_route_and_a_restart_sends_nothing_again(
    launcher: Launcher, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = await asyncio.to_thread(launcher.start, data)
    async with aiohttp.ClientSession() as session:
        await post(session, server, body())
        opened = await until_lines(server, 5)
        await post(session, server, body())  # Alertmanager's repeat: nothing new to say
        await post(session, server, body("resolved"))
        lines = await until_lines(server, 10)
    assert await asyncio.to_thread(server.stop) == 0

    again = await asyncio.to_thread(launcher.start, data)  # the same data dir
    await asyncio.sleep(1.0)  # what it would resend, it would send at once
    assert await asyncio.to_thread(again.stop) == 0
    after_restart = outbox(again)

    assert sorted(line["route"] for line in opened) == SEV0_ROUTES
    assert [line["kind"] for line in lines] == ["opened"] * 5 + ["resolved"] * 5
    assert after_restart == lines
    assert len({line["effect_id"] for line in lines}) == 10
    public = [line for line in lines if line["public"]]
    assert public
    assert all("<!channel>" not in line["text"] + line["subject"] for line in public)
    events = replay(data, "--topic", "sevpipe.notifications")
    assert sorted(e["type"] for e in events) == ["notification.sent"] * 10
    assert len({e["id"] for e in events}) == 10


def test_check_config_reads_routing_files_and_the_comms_settings(tmp_path: Path) -> None:
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "severities:\n  SEV-0: [incident_channel, status_page]\n  SEV-1: [incident_channel]\n"
        "  SEV-2: [team_chanel]\n  SEV-3: []\ncadence:\n  channel_every: 10m\n"
    )
    done = sevpipe("check-config", str(routing))
    assert done.returncode == 2
    assert f"{routing}:4: severities.SEV-2.0:" in done.stderr
    routing.write_text(routing.read_text().replace("team_chanel", "team_channel"))
    done = sevpipe("check-config", str(routing))
    assert (done.returncode, done.stdout) == (0, f"{routing}: valid routing\n")

    settings = tmp_path / "sevpipe.yaml"
    settings.write_text(
        f"routing_file: {routing}\nslack:\n  token_file: {tmp_path / 'missing-token'}\n"
    )
    done = sevpipe("check-config", str(settings))
    assert done.returncode == 2
    assert "missing-token" in done.stderr
    (tmp_path / "missing-token").write_text("xoxb-1\n")
    done = sevpipe("check-config", str(settings))
    assert done.returncode == 0, done.stderr
    assert "channels: console, slack" in done.stdout
