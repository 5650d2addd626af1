"""The server processes: ``sevpipe run`` (every stage), ``sevpipe ingest``, ``classify``,
``notify``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry

from classifier.api import IncidentsApi, Refusal, Role
from classifier.policy import Policy
from classifier.stage import CONSUMER_GROUP, ClassifierMetrics, ClassifierStage
from eventlog import EventLog
from ingest import Credentials, Receiver, ReceiverMetrics
from schemas import TOPIC_ALERTS
from sevpipe.access import Access, OperatorToken
from sevpipe.actions_http import ActionsApi
from sevpipe.actions_wiring import actions_runtime
from sevpipe.backends import (
    describe,
    open_coordinator,
    open_effects_ledger,
    open_eventlog,
    open_store,
)
from sevpipe.backpressure import Backpressure, LagWatch
from sevpipe.comms_wiring import comms_runtime
from sevpipe.evidence_http import evidence_routes
from sevpipe.http import ConsumerLagCollector, build_app
from sevpipe.settings import Settings
from sevpipe.slack_http import slack_routes
from sevpipe.status_http import status_routes
from store import Coordinator, IncidentStore
from store.actions import ActionsBook
from store.effects import EffectsLedger

log = logging.getLogger(__name__)

EXAMPLE_ALERT = (
    '{"version":"4","status":"firing","receiver":"sevpipe","groupKey":"{}:{alertname=\\"Demo\\"}",'
    '"alerts":[{"status":"firing","labels":{"alertname":"Demo","service":"checkout",'
    '"impact":"error_rate"},"annotations":{"summary":"checkout errors above 5%"},'
    '"startsAt":"2026-01-01T00:00:00Z"}]}'
)


def curl_example(base_url: str, settings: Settings) -> str:
    creds = settings.credentials()
    auth = ""
    if creds.bearer_token:
        auth = ' -H "Authorization: Bearer $SEVPIPE_AUTH_TOKEN"'
    elif creds.basic_username is not None:
        auth = f' -u "{creds.basic_username}:$SEVPIPE_BASIC_AUTH_PASSWORD"'
    return (
        f"curl -sS -X POST {base_url}/api/v1/alerts -H 'Content-Type: application/json'{auth}"
        f" -d '{EXAMPLE_ALERT}'"
    )


def authorizer(
    creds: Credentials, operators: Sequence[OperatorToken] = ()
) -> Callable[[web.Request, Role], str | Refusal]:
    """Who is calling the API, holding which role (see ``sevpipe.access``)."""
    return Access(creds, operators).authorize


ROLES = frozenset({"ingest", "classify", "notify"})


async def serve(settings: Settings, roles: frozenset[str] = ROLES) -> int:
    """Serve ``roles`` until SIGINT/SIGTERM, then drain: HTTP, then the stage, then backends.

    ``ingest`` is the HTTP edge (receiver and incidents API); ``classify`` is the classifier
    stage; ``notify`` the comms stage. Every process also serves /healthz, /readyz and
    /metrics. Returns the exit code.
    """
    if "ingest" in roles:
        settings.check_exposure()
    policy = settings.policy() if "classify" in roles else None
    creds = settings.credentials()
    registry = CollectorRegistry()
    log.info("starting %s on %s", "+".join(sorted(roles)), describe(settings))
    async with contextlib.AsyncExitStack() as backends:
        eventlog = await backends.enter_async_context(open_eventlog(settings, wait=True))
        store = await backends.enter_async_context(open_store(settings, wait=True))
        ledger = coordinator = None
        if roles & {"notify", "act"}:
            ledger = await backends.enter_async_context(open_effects_ledger(settings, wait=True))
        if "act" in roles:
            coordinator = await backends.enter_async_context(open_coordinator(settings, wait=True))
        stop = asyncio.Event()
        parts = _Parts.start(
            settings,
            roles,
            policy=policy,
            eventlog=eventlog,
            store=store,
            ledger=ledger,
            coordinator=coordinator,
            registry=registry,
            stop=stop,
        )
        backpressure = parts.backpressure
        routes: list[web.RouteDef] = []
        if "ingest" in roles:
            receiver = Receiver(
                settings.receiver_config(),
                eventlog,
                ReceiverMetrics(registry),
                admit=backpressure.admit if backpressure is not None else None,
            )
            authorize = authorizer(creds, settings.operator_tokens())
            api = IncidentsApi(store, authorize)
            routes += [
                *receiver.routes(),
                *api.routes(),
                *evidence_routes(settings, store, authorize),
            ]
            if isinstance(store, ActionsBook):
                routes += ActionsApi(store, authorize).routes()
            routes += status_routes(store, settings.routing(), templates_dir=settings.templates_dir)
            secret = settings.slack.signing_secret_value() if settings.slack else None
            if secret:
                routes += slack_routes(api, secret)
        app = build_app(
            routes,
            eventlog,
            registry,
            settings.max_body_bytes,
            stages=parts.ready or None,
            gate_on_stages="ingest" not in roles,
        )
        in_flight = InFlight()
        app.middlewares.append(in_flight.middleware())
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_timeout)
        await runner.setup()
        failed = False
        try:
            with _signals() as signalled:
                site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
                await site.start()
                _announce(runner, settings, roles)
                failed = await _wait_for_signal_or(signalled, parts.tasks)
            log.info("shutting down: draining in-flight work")
            await in_flight.drain(runner, settings.shutdown_timeout)
        finally:
            await runner.cleanup()
            stop.set()
            await parts.finish(settings.shutdown_timeout)
    log.info("stopped")
    return 1 if failed else 0


@dataclass
class _Parts:
    """The stage and the receiver's backpressure a process runs beside its HTTP edge."""

    stage: ClassifierStage | None = None
    stage_task: asyncio.Task[None] | None = None
    backpressure: Backpressure | None = None
    watch_task: asyncio.Task[None] | None = None
    comms_task: asyncio.Task[None] | None = None
    actions_task: asyncio.Task[None] | None = None
    ready: dict[str, Callable[[], bool]] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        settings: Settings,
        roles: frozenset[str],
        *,
        policy: Policy | None,
        eventlog: EventLog,
        store: IncidentStore,
        ledger: EffectsLedger | None,
        coordinator: Coordinator | None,
        registry: CollectorRegistry,
        stop: asyncio.Event,
    ) -> _Parts:
        parts = cls()
        if ledger is not None and "notify" in roles:
            runtime = comms_runtime(settings, eventlog, store, ledger, registry)
            parts.ready["comms"] = runtime.ready
            parts.comms_task = asyncio.create_task(runtime.run(stop), name="sevpipe-comms")
        if ledger is not None and coordinator is not None:
            acts = actions_runtime(
                settings,
                eventlog,
                store,
                ledger=ledger,
                coordinator=coordinator,
                registry=registry,
            )
            parts.ready["actions"] = acts.ready
            parts.actions_task = asyncio.create_task(acts.run(stop), name="sevpipe-actions")
        group = settings.consumer_group_prefix + CONSUMER_GROUP
        paced = "ingest" in roles and settings.ingest_max_lag > 0
        lag: Callable[[], int]
        if policy is not None:
            stage = parts.stage = ClassifierStage(
                eventlog, store, policy, ClassifierMetrics(registry), group=group
            )
            registry.register(ConsumerLagCollector(stage.group, stage.lag))
            parts.stage_task = asyncio.create_task(stage.run(stop), name="sevpipe-classifier")
            parts.ready[stage.name] = stage.ready
            lag = lambda: sum(stage.lag().values())  # noqa: E731
        elif paced:
            watch = LagWatch(lambda: eventlog.group_lag(group, [TOPIC_ALERTS]), registry)
            parts.watch_task = asyncio.create_task(watch.run(stop), name="sevpipe-lag-watch")
            lag = lambda: watch.behind  # noqa: E731
        if paced:
            bp = parts.backpressure = Backpressure(
                lag, registry, limit=settings.ingest_max_lag, timeout=settings.ingest_max_hold
            )
            if parts.stage is not None:
                parts.stage.after_batch = bp.progressed
            else:
                watch.on_read = bp.progressed
        return parts

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        tasks = (self.stage_task, self.comms_task, self.actions_task)
        return [t for t in tasks if t is not None]

    async def finish(self, deadline: float) -> None:
        for task in self.tasks:
            await _finish(task, deadline)
        if self.watch_task is not None:
            self.watch_task.cancel()  # a lag reading is of no use past here
            with contextlib.suppress(asyncio.CancelledError):
                await self.watch_task


class InFlight:
    """The requests being handled, so shutdown can let them finish.

    aiohttp's cleanup stops reading from open connections, so a webhook whose body is still
    arriving would wait out the whole shutdown timeout and then be reset. Stop listening
    first, wait for the handlers, then clean up.
    """

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def middleware(self) -> Middleware:
        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.count += 1
            self._idle.clear()
            try:
                return await handler(request)
            finally:
                self.count -= 1
                if self.count == 0:
                    self._idle.set()

        return count

    async def drain(self, runner: web.AppRunner, deadline: float) -> None:
        for site in list(runner.sites):
            await site.stop()  # no new connections
        try:
            await asyncio.wait_for(self._idle.wait(), deadline)
        except TimeoutError:
            log.warning("%d requests still in flight after %.0fs", self.count, deadline)


def _announce(runner: web.AppRunner, settings: Settings, roles: frozenset[str]) -> None:
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    base_url = f"http://{shown}:{port}"
    where = (
        describe(settings)
        if settings.kafka_bootstrap or settings.postgres_dsn
        else (f"data dir {settings.data_dir}")
    )
    lines = [f"sevpipe listening on {base_url} ({where})"]
    if "ingest" in roles:
        lines += [
            f"Alertmanager webhook URL: {base_url}/api/v1/alerts",
            f"Incidents: {base_url}/api/v1/incidents",
            f"Try it:\n  {curl_example(base_url, settings)}",
        ]
    else:
        lines.append(f"Metrics: {base_url}/metrics")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


async def _finish(task: asyncio.Task[None], deadline: float) -> None:
    try:
        await asyncio.wait_for(task, deadline)
    except TimeoutError:
        log.warning("classifier did not stop within %.0fs; cancelled", deadline)
    except Exception:
        log.exception("classifier failed")


@contextlib.contextmanager
def _signals() -> Iterator[asyncio.Event]:
    """SIGINT/SIGTERM set the event; installed before the banner, so no signal is missed."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _wait_for_signal_or(signalled: asyncio.Event, tasks: list[asyncio.Task[None]]) -> bool:
    """Wait for a signal, or for a stage to end by itself; True if one failed."""
    waiter = asyncio.create_task(signalled.wait())
    try:
        await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception():
            log.error("%s died; stopping", task.get_name(), exc_info=task.exception())
            return True
    return False
