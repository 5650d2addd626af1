"""An alert Alertmanager resolved because its endsAt passed (Prometheus could not reach it),
then sent firing again with the same startsAt, reopens its incident: through ``sevpipe run``
on both backend sets, as Alertmanager sends it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from .backends import Backend
from .harness import Launcher, Server, group_webhook, incidents_with_alerts, replay

pytestmark = pytest.mark.e2e

KEY = '{}:{service="checkout"}'
DEADLINE = 30.0


def alert(status: str, starts: datetime, ends: datetime | None) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "CheckoutDown", "service": "checkout", "impact": "outage"},
        "annotations": {"summary": "checkout is down"},
        "startsAt": starts.isoformat().replace("+00:00", "Z"),
        "endsAt": ends.isoformat().replace("+00:00", "Z") if ends else "0001-01-01T00:00:00Z",
        "fingerprint": "c0ffee",
    }


async def post(session: aiohttp.ClientSession, server: Server, body: dict[str, Any]) -> int:
    headers = {"Content-Type": "application/json"}
    async with session.post(server.alerts_url, data=orjson.dumps(body), headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        repeats: int = (await resp.json())["repeats"]
        return repeats


async def until_status(session: aiohttp.ClientSession, server: Server, status: str) -> Any:
    async with asyncio.timeout(DEADLINE):
        while True:
            found = await incidents_with_alerts(session, server.base_url)
            if found and found[0]["status"] == status:
                return found
            await asyncio.sleep(0.1)


async def test_firing_again_with_the_same_starts_at_reopens_the_incident(
    backend: Backend, launcher: Launcher, data_dir: Path
) -> None:
    server = await asyncio.to_thread(launcher.start, data_dir, env=backend.env)
    starts = datetime.now(UTC) - timedelta(minutes=30)
    resolved_at = datetime.now(UTC) - timedelta(seconds=5)  # resolve_timeout ran out
    firing = group_webhook(KEY, "checkout", "CheckoutDown", [alert("firing", starts, None)])
    resolved = group_webhook(
        KEY, "checkout", "CheckoutDown", [alert("resolved", starts, resolved_at)], status="resolved"
    )
    async with aiohttp.ClientSession() as session:
        assert await post(session, server, firing) == 0
        [opened] = await until_status(session, server, "open")
        assert await post(session, server, resolved) == 0
        await until_status(session, server, "resolved")
        assert await post(session, server, firing) == 0  # the same alert, firing again
        [again] = await until_status(session, server, "open")
        assert await post(session, server, firing) == 1  # and now that is a repeat

    assert (again["id"], again["severity"]) == (opened["id"], "SEV-0")
    assert again["counts"] == {"alerts": 1, "firing": 1, "resolved": 0}
    events = await asyncio.to_thread(
        replay, data_dir, "--topic", "sevpipe.incidents", env=backend.env
    )
    assert [e["type"] for e in events] == [
        "incident.opened",
        "incident.resolved",
        "incident.reopened",
    ]
    assert server.stop() == 0, server.stderr()
