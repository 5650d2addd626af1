"""The pure parts of the probes and Prometheus actions: URLs, error classes, the bounded
shape of results, cache verdicts, plans (no I/O)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from actions.inventory import Inventory
from actions.probes import cache_hit, probes_catalogue
from actions.prometheus_actions import (
    MAX_TOTAL_POINTS,
    QueryParams,
    RangeParams,
    chosen_queries,
)
from actions.prometheus_api import (
    PrometheusError,
    PrometheusUnavailable,
    api_error,
    parse_response,
    query_url,
    range_url,
    range_window,
    sample,
    shape,
    shown_url,
)
from schemas.actions import ApiRequest, Target

PROMQL = 'sum by (code) (rate(http_requests_total{job="origin", code=~"5.."}[5m])) > 0.5'


def test_urls_carry_the_query_exactly_encoded() -> None:
    url = query_url("http://prom:9090/", PROMQL)
    parts = urlsplit(url)
    assert (parts.netloc, parts.path) == ("prom:9090", "/api/v1/query")
    assert parse_qsl(parts.query) == [("query", PROMQL)]
    assert " " not in url
    assert "{" not in url
    assert parse_qsl(urlsplit(query_url("http://p", "up", at=1700000000.5)).query) == [
        ("query", "up"),
        ("time", "1700000000.5"),
    ]
    ranged = urlsplit(range_url("http://p/prefix", "up", 1700000000, 1700003600, 60))
    assert ranged.path == "/prefix/api/v1/query_range"
    assert parse_qsl(ranged.query) == [
        ("query", "up"),
        ("start", "1700000000"),
        ("end", "1700003600"),
        ("step", "60"),
    ]


def test_range_window_ends_at_the_step_below_now() -> None:
    assert range_window(1000.7, 300, 60) == (660, 960)
    assert range_window(960.0, 300, 60) == (660, 960)
    assert range_window(1000.7, 4, 1) == (996, 1000)


def test_shown_url_drops_only_a_password() -> None:
    assert shown_url("http://user:s3cret@prom:9090/x?q=1") == "http://user@prom:9090/x?q=1"
    assert shown_url("https://cdn.example.com/a.js?v=1") == "https://cdn.example.com/a.js?v=1"


@pytest.mark.parametrize(
    ("status", "body", "retriable", "message"),
    [
        (
            400,
            b'{"status":"error","errorType":"bad_data","error":"1:5: parse error"}',
            False,
            "400 bad_data: 1:5: parse error",
        ),
        (
            422,
            b'{"status":"error","errorType":"execution","error":"many-to-many matching"}',
            False,
            "422 execution: many-to-many matching",
        ),
        (
            503,
            b'{"status":"error","errorType":"timeout","error":"query timed out"}',
            True,
            "503 timeout: query timed out",
        ),
        (500, b"internal", True, "500: internal"),
        (502, b"<html>Bad Gateway</html>", True, "502: <html>Bad Gateway</html>"),
        (429, b"slow down", True, "429: slow down"),
        (404, b"404 page not found", False, "404: 404 page not found"),
        (401, b"", False, "401"),
    ],
)
def test_errors_are_retriable_only_when_a_retry_may_help(
    status: int, body: bytes, retriable: bool, message: str
) -> None:
    err = api_error(status, body)
    assert str(err) == message
    assert err.retriable is retriable
    assert isinstance(err, PrometheusUnavailable) is retriable
    with pytest.raises(PrometheusError) as caught:
        parse_response(status, body)
    assert type(caught.value) is type(err)
    assert str(caught.value) == message


def test_a_success_gives_its_data_and_warnings() -> None:
    body = {
        "status": "success",
        "data": {"resultType": "vector", "result": []},
        "warnings": ["partial"],
    }
    assert parse_response(200, json.dumps(body).encode()) == {
        "resultType": "vector",
        "result": [],
        "warnings": ["partial"],
    }
    for bad in (b"<html>hello</html>", b'{"status":"success"}', b"[]"):
        with pytest.raises(PrometheusError) as caught:
            parse_response(200, bad)
        assert caught.value.retriable is False


def test_samples_are_json_numbers_or_the_string_prometheus_sent() -> None:
    assert sample([1.5, "0.25"]) == [1.5, 0.25]
    assert sample([1, "NaN"]) == [1, "NaN"]
    assert sample([1, "+Inf"]) == [1, "+Inf"]
    assert sample([1, "-Inf"]) == [1, "-Inf"]
    json.dumps(sample([1, "NaN"]), allow_nan=False)


def _vector(values: dict[str, str]) -> dict[str, Any]:
    return {
        "resultType": "vector",
        "result": [{"metric": {"pod": k}, "value": [100.0, v]} for k, v in values.items()],
    }


def _matrix(series: int, points: int) -> dict[str, Any]:
    return {
        "resultType": "matrix",
        "result": [
            {"metric": {"s": str(i)}, "values": [[t, str(i * 10 + t)] for t in range(points)]}
            for i in range(series)
        ],
    }


def test_a_vector_is_kept_busiest_first_and_cut_at_max_series() -> None:
    data = _vector({"a": "1", "b": "NaN", "c": "7", "d": "3", "e": "7"})
    shaped = shape(data, max_series=3, max_points=1)
    assert shaped["result_type"] == "vector"
    assert shaped["total_series"] == 5
    assert shaped["truncated"] is True
    assert shaped["series"] == [
        {"metric": {"pod": "c"}, "value": [100.0, 7.0]},
        {"metric": {"pod": "e"}, "value": [100.0, 7.0]},
        {"metric": {"pod": "d"}, "value": [100.0, 3.0]},
    ]
    whole = shape(data, max_series=10, max_points=1)
    assert whole["truncated"] is False
    assert whole["series"][-1] == {"metric": {"pod": "b"}, "value": [100.0, "NaN"]}


def test_a_matrix_keeps_the_latest_points_within_the_budget() -> None:
    shaped = shape(_matrix(series=3, points=10), max_series=5, max_points=4)
    assert shaped["total_series"] == 3
    assert shaped["truncated"] is True
    first = shaped["series"][0]
    assert first["metric"] == {"s": "2"}  # the highest latest value
    assert first["points"] == 10
    assert first["values"] == [[t, float(20 + t)] for t in range(6, 10)]
    # A budget of 6 points: the first series gets 4, the second 2, the third none.
    budgeted = shape(_matrix(series=3, points=10), max_series=5, max_points=4, budget=6)
    assert [len(s["values"]) for s in budgeted["series"]] == [4, 2]
    assert budgeted["total_series"] == 3
    assert budgeted["truncated"] is True
    untouched = shape(_matrix(series=2, points=3), max_series=5, max_points=4)
    assert untouched["truncated"] is False
    assert [s["points"] for s in untouched["series"]] == [3, 3]


def test_scalars_and_strings_are_one_value() -> None:
    assert shape({"resultType": "scalar", "result": [5.0, "2"]}, 1, 1) == {
        "result_type": "scalar",
        "value": [5.0, 2.0],
        "truncated": False,
    }
    shaped = shape({"resultType": "string", "result": [5.0, "hi"]}, 1, 1)
    assert shaped == {"result_type": "string", "value": [5.0, "hi"], "truncated": False}


def test_warnings_are_kept() -> None:
    shaped = shape({**_vector({"a": "1"}), "warnings": ["partial response"]}, 5, 1)
    assert shaped["warnings"] == ["partial response"]


def test_the_whole_outcome_stays_bounded() -> None:
    """The largest params on three large answers: the action's even share of the budget
    keeps the sum under MAX_TOTAL_POINTS."""
    params = RangeParams.model_validate({"max_series": 50, "max_points": 1000})
    budget = MAX_TOTAL_POINTS // 3
    kept = [
        shape(_matrix(60, 2000), params.max_series, params.max_points, budget) for _ in range(3)
    ]
    assert sum(len(s["values"]) for one in kept for s in one["series"]) == MAX_TOTAL_POINTS - 2
    assert all(one["truncated"] for one in kept)


INV = Inventory.model_validate(
    {
        "probes": {
            "http": {"h": {"url": "https://probe:pw@origin.example.com/healthz", "method": "HEAD"}},
            "cdn": {
                "c": {"urls": ["https://cdn.example.com/a.js", "https://cdn.example.com/b.css"]}
            },
            "dns": {"d": {"names": ["origin.example.com", "cdn.example.com"]}},
        },
        "prometheus": {
            "main": {"url": "http://prom:9090", "queries": {"up": "up", "errors": PROMQL}},
            "empty": {"url": "http://prom:9090"},
        },
    }
)


async def test_plans_are_the_exact_requests() -> None:
    cat = probes_catalogue(INV, clock=lambda: 1_700_000_030.5)
    http = cat.get("probe.http")
    assert await http.plan(Target(kind="HttpProbe", name="h"), http.params()) == (
        ApiRequest(method="HEAD", path="https://probe@origin.example.com/healthz"),
    )
    cdn = cat.get("probe.cdn_assets")
    assert await cdn.plan(Target(kind="CdnAssets", name="c"), cdn.params()) == (
        ApiRequest(method="HEAD", path="https://cdn.example.com/a.js"),
        ApiRequest(method="HEAD", path="https://cdn.example.com/b.css"),
    )
    dns = cat.get("probe.dns")
    assert await dns.plan(Target(kind="DnsNames", name="d"), dns.params()) == (
        ApiRequest(method="RESOLVE", path="origin.example.com"),
        ApiRequest(method="RESOLVE", path="cdn.example.com"),
    )
    main = Target(kind="Prometheus", name="main")
    query = cat.get("prometheus.query")
    assert await query.plan(main, QueryParams(names=("errors",))) == (
        ApiRequest(method="GET", path=query_url("http://prom:9090", PROMQL)),
    )
    ranged = cat.get("prometheus.query_range")
    start, end = 1_699_996_380, 1_699_999_980  # an hour to the minute below the clock
    assert await ranged.plan(main, RangeParams()) == (
        ApiRequest(method="GET", path=range_url("http://prom:9090", "up", start, end, 60)),
        ApiRequest(method="GET", path=range_url("http://prom:9090", PROMQL, start, end, 60)),
    )


def test_only_the_inventory_queries_run_by_name() -> None:
    main = INV.prometheus["main"]
    target = Target(kind="Prometheus", name="main")
    assert chosen_queries(target, main, None) == [("up", "up"), ("errors", PROMQL)]
    assert chosen_queries(target, main, ("errors", "up", "errors")) == [
        ("errors", PROMQL),
        ("up", "up"),
    ]
    unknown = r"no query named rate\(x\[5m\]\) \(it has: errors, up\)"
    with pytest.raises(PrometheusError, match=unknown):
        chosen_queries(target, main, ("rate(x[5m])",))
    with pytest.raises(PrometheusError, match="no named queries"):
        chosen_queries(Target(kind="Prometheus", name="empty"), INV.prometheus["empty"], None)


@pytest.mark.parametrize(
    ("headers", "hit"),
    [
        ({"X-Cache": "Hit from cloudfront"}, True),
        ({"X-Cache": "HIT, MISS"}, True),
        ({"X-Cache": "Miss from cloudfront", "Age": "30"}, False),
        ({"Age": "30"}, True),
        ({"Age": "0"}, False),
        ({"Cache-Control": "no-store"}, None),
        ({}, None),
    ],
)
def test_cache_hit_reads_x_cache_then_age(headers: dict[str, str], hit: bool | None) -> None:
    assert cache_hit(headers) is hit
