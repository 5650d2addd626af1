"""probe.http, probe.cdn_assets and probe.dns against a real HTTP server served here
(aiohttp on a free port) and the machine's own resolver. Each plan is what the server
received (method and request line); what the probed service does wrong (a 503, a hang, a
refused connection, a name that does not resolve) is the probe's result, and the action
succeeds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_support import free_port
from services import unique_name

from actions.catalogue import ActionSpec, Catalogue
from actions.inventory import Inventory
from actions.probes import CONCURRENCY, MAX_BODY, ProbeError, ProbeParams, probes_catalogue
from runtime.effects import perform
from schemas.actions import ApiRequest, Target
from store.effects_embedded import EmbeddedEffectsLedger

BODY = b"hello from origin\n"
ASSET = b"x" * 1000
SLOW = 3.0


@dataclass
class Origin:
    """The probed site: what it received, and how many asset requests were in flight."""

    url: str = ""
    seen: list[tuple[str, str]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path))
        path = request.path
        if path == "/slow":
            await asyncio.sleep(SLOW)
        elif path.startswith("/static/busy-"):
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await asyncio.sleep(0.2)
            finally:
                self.in_flight -= 1
            return web.Response(body=ASSET, headers={"X-Cache": "Hit from cloudfront"})
        elif path == "/moved":
            raise web.HTTPMovedPermanently(location="/healthz")
        status, body, headers = PAGES.get(path, (404, b"no such asset", {}))
        return web.Response(status=status, body=body, headers=headers)


PAGES: dict[str, tuple[int, bytes, dict[str, str]]] = {
    "/healthz": (200, BODY, {"Content-Type": "text/plain"}),
    "/down": (503, b"maintenance", {"Retry-After": "30"}),
    "/slow": (200, b"late", {}),
    "/big": (200, b"b" * (MAX_BODY + 4096), {}),
    "/static/app.js": (
        200,
        ASSET,
        {
            "Cache-Control": "public, max-age=31536000, immutable",
            "ETag": '"app-v42"',
            "Age": "120",
            "X-Cache": "Hit from cloudfront",
        },
    ),
    "/static/app.css": (200, ASSET, {"X-Cache": "Miss from cloudfront"}),
    "/static/logo.png": (200, ASSET, {"Age": "0"}),
}


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    found = Origin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", found.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    found.url = f"http://127.0.0.1:{port}"
    try:
        yield found
    finally:
        await runner.cleanup()


def catalogue(probes: dict[str, Any]) -> Catalogue:
    return probes_catalogue(Inventory.model_validate({"probes": probes}))


async def run(spec: ActionSpec[Any], target: Target) -> tuple[tuple[ApiRequest, ...], Any]:
    plan = await spec.plan(target, ProbeParams())
    return plan, await spec.execute(target, ProbeParams(), 1)


def http(name: str) -> Target:
    return Target(kind="HttpProbe", name=name)


def received(origin: Origin) -> list[ApiRequest]:
    return [ApiRequest(method=m, path=origin.url + p) for m, p in origin.seen]


def test_the_probes_are_registered_read_only_beside_prometheus() -> None:
    cat = catalogue({})
    assert cat.names() == [
        "probe.cdn_assets",
        "probe.dns",
        "probe.http",
        "prometheus.query",
        "prometheus.query_range",
    ]
    kinds = {n: cat.get(n).target_kind for n in cat.names()}
    assert kinds == {
        "probe.cdn_assets": "CdnAssets",
        "probe.dns": "DnsNames",
        "probe.http": "HttpProbe",
        "prometheus.query": "Prometheus",
        "prometheus.query_range": "Prometheus",
    }
    assert {cat.get(n).risk for n in cat.names()} == {"read_only"}
    # Registered into a catalogue that has other actions already, and only once.
    with pytest.raises(ValueError, match="registered twice"):
        probes_catalogue(Inventory(), cat)


async def test_http_probe_reports_status_latency_headers_and_size(origin: Origin) -> None:
    cat = catalogue({"http": {"origin-health": {"url": f"{origin.url}/healthz?deep=1"}}})
    plan, outcome = await run(cat.get("probe.http"), http("origin-health"))

    assert plan == (ApiRequest(method="GET", path=f"{origin.url}/healthz?deep=1"),)
    assert received(origin) == list(plan)
    assert outcome["ok"] is True
    assert outcome["expected"] is True
    assert outcome["status"] == 200
    assert outcome["expect_status"] == [200]
    assert outcome["method"] == "GET"
    assert outcome["probe"] == "origin-health"
    assert outcome["body_bytes"] == len(BODY)
    assert outcome["body_truncated"] is False
    assert outcome["headers"]["Content-Type"].startswith("text/plain")
    assert outcome["headers"]["Content-Length"] == str(len(BODY))
    assert 0 < outcome["latency_ms"] <= outcome["total_ms"] < 5000
    assert "error" not in outcome


async def test_http_probe_unexpected_status_is_a_result(origin: Origin) -> None:
    cat = catalogue(
        {
            "http": {
                "down": {"url": f"{origin.url}/down"},
                "moved": {"url": f"{origin.url}/moved", "expect_status": [200, 204]},
                "gone-ok": {"url": f"{origin.url}/gone", "method": "HEAD", "expect_status": [404]},
            }
        }
    )
    spec = cat.get("probe.http")
    _, down = await run(spec, http("down"))
    assert (down["ok"], down["expected"], down["status"]) == (False, False, 503)
    assert down["headers"]["Retry-After"] == "30"
    assert down["body_bytes"] == len("maintenance")

    _, moved = await run(spec, http("moved"))  # not followed: the redirect is the answer
    assert (moved["ok"], moved["status"]) == (False, 301)
    assert moved["headers"]["Location"] == "/healthz"

    plan, gone = await run(spec, http("gone-ok"))
    assert plan == (ApiRequest(method="HEAD", path=f"{origin.url}/gone"),)
    assert (gone["ok"], gone["status"], gone["body_bytes"]) == (True, 404, 0)
    assert origin.seen == [("GET", "/down"), ("GET", "/moved"), ("HEAD", "/gone")]


async def test_http_probe_timeout_and_refused_connection_are_results(origin: Origin) -> None:
    port = free_port()
    nowhere = f"{unique_name('sevpipe-probe')}.invalid"
    cat = catalogue(
        {
            "http": {
                "slow": {"url": f"{origin.url}/slow", "timeout": "300ms"},
                "closed": {"url": f"http://127.0.0.1:{port}/healthz"},
                "nowhere": {"url": f"http://{nowhere}/healthz"},
            }
        }
    )
    spec = cat.get("probe.http")
    started = time.monotonic()
    _, slow = await run(spec, http("slow"))
    assert time.monotonic() - started < SLOW
    assert slow["ok"] is False
    assert slow["status"] is None
    assert slow["error"] == "timed out after 0.3s"
    assert 250 <= slow["latency_ms"] < SLOW * 1000

    _, refused = await run(spec, http("closed"))
    assert refused["ok"] is False
    assert refused["status"] is None
    assert refused["error"] == f"cannot connect to 127.0.0.1:{port}: Connection refused"

    _, unresolved = await run(spec, http("nowhere"))
    assert unresolved["ok"] is False
    assert unresolved["status"] is None
    assert unresolved["error"].startswith(f"cannot connect to {nowhere}:80: ")


async def test_http_probe_reads_at_most_max_body(origin: Origin) -> None:
    cat = catalogue({"http": {"big": {"url": f"{origin.url}/big"}}})
    _, big = await run(cat.get("probe.http"), http("big"))
    assert big["ok"] is True
    assert (big["body_bytes"], big["body_truncated"]) == (MAX_BODY, True)
    assert big["headers"]["Content-Length"] == str(MAX_BODY + 4096)


async def test_cdn_probe_heads_each_asset_with_its_cache_headers(origin: Origin) -> None:
    paths = ["/static/app.js", "/static/app.css", "/static/logo.png", "/static/gone.js"]
    urls = [origin.url + p for p in paths]
    cat = catalogue({"cdn": {"origin-assets": {"urls": urls}}})
    target = Target(kind="CdnAssets", name="origin-assets")
    plan, outcome = await run(cat.get("probe.cdn_assets"), target)

    assert plan == tuple(ApiRequest(method="HEAD", path=u) for u in urls)
    assert sorted(received(origin), key=lambda r: r.path) == sorted(plan, key=lambda r: r.path)
    assert (outcome["total"], outcome["ok"], outcome["failed"]) == (4, 3, 1)
    assert outcome["all_ok"] is False
    assert outcome["cache_hits"] == 1
    app_js, app_css, logo, gone = outcome["assets"]
    assert app_js["url"] == urls[0]
    assert app_js["ok"] is True
    assert app_js["status"] == 200
    assert app_js["latency_ms"] > 0
    assert app_js["cache"] == {
        "Age": "120",
        "X-Cache": "Hit from cloudfront",
        "Cache-Control": "public, max-age=31536000, immutable",
        "ETag": '"app-v42"',
        "Content-Length": str(len(ASSET)),
    }
    assert app_js["cache_hit"] is True
    assert app_css["cache_hit"] is False
    assert logo["cache_hit"] is False  # Age 0: fetched from the origin just now
    assert (gone["ok"], gone["status"], gone["cache_hit"]) == (False, 404, None)


async def test_cdn_probe_runs_concurrently_but_bounded(origin: Origin) -> None:
    urls = [f"{origin.url}/static/busy-{i}.js" for i in range(3 * CONCURRENCY)]
    slow = f"{origin.url}/slow"
    closed = f"http://127.0.0.1:{free_port()}/static/app.js"
    cat = catalogue({"cdn": {"many": {"urls": [*urls, slow, closed], "timeout": "1s"}}})
    started = time.monotonic()
    _, outcome = await run(cat.get("probe.cdn_assets"), Target(kind="CdnAssets", name="many"))
    elapsed = time.monotonic() - started
    assert origin.most_in_flight == CONCURRENCY
    assert elapsed < 0.2 * len(urls) / 2  # far from one at a time
    assert outcome["total"] == len(urls) + 2
    assert outcome["ok"] == outcome["cache_hits"] == len(urls)
    timed_out, refused = outcome["assets"][-2:]
    assert (timed_out["ok"], timed_out["status"], timed_out["error"]) == (
        False,
        None,
        "timed out after 1s",
    )
    assert refused["error"].endswith("Connection refused")
    assert refused["cache"] == {}


async def test_dns_probe_resolves_each_name_or_says_why_not() -> None:
    missing = f"{unique_name('sevpipe-probe')}.invalid"
    cat = catalogue({"dns": {"origin": {"names": ["localhost", missing], "timeout": "5s"}}})
    target = Target(kind="DnsNames", name="origin")
    plan, outcome = await run(cat.get("probe.dns"), target)

    assert plan == (
        ApiRequest(method="RESOLVE", path="localhost"),
        ApiRequest(method="RESOLVE", path=missing),
    )
    assert (outcome["total"], outcome["resolved"], outcome["failed"]) == (2, 1, 1)
    assert outcome["all_ok"] is False
    local, nowhere = outcome["names"]
    assert local["name"] == "localhost"
    assert local["ok"] is True
    assert "127.0.0.1" in local["a"]
    assert all(":" in a for a in local["aaaa"])
    assert all("." in a for a in local["a"])
    assert nowhere["name"] == missing
    assert nowhere["ok"] is False
    assert nowhere["error"]
    assert "a" not in nowhere


async def test_a_probe_not_in_the_inventory_fails_not_retriable(origin: Origin) -> None:
    cat = catalogue({"http": {"origin-health": {"url": f"{origin.url}/healthz"}}})
    for name, target in (
        ("probe.http", http("elsewhere")),
        ("probe.cdn_assets", Target(kind="CdnAssets", name="origin-health")),
        ("probe.dns", Target(kind="DnsNames", name="origin-health")),
    ):
        spec = cat.get(name)
        with pytest.raises(ProbeError, match="not in the inventory") as caught:
            await spec.plan(target, ProbeParams())
        assert caught.value.retriable is False
        with pytest.raises(ProbeError):
            await spec.execute(target, ProbeParams(), 1)
    assert origin.seen == []


async def test_a_failing_probe_is_a_succeeded_action_through_the_ledger(
    origin: Origin, tmp_path: Path
) -> None:
    """As the stage runs it (the effects ledger): the 503 is the outcome, not a failure."""
    cat = catalogue({"http": {"down": {"url": f"{origin.url}/down"}}})
    spec = cat.get("probe.http")
    target = http("down")
    async with EmbeddedEffectsLedger(tmp_path / "effects.db") as ledger:
        done = await perform(
            ledger,
            unique_name("effect"),
            holder="test",
            lease=60,
            do=lambda token: spec.execute(target, ProbeParams(), token),
            check=lambda: spec.check(target, ProbeParams()),
        )
    assert done.status == "succeeded"
    assert done.outcome["ok"] is False
    assert done.outcome["status"] == 503
