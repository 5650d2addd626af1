"""The process's HTTP server: the stages' routes plus health, readiness and metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from eventlog import EventLog, EventLogError

log = logging.getLogger(__name__)


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


@web.middleware
async def never_500(request: web.Request, handler: Any) -> web.StreamResponse:
    """A bug must not turn into a 500 that Alertmanager treats like any 5xx and we lose
    track of: answer 503 so the sender retries, and log the traceback."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException:
        raise
    except ConnectionError as exc:
        # The client hung up (mid-body, say): nobody is left to answer; not our bug.
        log.info("client went away during %s %s: %s", request.method, request.path, exc)
        raise
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return web.Response(
            status=503,
            body=orjson.dumps({"error": "internal error; retry later"}),
            content_type="application/json",
            headers={"Retry-After": "5"},
        )
    return response


@web.middleware
async def json_http_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own 404/405/413 answers, in the same JSON shape as ours."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.Response(
            status=exc.status,
            body=orjson.dumps({"error": exc.reason}),
            content_type="application/json",
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )
    return response


def build_app(
    routes: list[web.RouteDef],
    eventlog: EventLog,
    registry: CollectorRegistry,
    max_body: int,
    *,
    stages: Mapping[str, Callable[[], bool]] | None = None,
    gate_on_stages: bool = False,
) -> web.Application:
    """The process's HTTP app: ``routes`` plus /healthz, /readyz and /metrics.

    /readyz always says whether the log takes appends and how each stage is doing. It fails
    on a stage that is not consuming (backing off while a backend is away) only when
    ``gate_on_stages``: a stage-only process has nothing else to be ready for, while in a
    process that also receives webhooks the receiver must keep taking them meanwhile.
    """
    app = web.Application(middlewares=[json_http_errors, never_500], client_max_size=max_body)
    stages = stages or {}

    async def healthz(_: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        states = {name: "consuming" if ready() else "waiting" for name, ready in stages.items()}
        try:
            await eventlog.ping()
        except EventLogError as exc:
            return _json(503, {"status": "unavailable", "eventlog": str(exc), "stages": states})
        if gate_on_stages and "waiting" in states.values():
            return _json(503, {"status": "unavailable", "eventlog": "writable", "stages": states})
        return _json(200, {"status": "ready", "eventlog": "writable", "stages": states})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app.add_routes(
        [
            *routes,
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
        ]
    )
    return app


class ConsumerLagCollector(Collector):
    """``sevpipe_consumer_lag`` read from a stage's subscription at scrape time."""

    def __init__(self, group: str, lag: Callable[[], dict[tuple[str, int], int]]) -> None:
        self.group = group
        self._lag = lag

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "sevpipe_consumer_lag",
            "Offsets between a consumer group and the end of the log, per partition",
            labels=["group", "topic", "partition"],
        )
        for (topic, partition), lag in sorted(self._lag().items()):
            gauge.add_metric([self.group, topic, str(partition)], lag)
        yield gauge
