"""prometheus.query and prometheus.query_range against a real Prometheus (Debian's, started by
``prometheus_support``) scraping an exporter served by the tests.

Between the actions and Prometheus sits a recording proxy served here: each plan is what its
execute sent (the request line, byte for byte), and the proxy can also answer as a broken
gateway or not at all, for the errors the stage retries.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_support import (
    JOB,
    READY_SAMPLES,
    SCRAPES,
    SHARD_LOAD,
    SHARDS,
    PrometheusServer,
    free_port,
    prometheus,  # noqa: F401 - the session fixture
)
from pydantic import ValidationError
from yarl import URL

from actions.catalogue import ActionSpec, Catalogue
from actions.inventory import Inventory
from actions.probes import probes_catalogue
from actions.prometheus_actions import QueryParams, RangeParams
from actions.prometheus_api import PrometheusApi, PrometheusError, PrometheusUnavailable
from schemas.actions import ApiRequest, Target

QUERIES = {
    "scrapes": SCRAPES,
    "shards": SHARD_LOAD,
    "rate": f"sum(rate({SCRAPES}[10s]))",
    "broken": f"sum(rate({SCRAPES}[5m])",
}
MAIN = Target(kind="Prometheus", name="main")


@dataclass
class Proxy:
    """Forwards to Prometheus and records each request line; ``mode`` "forward", "502"
    (a gateway's HTML error page) or "hang" (answers after ``hang`` seconds)."""

    upstream: str
    seen: list[tuple[str, str]] = field(default_factory=list)
    mode: str = "forward"
    hang: float = 1.0
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path))
        if self.mode == "502":
            return web.Response(status=502, text="<html>502 Bad Gateway</html>")
        if self.mode == "hang":
            await asyncio.sleep(self.hang)
        async with (
            aiohttp.ClientSession() as session,
            session.get(URL(self.upstream + request.raw_path, encoded=True)) as resp,
        ):
            body = await resp.read()
            return web.Response(status=resp.status, body=body, content_type=resp.content_type)


@pytest.fixture
async def proxy(prometheus: PrometheusServer) -> AsyncIterator[Proxy]:  # noqa: F811
    found = Proxy(prometheus.url)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    found.url = f"http://127.0.0.1:{port}"
    try:
        yield found
    finally:
        await runner.cleanup()


def inventory(url: str, timeout: str = "5s", queries: dict[str, str] | None = None) -> Inventory:
    entry = {"url": url, "queries": QUERIES if queries is None else queries, "timeout": timeout}
    return Inventory.model_validate({"prometheus": {"main": entry}})


def actions(inv: Inventory, clock: Callable[[], float] | None = None) -> Catalogue:
    return probes_catalogue(inv) if clock is None else probes_catalogue(inv, clock=clock)


async def run(spec: ActionSpec[Any], params: dict[str, Any]) -> tuple[Any, Any]:
    """(plan, outcome) of SPEC on the main server."""
    parsed = spec.params.model_validate(params)
    plan = await spec.plan(MAIN, parsed)
    return plan, await spec.execute(MAIN, parsed, 1)


def sent(proxy: Proxy) -> list[ApiRequest]:
    return sorted(
        (ApiRequest(method=m, path=proxy.url + p) for m, p in proxy.seen), key=lambda r: r.path
    )


async def test_instant_queries_read_real_results_and_send_the_plan(
    prometheus: PrometheusServer,  # noqa: F811
    proxy: Proxy,
) -> None:
    spec = actions(inventory(proxy.url)).get("prometheus.query")
    assert spec.risk == "read_only"
    assert spec.target_kind == "Prometheus"
    plan, outcome = await run(spec, {"names": ["scrapes", "rate"]})

    assert sorted(plan, key=lambda r: r.path) == sent(proxy)
    assert [r.method for r in plan] == ["GET", "GET"]
    assert all(URL(r.path).path == "/api/v1/query" for r in plan)
    assert [URL(r.path).query["query"] for r in plan] == [QUERIES["scrapes"], QUERIES["rate"]]

    assert outcome["prometheus"] == "main"
    scrapes, rate = outcome["queries"]
    assert (scrapes["name"], scrapes["query"]) == ("scrapes", SCRAPES)
    assert scrapes["result_type"] == "vector"
    assert scrapes["total_series"] == 1
    assert not scrapes["truncated"]
    (series,) = scrapes["series"]
    assert series["metric"]["__name__"] == SCRAPES
    assert series["metric"]["job"] == JOB
    assert series["metric"]["instance"] == prometheus.instance
    at, value = series["value"]
    # The counter's value at a scrape is the number of scrapes served by then.
    assert READY_SAMPLES <= value <= prometheus.exporter.scrapes
    assert value == int(value)
    assert abs(at - time.time()) < 60  # evaluated at Prometheus's now

    # about one scrape a second
    assert rate["result_type"] == "vector"
    (rate_series,) = rate["series"]
    assert rate_series["metric"] == {}
    assert 0.5 < rate_series["value"][1] < 2.0


async def test_every_named_query_by_default_and_series_bounded_busiest_first(
    prometheus: PrometheusServer,  # noqa: F811
) -> None:
    inv = inventory(prometheus.url, queries={k: v for k, v in QUERIES.items() if k != "broken"})
    spec = actions(inv).get("prometheus.query")
    plan, outcome = await run(spec, {"max_series": 5})
    assert [q["name"] for q in outcome["queries"]] == ["scrapes", "shards", "rate"]
    assert len(plan) == 3
    shards = outcome["queries"][1]
    assert shards["total_series"] == SHARDS
    assert shards["truncated"] is True
    assert [s["value"][1] for s in shards["series"]] == [29.0, 28.0, 27.0, 26.0, 25.0]
    assert [s["metric"]["shard"] for s in shards["series"]] == ["29", "28", "27", "26", "25"]


async def test_range_query_reads_the_window_the_plan_names(
    prometheus: PrometheusServer,  # noqa: F811
    proxy: Proxy,
) -> None:
    now = time.time()  # a fraction of a second: the window's end is aligned down
    spec = actions(inventory(proxy.url), clock=lambda: now).get("prometheus.query_range")
    plan, outcome = await run(spec, {"names": ["scrapes"], "range": "4s", "step": "1s"})

    assert list(plan) == sent(proxy)
    (request,) = plan
    query = URL(request.path).query
    end = math.floor(now)
    assert URL(request.path).path == "/api/v1/query_range"
    assert (query["query"], query["start"], query["end"], query["step"]) == (
        SCRAPES,
        str(end - 4),
        str(end),
        "1",
    )
    assert outcome["range"] == "4s"
    assert outcome["step"] == "1s"
    (scrapes,) = outcome["queries"]
    assert scrapes["result_type"] == "matrix"
    (series,) = scrapes["series"]
    assert series["metric"]["instance"] == prometheus.instance
    assert series["points"] == 5
    times = [t for t, _ in series["values"]]
    values = [v for _, v in series["values"]]
    assert times == [end - 4, end - 3, end - 2, end - 1, end]
    assert values == sorted(values)  # a counter never falls
    assert values[-1] <= prometheus.exporter.scrapes
    assert values[-1] > values[0]  # it was scraped (and grew) within the window


async def test_range_points_are_bounded_keeping_the_latest(
    prometheus: PrometheusServer,  # noqa: F811
) -> None:
    now = time.time()
    spec = actions(inventory(prometheus.url), clock=lambda: now).get("prometheus.query_range")
    _, outcome = await run(
        spec, {"names": ["scrapes", "shards"], "range": "4s", "step": "2s", "max_points": 2}
    )
    end = math.floor(now / 2) * 2
    scrapes, shards = outcome["queries"]
    (series,) = scrapes["series"]
    assert series["points"] == 3  # end-4, end-2, end
    assert [t for t, _ in series["values"]] == [end - 2, end]
    assert scrapes["truncated"] is True
    assert shards["total_series"] == SHARDS
    assert len(shards["series"]) == 10  # the default max_series
    assert shards["series"][0]["metric"]["shard"] == "29"
    assert shards["series"][0]["values"][-1][1] == 29.0


async def test_a_query_prometheus_refuses_fails_the_action_not_retriable(
    prometheus: PrometheusServer,  # noqa: F811
) -> None:
    cat = actions(inventory(prometheus.url))
    for name, params in (
        ("prometheus.query", {"names": ["scrapes", "broken"]}),
        ("prometheus.query_range", {"names": ["broken"]}),
    ):
        with pytest.raises(PrometheusError) as caught:
            await run(cat.get(name), params)
        assert not isinstance(caught.value, PrometheusUnavailable)
        assert caught.value.retriable is False
        message = str(caught.value)
        assert "query broken" in message
        assert "400 bad_data" in message
        assert "parse error" in message  # Prometheus's own words


async def test_an_unknown_query_name_is_refused_before_any_request(proxy: Proxy) -> None:
    cat = actions(inventory(proxy.url))
    for name in ("prometheus.query", "prometheus.query_range"):
        spec = cat.get(name)
        params = spec.params.model_validate({"names": ["scrapes", "up or vector(1)"]})
        with pytest.raises(PrometheusError, match="no query named up or vector") as caught:
            await spec.plan(MAIN, params)
        assert caught.value.retriable is False
        with pytest.raises(PrometheusError, match=r"it has: broken, rate, scrapes, shards"):
            await spec.execute(MAIN, params, 1)
    assert proxy.seen == []


async def test_a_server_not_in_the_inventory_is_refused(prometheus: PrometheusServer) -> None:  # noqa: F811
    spec = actions(inventory(prometheus.url)).get("prometheus.query")
    other = Target(kind="Prometheus", name="elsewhere")
    with pytest.raises(PrometheusError, match="not in the inventory"):
        await spec.execute(other, QueryParams(), 1)


async def test_a_wrong_path_is_a_final_error_with_prometheus_answer(
    prometheus: PrometheusServer,  # noqa: F811
) -> None:
    spec = actions(inventory(prometheus.url + "/nowhere")).get("prometheus.query")
    with pytest.raises(PrometheusError, match="404") as caught:
        await run(spec, {"names": ["scrapes"]})
    assert caught.value.retriable is False


async def test_a_gateway_error_a_timeout_and_no_server_are_retriable(proxy: Proxy) -> None:
    proxy.mode = "502"
    spec = actions(inventory(proxy.url)).get("prometheus.query")
    with pytest.raises(PrometheusUnavailable, match="502: <html>502 Bad Gateway") as caught:
        await run(spec, {"names": ["scrapes"]})
    assert caught.value.retriable is True

    proxy.mode = "hang"
    spec = actions(inventory(proxy.url, timeout="300ms")).get("prometheus.query_range")
    started = asyncio.get_running_loop().time()
    with pytest.raises(PrometheusUnavailable, match=r"timed out after 0.3s"):
        await run(spec, {"names": ["scrapes"]})
    assert asyncio.get_running_loop().time() - started < 3

    spec = actions(inventory(f"http://127.0.0.1:{free_port()}")).get("prometheus.query")
    with pytest.raises(PrometheusUnavailable, match="ClientConnectorError") as caught:
        await run(spec, {"names": ["scrapes"]})
    assert caught.value.retriable is True


async def test_the_client_alone_as_the_evidence_bundle_would_use_it(
    prometheus: PrometheusServer,  # noqa: F811
) -> None:
    async with PrometheusApi(prometheus.url, timeout=5) as api:
        data = await api.query(f'{SHARD_LOAD}{{shard="07"}}')
        assert data["resultType"] == "vector"
        assert data["result"][0]["value"][1] == "7"
        now = int(time.time())
        data = await api.query_range(SCRAPES, now - 3, now, 1)
        assert data["resultType"] == "matrix"
        assert len(data["result"][0]["values"]) == 4


def test_range_params_are_checked() -> None:
    assert RangeParams().range == timedelta(hours=1)
    assert RangeParams().step == timedelta(minutes=1)
    for bad in ({"step": "0s"}, {"range": "30s", "step": "1m"}, {"range": "7d", "step": "1s"}):
        with pytest.raises(ValidationError):
            RangeParams.model_validate(bad)
    with pytest.raises(ValidationError):
        QueryParams.model_validate({"query": "up"})  # no PromQL from params
