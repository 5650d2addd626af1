"""The built-in status page in a real browser: Debian's chromium, driven by Playwright, reads
/status from ``sevpipe run`` while a SEV-0 on the Checkout component opens and resolves.

Chromium comes from ``scripts/test-services`` (apt ``chromium``), Playwright from the ``dev``
extras; Playwright's own browser download is not used.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from playwright.async_api import Page, async_playwright

from .harness import Launcher, Server, group_webhook

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
KEY = '{}:{service="checkout"}'
ALERT_TEXT = "ZZ-checkout-is-down-ZZ"
DEADLINE = 30.0
ROUTING = """\
components:
  checkout: Checkout
  search: Search
"""


def alert(status: str, starts: datetime, ends: datetime | None) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "CheckoutDown", "service": "checkout", "impact": "outage"},
        "annotations": {"summary": ALERT_TEXT},
        "startsAt": starts.isoformat().replace("+00:00", "Z"),
        "endsAt": ends.isoformat().replace("+00:00", "Z") if ends else "0001-01-01T00:00:00Z",
        "fingerprint": "5eb0a9e",
    }


async def post(session: aiohttp.ClientSession, server: Server, body: dict[str, Any]) -> None:
    headers = {"Content-Type": "application/json"}
    async with session.post(server.alerts_url, data=orjson.dumps(body), headers=headers) as resp:
        assert resp.status == 200, await resp.text()


async def until_status_json(
    session: aiohttp.ClientSession, server: Server, done: Callable[[dict[str, Any]], bool]
) -> None:
    """The classifier runs behind the webhook's 200: wait until the page's data shows it."""
    async with asyncio.timeout(DEADLINE):
        while True:
            async with session.get(f"{server.base_url}/status.json") as resp:
                assert resp.status != 404, "/status.json is not served: routes not wired"
                assert resp.status == 200, await resp.text()
                if done(await resp.json()):
                    return
            await asyncio.sleep(0.1)


async def component_state(page: Page, name: str) -> str:
    row = page.locator("#components tbody tr", has_text=name)
    return (await row.locator("td").nth(1).inner_text()).strip()


def keep(shot: Path) -> None:
    artefacts = os.environ.get("SEVPIPE_TEST_ARTEFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, Path(artefacts) / shot.name)


async def test_status_page_shows_an_outage_then_its_resolution(
    launcher: Launcher, data_dir: Path, tmp_path: Path
) -> None:
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING, encoding="utf-8")
    server = await asyncio.to_thread(
        launcher.start, data_dir, env={"SEVPIPE_ROUTING_FILE": str(routing)}
    )
    starts = datetime.now(UTC) - timedelta(minutes=10)
    firing = group_webhook(KEY, "checkout", "CheckoutDown", [alert("firing", starts, None)])
    resolved = group_webhook(
        KEY,
        "checkout",
        "CheckoutDown",
        [alert("resolved", starts, datetime.now(UTC))],
        status="resolved",
    )
    status_url = f"{server.base_url}/status"
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        async_playwright() as p,
    ):
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await post(session, server, firing)
            await until_status_json(session, server, lambda s: len(s["current"]) == 1)

            answer = await page.goto(status_url)
            assert answer is not None
            assert answer.status == 200
            assert (await page.inner_text("#overall")).strip() == "Major outage"
            assert await component_state(page, "Checkout") == "Major outage"
            assert await component_state(page, "Search") == "Operational"
            current = await page.inner_text("#current")
            assert "Investigating: a major outage affecting Checkout" in current
            assert "No incidents in the past 90 days." in await page.inner_text("#history")
            opened_shot = tmp_path / "status-open.png"
            await page.screenshot(path=str(opened_shot), full_page=True)

            await post(session, server, resolved)
            await until_status_json(session, server, lambda s: len(s["history"]) == 1)

            await page.reload()
            assert (await page.inner_text("#overall")).strip() == "All systems operational"
            assert await component_state(page, "Checkout") == "Operational"
            assert "No current incidents." in await page.inner_text("#current")
            history = await page.inner_text("#history")
            assert "Resolved: a major outage affecting Checkout" in history
            body = await page.inner_text("body")
            for alert_text in (ALERT_TEXT, "CheckoutDown", 'service="checkout"'):
                assert alert_text not in body
            shot = tmp_path / "status.png"
            await page.screenshot(path=str(shot), full_page=True)
        finally:
            await browser.close()

    for png in (opened_shot, shot):
        data = png.read_bytes()
        assert len(data) > 8
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        keep(png)
    assert await asyncio.to_thread(server.stop) == 0, server.stderr()
