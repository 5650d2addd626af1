"""Actions benchmark (not a test): the actions stage, ``ActionsStage`` on ``StageRuntime`` as
``sevpipe/actions_wiring.py`` builds it (batch 50, live), on both backend sets:

- embedded: EmbeddedLog + EmbeddedStore + EmbeddedEffectsLedger + LocalCoordinator in a temp
  dir, one set shared by the stage and the bench, as in ``sevpipe run``;
- production: KafkaLog + PostgresStore + PostgresEffectsLedger + RedisCoordinator on
  ``SEVPIPE_KAFKA_BOOTSTRAP``, ``SEVPIPE_POSTGRES_DSN`` and ``SEVPIPE_REDIS_URL``; each part gets
  a topic and consumer-group prefix, a database and a Redis key prefix of its own, removed
  after; the stage (each replica) and the bench have clients of their own, as processes would.

Incidents are written as the classifier leaves them: the incident and its alert into the store
(``restore``), then ``incident.opened`` appended to ``sevpipe.incidents``. The alert's
``namespace`` and ``deployment`` labels choose the target among the inventory's Deployments;
the playbook's first (only) step restarts it in mode ``auto``. The action is a bench-local
``bench.restart`` (mutating) that counts its runs, raw, per action id (``ACTION_ID``) and per
target, tracks how many run at once and awaits ``--delay``; its check finds a run it counted.

1. Latency, typical: ``--incidents`` (200) incidents one at a time (each waits for the one
   before to be done), from just before the append of ``incident.opened`` to its first
   ``action.started`` seen on ``sevpipe.actions`` by a consumer of the bench's own, p50/p99.
   Baseline, interleaved incident by incident on the same log: a trivial stage on the same
   runtime (batch 50) that decodes each incident event of a bench topic and appends one event
   to another, seen by the same consumer. Ratio = stage / baseline. With
   ``SEVPIPE_KUBECONFIG`` also the realistic case: the catalogue's own
   ``kubernetes.rollout_restart`` (counted the same way) on ``--kube-incidents`` (50)
   Deployments of a temp namespace of the real kube-apiserver, each checked at the apiserver
   afterwards: restarted exactly once (generation 2, carrying its own action's mark).
2. Storm, the worst case: ``--storm`` (1,000) incidents appended in ONE batch over
   ``--targets`` (200) Deployments, with limits that bind: ``--rate`` (50) restarts an hour,
   ``--max-in-flight`` (1), and the default 10 min cooldown per (action, target). The time
   until every action is decided (succeeded, failed or skipped), against the trivial stage
   taking a batch of the same size. Checked from raw counts, and printed: the runs in any hour
   are within the hourly limit, never more in flight than the limit, no target run twice
   within its cooldown, no action id run twice, every action that did not run skipped with
   the guard's reason (cooldown, rate, in flight, already running), none failed, every action
   decided; and the actions book (what the API shows) says succeeded of each action that ran.
   On production the storm runs twice more with ``--replicas`` (2) stage runtimes in one
   consumer group, each with clients of its own: started together (the partitions split), and
   with the second joining once a fifth of the rate limit has run (a scale-out under load:
   the partitions move, and what the first had fetched but not committed is handed to the
   second). Nothing may run twice across them.

A broken limit, an action run twice, an unexplained skip, a failure or an undecided action is
a VIOLATION, and the run exits 1 (so does a part that cannot be measured). Oddities that are
not unsafe (an action that ran also said skipped by the other replica; the book disagreeing
with what ran) are printed as NOTE. No timing is asserted.

    scripts/with-services .venv/bin/python -m bench.actions          # both backends, ~2 min
    .venv/bin/python -m bench.actions --backend embedded             # no services needed
    scripts/with-services .venv/bin/python -m bench.actions --incidents 50 --storm 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis
import uvloop
from aiokafka.admin import AIOKafkaAdminClient
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict

from actions.catalogue import ACTION_ID, ActionSpec, Catalogue, Outcome
from actions.guard import Guard, Limits
from actions.inventory import Inventory
from actions.kubernetes import RESTARTED_AT, kubernetes_catalogue
from actions.playbooks import Playbooks
from actions.stage import CONSUMER_GROUP, ActionsStage
from bench.fold import pct
from eventlog import EmbeddedLog, EventLog, Record
from eventlog.kafka import KafkaLog, partition_index
from runtime.stage import StageRuntime
from schemas import TOPIC_ACTIONS, TOPIC_INCIDENTS, Envelope, derived_event_id, new_event_id
from schemas.actions import ApiRequest, Target
from schemas.events import IncidentEnvelope
from schemas.incidents import Incident, IncidentAlert, IncidentCounts, IncidentEventData
from store import (
    Coordinator,
    EmbeddedStore,
    IncidentStore,
    LocalCoordinator,
    PostgresStore,
    RedisCoordinator,
)
from store.actions import ActionsBook
from store.effects import EffectsLedger
from store.effects_embedded import EmbeddedEffectsLedger
from store.effects_postgres import PostgresEffectsLedger

SERVICES: Final = ("SEVPIPE_KAFKA_BOOTSTRAP", "SEVPIPE_POSTGRES_DSN", "SEVPIPE_REDIS_URL")
BENCH_ACTION: Final = "bench.restart"
KUBE_ACTION: Final = "kubernetes.rollout_restart"
NAMESPACE: Final = "bench-production"
OUTAGE: Final = "BenchOutage"  # alertname -> the bench.restart playbook
KUBE_OUTAGE: Final = "KubeOutage"  # alertname -> the kubernetes.rollout_restart playbook
WARMUP: Final = "BenchWarmup"  # alertname -> a step in mode never: touches no guard state
STEP: Final = "restart"
ECHO_IN: Final = "bench.incidents"
ECHO_OUT: Final = "bench.echo"
ECHO_TYPE: Final = "bench.echoed"
DECIDED: Final = frozenset(
    {"action.succeeded", "action.failed", "action.skipped", "action.awaiting_approval"}
)
HOUR: Final = 3600.0
WAIT: Final = 60.0  # hang guard for one incident / one assignment; not a timing assert
STORM_WAIT: Final = 300.0
SETTLE: Final = 1.0  # after the storm is decided: time for anything run or said twice to show
WARMUP_ROUNDS: Final = 5
GUARD_REASONS: Final = {  # what each of the guard's refusals says (actions/guard.py)
    "cooldown": "cooling down, it ran less than",
    "rate": "per hour reached",
    "in flight": "mutating actions already in flight",
    "already running": ": already running",
}


# -- the counting action ----------------------------------------------------------------------


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class Runs:
    """Every run of a counted action, raw: nothing deduplicated."""

    delay: float = 0.0
    by_action: Counter[str] = field(default_factory=Counter)
    by_target: dict[str, list[float]] = field(default_factory=dict)  # target -> run starts
    entered: dict[str, float] = field(default_factory=dict)  # action id -> its first start
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_action.values())

    def starts(self) -> list[float]:
        return sorted(t for times in self.by_target.values() for t in times)

    @contextlib.asynccontextmanager
    async def run(self, target: Target) -> AsyncIterator[None]:
        started = time.perf_counter()
        action_id = ACTION_ID.get() or "(no action id)"
        self.by_action[action_id] += 1
        self.by_target.setdefault(target.key(), []).append(started)
        self.entered.setdefault(action_id, started)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1


def counting_action(runs: Runs) -> ActionSpec[NoParams]:
    async def plan(target: Target, params: NoParams) -> tuple[ApiRequest, ...]:
        path = f"/bench/namespaces/{target.namespace}/deployments/{target.name}/restart"
        return (ApiRequest(method="POST", path=path),)

    async def execute(target: Target, params: NoParams, token: int) -> Outcome:
        async with runs.run(target):
            await asyncio.sleep(runs.delay)
        return {"restarted": target.name, "token": token}

    async def check(target: Target, params: NoParams) -> Outcome | None:
        action_id = ACTION_ID.get()
        found = action_id is not None and runs.by_action[action_id] > 0
        return {"restarted": target.name, "found": True} if found else None

    return ActionSpec(
        BENCH_ACTION, NoParams, "mutating", "Deployment", plan, execute, check, "counts its runs"
    )


def counted(spec: ActionSpec[Any], runs: Runs) -> ActionSpec[Any]:
    """``spec`` with its runs counted as ``counting_action`` counts its own."""
    inner = spec.execute

    async def execute(target: Target, params: Any, token: int) -> Outcome:
        async with runs.run(target):
            return await inner(target, params, token)

    return dataclasses.replace(spec, execute=execute)


def playbooks() -> Playbooks:
    # The alert's labels choose the Deployment (among the inventory's only).
    target = {
        "kind": "Deployment",
        "namespace_from_label": "namespace",
        "name_from_label": "deployment",
    }

    def book(alertname: str, action: str) -> dict[str, Any]:
        step = {"id": STEP, "action": action, "target": target, "mode": "auto"}
        match = {"min_severity": "SEV-0", "alertnames": [alertname]}
        return {"name": f"bench-{alertname}", "match": match, "steps": [step]}

    warmup = {"id": "warmup", "action": BENCH_ACTION, "target": target, "mode": "never"}
    return Playbooks.model_validate(
        {
            "playbooks": [
                {
                    "name": "bench-warmup",
                    "match": {"min_severity": "SEV-3", "alertnames": [WARMUP]},
                    "steps": [warmup],
                },
                book(OUTAGE, BENCH_ACTION),
                book(KUBE_OUTAGE, KUBE_ACTION),
            ]
        }
    )


def inventory(deployments: dict[str, Sequence[str]]) -> Inventory:
    """namespace -> its Deployments; the first namespace is the default."""
    return Inventory.model_validate(
        {
            "default_namespace": next(iter(deployments)),
            "namespaces": {
                ns: {"deployments": {name: {"max_replicas": 10} for name in names}}
                for ns, names in deployments.items()
            },
        }
    )


def deployment_names(n: int, tag: str = "svc") -> list[str]:
    return [f"{tag}-{i:05d}" for i in range(n)]


def opened(alertname: str, namespace: str, deployment: str) -> Envelope:
    """An ``incident.opened`` of one firing alert naming ``deployment``, as the classifier
    writes it (SEV-0 outage; a warm-up is SEV-3)."""
    now = datetime.now(UTC)
    incident_id = "inc-" + new_event_id().lower()
    severity = "SEV-3" if alertname == WARMUP else "SEV-0"
    reasons = ("impact outage",) if severity == "SEV-0" else ("no impact, users or revenue",)
    labels = {
        "alertname": alertname,
        "impact": "outage" if severity == "SEV-0" else "minor",
        "namespace": namespace,
        "deployment": deployment,
    }
    alert = IncidentAlert(
        fingerprint=uuid.uuid4().hex[:16],
        alertname=alertname,
        status="firing",
        starts_at=now,
        severity=severity,
        reasons=reasons,
        summary=f"{deployment} is down",
        labels=labels,
    )
    incident = Incident(
        id=incident_id,
        key=f'{{}}:{{alertname="{alertname}", incident="{incident_id}"}}',
        severity=severity,
        status="open",
        title=f"{alertname} {deployment}",
        reasons=reasons,
        counts=IncidentCounts(alerts=1, firing=1),
        opened_at=now,
        updated_at=now,
    )
    data = IncidentEventData(incident=incident, change=f"alert {alertname} firing", alerts=(alert,))
    return Envelope.new("incident.opened", "/sevpipe/classifier", incident_id, data)


# -- backends ---------------------------------------------------------------------------------


@dataclass
class Clients:
    """One process's backends."""

    log: EventLog
    store: IncidentStore
    ledger: EffectsLedger
    coordinator: Coordinator

    async def close(self) -> None:
        for backend in (self.log, self.store, self.ledger, self.coordinator):
            with contextlib.suppress(Exception):
                await backend.close()


class Install:
    """One part's isolated backends: a temp dir (embedded), or a topic and consumer-group
    prefix, a database and a Redis key prefix (production). ``open`` gives a process's
    clients: embedded, one set shared by all (one process); production, a new set each call."""

    def __init__(self, backend: str, label: str, workdir: Path) -> None:
        self.backend = backend
        token = uuid.uuid4().hex[:10]
        self.prefix = f"sevpipe-bench-actions-{label}-{token}"
        self.groups = self.prefix + "."
        self.dir = workdir / f"{label}-{token}"
        self.database = self.prefix.replace("-", "_")
        self._opened: list[Clients] = []
        self._env = {name: os.environ.get(name, "") for name in SERVICES}

    @property
    def production(self) -> bool:
        return self.backend == "production"

    @property
    def dsn(self) -> str:
        admin = self._env["SEVPIPE_POSTGRES_DSN"]
        return urlsplit(admin)._replace(path=f"/{self.database}").geturl()

    async def __aenter__(self) -> Install:
        if self.production:
            await _sql(self._env["SEVPIPE_POSTGRES_DSN"], f'CREATE DATABASE "{self.database}"')
        else:
            self.dir.mkdir(parents=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for clients in self._opened:
            await clients.close()
        if self.production:
            await self._remove()

    async def open(self) -> Clients:
        if not self.production:
            if not self._opened:
                clients = Clients(
                    EmbeddedLog(self.dir / "events.db"),
                    EmbeddedStore(self.dir / "store.db"),
                    EmbeddedEffectsLedger(self.dir / "effects.db"),
                    LocalCoordinator(),
                )
                await _start(clients)
                self._opened.append(clients)
            return self._opened[0]
        clients = Clients(
            KafkaLog(
                self._env["SEVPIPE_KAFKA_BOOTSTRAP"],
                client_id="sevpipe-bench",
                topic_prefix=self.prefix + ".",
            ),
            PostgresStore(self.dsn),
            PostgresEffectsLedger(self.dsn),
            RedisCoordinator(self._env["SEVPIPE_REDIS_URL"], prefix=self.prefix + ":"),
        )
        await _start(clients)
        self._opened.append(clients)
        return clients

    async def _remove(self) -> None:
        with contextlib.suppress(Exception):
            drop = f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'
            await _sql(self._env["SEVPIPE_POSTGRES_DSN"], drop)
        with contextlib.suppress(Exception):
            admin = AIOKafkaAdminClient(bootstrap_servers=self._env["SEVPIPE_KAFKA_BOOTSTRAP"])
            await admin.start()
            try:
                mine = [t for t in await admin.list_topics() if t.startswith(self.prefix)]
                if mine:
                    await admin.delete_topics(mine)
            finally:
                await admin.close()
        with contextlib.suppress(Exception):
            redis = aioredis.from_url(self._env["SEVPIPE_REDIS_URL"])
            try:
                keys = [k async for k in redis.scan_iter(match=self.prefix + ":*", count=1000)]
                if keys:
                    await redis.delete(*keys)
            finally:
                await redis.aclose()


async def _sql(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _start(clients: Clients) -> None:
    # One after another: the two PostgreSQL backends migrate the same fresh database.
    for backend in (clients.log, clients.store, clients.ledger, clients.coordinator):
        await backend.start()


# -- the stages, and what the bench sees of them ----------------------------------------------


def actions_runtime(
    clients: Clients,
    *,
    catalogue: Catalogue,
    inventory: Inventory,
    limits: Limits,
    group_prefix: str,
    registry: CollectorRegistry | None = None,
) -> StageRuntime:
    """As ``sevpipe.actions_wiring.actions_runtime`` builds it (live), with the bench's
    catalogue, playbooks, inventory and limits."""
    stage = ActionsStage(
        clients.log,
        clients.store,
        ledger=clients.ledger,
        catalogue=catalogue,
        playbooks=playbooks(),
        inventory=inventory,
        guard=Guard(clients.coordinator, limits, inventory),
        live=True,
    )
    group = group_prefix + CONSUMER_GROUP
    registry = registry if registry is not None else CollectorRegistry()
    return StageRuntime(clients.log, stage, registry, group=group, batch_size=50)


class Echo:
    """The baseline: a trivial stage that decodes each incident event of ``bench.incidents``
    and appends one event about it to ``bench.echo``."""

    name = "bench-echo"
    topics = (ECHO_IN,)

    def __init__(self, eventlog: EventLog) -> None:
        self.log = eventlog

    async def handle(self, records: Sequence[Record]) -> None:
        out = []
        for record in records:
            env = record.decode(IncidentEnvelope)
            out.append(
                Envelope(
                    id=derived_event_id(env.id, "echo"),
                    type=ECHO_TYPE,
                    source="/bench/echo",
                    time=datetime.now(UTC),
                    subject=env.subject,
                    data={"incident_id": env.data.incident.id},
                )
            )
        await self.log.append(ECHO_OUT, out, dedup_keys=[e.id for e in out])


def echo_runtime(eventlog: EventLog, group_prefix: str) -> StageRuntime:
    echo = Echo(eventlog)
    return StageRuntime(
        eventlog, echo, CollectorRegistry(), group=group_prefix + "bench-echo", batch_size=50
    )


class Running:
    """Runtimes running until ``close``; ``check`` raises if one ended on its own."""

    def __init__(self, runtimes: Sequence[StageRuntime]) -> None:
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        for runtime in runtimes:
            self.add(runtime)

    def add(self, runtime: StageRuntime) -> None:
        self.tasks.append(asyncio.create_task(runtime.run(self.stop)))

    def check(self) -> None:
        for task in self.tasks:
            if task.done():
                task.result()
                raise RuntimeError("a stage runtime stopped by itself")

    async def close(self) -> None:
        self.stop.set()
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*self.tasks, return_exceptions=True)


@dataclass(frozen=True)
class Seen:
    at: float  # perf_counter when the bench's consumer fetched it
    id: str
    type: str
    subject: str
    data: dict[str, Any]


class Watcher:
    """A consumer of ``sevpipe.actions`` and ``bench.echo`` in a group of its own: every event,
    raw (repeats included), with when it was fetched."""

    def __init__(self, eventlog: EventLog, group: str) -> None:
        self.log = eventlog
        self.group = group
        self.seen: list[Seen] = []
        self.first: dict[tuple[str, str], float] = {}  # (type, subject) -> first fetched
        self.decided: dict[str, float] = {}  # subject -> first decided (one action each)
        self._tick = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Watcher:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            async with asyncio.timeout(WAIT):
                await self._task

    async def _run(self) -> None:
        sub = self.log.subscribe([TOPIC_ACTIONS, ECHO_OUT], self.group)
        try:
            while not self._stop.is_set():
                records = await sub.fetch(1000, max_wait=0.2)
                now = time.perf_counter()
                for record in records:
                    env = record.envelope
                    self.seen.append(Seen(now, env.id, env.type, env.subject, env.data))
                    self.first.setdefault((env.type, env.subject), now)
                    if env.type in DECIDED:
                        self.decided.setdefault(env.subject, now)
                if records:
                    tick, self._tick = self._tick, asyncio.Event()
                    tick.set()
        finally:
            await sub.close()

    async def first_of(self, kind: str, subject: str, running: Running) -> float:
        """When the first event of type ``kind`` (or "decided": any of DECIDED) about
        ``subject`` was fetched, waiting for it."""
        key = (kind, subject)
        if kind == "decided":
            await self.until(lambda: subject in self.decided, running, f"{subject} decided")
            return self.decided[subject]
        await self.until(lambda: key in self.first, running, f"{kind} about {subject}")
        return self.first[key]

    async def until(
        self, done: Callable[[], bool], running: Running, what: str, within: float = WAIT
    ) -> None:
        """Until ``done()`` holds, checked on every batch the watcher fetches."""
        deadline = time.monotonic() + within
        while True:
            tick = self._tick
            if done():
                return
            running.check()
            if self._task is not None and self._task.done():
                self._task.result()
                raise RuntimeError("the bench's consumer stopped")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"not in {within:.0f} s: {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tick.wait(), min(left, 0.5))


def held(runtimes: Sequence[StageRuntime]) -> list[set[int]]:
    """The partitions of ``sevpipe.incidents`` each runtime holds (its lag gauges)."""
    return [{p for t, p in rt.lag() if t == TOPIC_INCIDENTS} for rt in runtimes]


async def until_assigned(
    runtimes: Sequence[StageRuntime], running: Running, partitions: int
) -> list[set[int]]:
    """Until the replicas hold every partition of ``sevpipe.incidents`` between them, each
    some, so the storm does not land in a rebalance of our own making; who holds which."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        running.check()
        now = held(runtimes)
        union = set().union(*now)
        if len(union) == partitions and all(now) and sum(map(len, now)) == len(union):
            return now
        await asyncio.sleep(0.1)
    raise TimeoutError("the stage replicas did not share the partitions of sevpipe.incidents")


async def warm_up(
    bench: Clients, watcher: Watcher, running: Running, *, target: str, n: int
) -> None:
    """Incidents whose playbook step is in mode never (skipped before the guard is asked)
    and as many echoes: every consumer joined and fetching."""
    stage = [opened(WARMUP, NAMESPACE, target) for _ in range(n)]
    echo = [opened(WARMUP, NAMESPACE, target) for _ in range(n)]
    await bench.store.restore([(TOPIC_INCIDENTS, e) for e in stage])
    await bench.log.append(TOPIC_INCIDENTS, stage, dedup_keys=[e.id for e in stage])
    await bench.log.append(ECHO_IN, echo, dedup_keys=[e.id for e in echo])

    def done() -> bool:
        return all(e.subject in watcher.decided for e in stage) and all(
            (ECHO_TYPE, e.subject) in watcher.first for e in echo
        )

    await watcher.until(done, running, "the warm-up incidents decided and echoed")


def ms(values: Sequence[float]) -> str:
    return f"p50 {pct(values, 0.5):,.1f} / p99 {pct(values, 0.99):,.1f} ms"


# -- 1. latency -------------------------------------------------------------------------------


@dataclass
class Latency:
    label: str
    stage_ms: list[float] = field(default_factory=list)  # appended -> first action.started
    run_ms: list[float] = field(default_factory=list)  # appended -> the action's run began
    baseline_ms: list[float] = field(default_factory=list)  # appended -> echoed
    violations: list[str] = field(default_factory=list)
    checked: str = ""  # what the apiserver showed afterwards (kube)

    def ratio(self, q: float) -> float:
        return pct(self.stage_ms, q) / pct(self.baseline_ms, q)

    def lines(self) -> list[str]:
        return [
            f"  latency [{self.label}], {len(self.stage_ms)} incidents one at a time:",
            f"    incident.opened appended -> 1st action.started seen  {ms(self.stage_ms)}",
            f"    incident.opened appended -> the action's run begins  {ms(self.run_ms)}",
            f"    baseline: appended -> echoed by the trivial stage     {ms(self.baseline_ms)}",
            f"    ratio stage/baseline: p50 {self.ratio(0.5):.2f}, p99 {self.ratio(0.99):.2f}",
            *([f"    {self.checked}"] if self.checked else []),
            *(f"    VIOLATION: {v}" for v in self.violations),
        ]


async def latency(
    bench: Clients,
    watcher: Watcher,
    running: Running,
    runs: Runs,
    *,
    label: str,
    alertname: str,
    namespace: str,
    targets: Sequence[str],
    warmup: int,
) -> tuple[Latency, dict[str, str]]:
    """One incident after another, each on a target of its own (no cooldown binds), the
    baseline's echo of an incident just before each; the first ``warmup`` not measured.
    Also returns target -> the id of the action that ran on it."""
    result = Latency(label)
    ran: dict[str, str] = {}
    for i, target in enumerate(targets):
        echo = opened(alertname, namespace, target)
        began = time.perf_counter()
        await bench.log.append(ECHO_IN, [echo], dedup_keys=[echo.id])
        echoed = await watcher.first_of(ECHO_TYPE, echo.subject, running) - began

        env = opened(alertname, namespace, target)
        await bench.store.restore([(TOPIC_INCIDENTS, env)])  # the classifier's, before it
        began = time.perf_counter()
        await bench.log.append(TOPIC_INCIDENTS, [env], dedup_keys=[env.id])
        await watcher.first_of("decided", env.subject, running)
        said = [s for s in watcher.seen if s.subject == env.subject]
        final = next(s for s in said if s.type in DECIDED)
        if final.type != "action.succeeded":
            reason = final.data.get("reason")
            result.violations.append(f"{env.subject} on {target}: {final.type} ({reason})")
            continue
        action_id = str(final.data["action_id"])
        ran[target] = action_id
        if i >= warmup:
            started = watcher.first[("action.started", env.subject)]
            result.baseline_ms.append(echoed * 1000)
            result.stage_ms.append((started - began) * 1000)
            result.run_ms.append((runs.entered[action_id] - began) * 1000)
    doubled = {a: n for a, n in runs.by_action.items() if n > 1}
    if doubled:
        result.violations.append(f"actions run more than once: {doubled}")
    return result, ran


@contextlib.asynccontextmanager
async def kube_deployments(kubeconfig: str, n: int) -> AsyncIterator[tuple[str, list[str]]]:
    """A temp namespace with ``n`` Deployments (no kubelet: Pods stay Pending), deleted after."""
    api = await config.new_client_from_config(config_file=kubeconfig)
    async with api:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        namespace = f"sevpipe-bench-{uuid.uuid4().hex[:10]}"
        await core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
        )
        try:
            names = deployment_names(n, "web")
            for i in range(0, n, 10):
                await asyncio.gather(
                    *(
                        apps.create_namespaced_deployment(namespace, _deployment(name))
                        for name in names[i : i + 10]
                    )
                )
            yield namespace, names
        finally:
            with contextlib.suppress(ApiException):
                await core.delete_namespace(namespace)


def _deployment(name: str) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    automount_service_account_token=False,
                    containers=[client.V1Container(name="web", image="registry.invalid/web:1")],
                ),
            ),
        ),
    )


async def check_restarts(kubeconfig: str, namespace: str, ran: dict[str, str]) -> list[str]:
    """At the apiserver: each Deployment restarted exactly once, by the action that ran on it
    (generation 2 after its creation, the template marked with that action's id)."""
    wrong = []
    api = await config.new_client_from_config(config_file=kubeconfig)
    async with api:
        apps = client.AppsV1Api(api)
        listed = await apps.list_namespaced_deployment(namespace)
        for dep in listed.items:
            name = dep.metadata.name
            marks = (
                (dep.spec.template.metadata.annotations or {}) if dep.spec.template.metadata else {}
            )
            mark = marks.get(RESTARTED_AT)
            if name not in ran:
                if dep.metadata.generation != 1 or mark is not None:
                    wrong.append(
                        f"{name} changed by no action: generation {dep.metadata.generation}"
                    )
                continue
            if dep.metadata.generation != 2 or mark != f"sevpipe-action-{ran[name]}":
                wrong.append(f"{name}: generation {dep.metadata.generation}, restartedAt {mark}")
    return wrong


async def latency_part(
    backend: str, workdir: Path, args: argparse.Namespace, kubeconfig: str | None
) -> list[Latency]:
    """The typical case: ``bench.restart``, then (with a kubeconfig) the real restart."""
    async with contextlib.AsyncExitStack() as stack:
        install = await stack.enter_async_context(Install(backend, "latency", workdir))
        n = WARMUP_ROUNDS + args.incidents
        kube_n = WARMUP_ROUNDS + args.kube_incidents if kubeconfig else 0
        runs, kube_runs = Runs(args.delay), Runs()
        catalogue = Catalogue()
        catalogue.register(counting_action(runs))
        namespaces: dict[str, Sequence[str]] = {NAMESPACE: deployment_names(n)}
        kube_ns = ""
        if kubeconfig:
            kube_ns, kube_names = await stack.enter_async_context(
                kube_deployments(kubeconfig, kube_n)
            )
            namespaces[kube_ns] = kube_names

            async def api() -> client.ApiClient:  # as sevpipe/actions_wiring.py makes them
                return await config.new_client_from_config(config_file=kubeconfig)

            catalogue.register(counted(kubernetes_catalogue(api).get(KUBE_ACTION), kube_runs))
        inv = inventory(namespaces)
        # Every incident on a target of its own and a rate that does not bind: nothing but
        # the stage's own work between the append and the start.
        limits = Limits(rate_per_hour=2 * (n + kube_n) + 10)
        stage_clients = await install.open()
        bench = await install.open()
        runtimes = [
            actions_runtime(
                stage_clients,
                catalogue=catalogue,
                inventory=inv,
                limits=limits,
                group_prefix=install.groups,
            ),
            echo_runtime(stage_clients.log, install.groups),
        ]
        running = Running(runtimes)
        watcher = Watcher(bench.log, install.groups + "bench-watch").start()
        try:
            await warm_up(bench, watcher, running, target=deployment_names(1)[0], n=3)
            measured = []
            lat, _ = await latency(
                bench,
                watcher,
                running,
                runs,
                label=f"{BENCH_ACTION}, awaits {args.delay * 1000:g} ms",
                alertname=OUTAGE,
                namespace=NAMESPACE,
                targets=deployment_names(n),
                warmup=WARMUP_ROUNDS,
            )
            for line in lat.lines():
                print(line, flush=True)
            measured.append(lat)
            if kubeconfig:
                lat, ran = await latency(
                    bench,
                    watcher,
                    running,
                    kube_runs,
                    label=f"{KUBE_ACTION} on the kube-apiserver",
                    alertname=KUBE_OUTAGE,
                    namespace=kube_ns,
                    targets=namespaces[kube_ns],
                    warmup=WARMUP_ROUNDS,
                )
                wrong = await check_restarts(kubeconfig, kube_ns, ran)
                lat.checked = (
                    f"apiserver: {len(ran)} Deployments restarted, each exactly once by its"
                    f" own action (generation 2, its mark): {len(ran) - len(wrong)} of {len(ran)}"
                )
                lat.violations += wrong
                for line in lat.lines():
                    print(line, flush=True)
                measured.append(lat)
        finally:
            await running.close()
            await watcher.stop()
        return measured


# -- 2. the storm -----------------------------------------------------------------------------


@dataclass
class Storm:
    backend: str
    replicas: int
    incidents: int
    targets: int
    rate: int
    max_in_flight: int
    cooldown: float
    seconds: float = float("nan")  # appended -> every action decided
    baseline_seconds: float = float("nan")  # appended -> every echo seen
    decided: int = 0
    runs: Counter[str] = field(default_factory=Counter)  # raw runs per action id
    max_runs_in_an_hour: int = 0
    seen_in_flight: int = 0
    targets_run_twice: int = 0
    succeeded: int = 0
    started_events: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # skipped, by the guard's reason
    per_replica: list[int] = field(default_factory=list)  # storm incidents, by partitions held
    rebalanced: bool = False  # the partitions changed hands during the storm
    joined: bool = False  # the last replica started only once the storm was under way
    repeated_events: int = 0  # events seen more than once (same id), raw
    violations: list[str] = field(default_factory=list)  # safety: the run exits 1
    anomalies: list[str] = field(default_factory=list)  # odd, not unsafe: printed

    @property
    def label(self) -> str:
        joined = ", the 2nd joining mid-storm" if self.joined else ""
        return f"{self.replicas} replica{'s' if self.replicas > 1 else ''}{joined}"

    @property
    def executed(self) -> int:
        return sum(self.runs.values())

    @property
    def ratio(self) -> float:
        return self.seconds / self.baseline_seconds

    def lines(self) -> list[str]:
        skipped = sum(self.reasons.values())
        why = ", ".join(f"{k} {n}" for k, n in self.reasons.most_common())
        most = max(self.runs.values(), default=0)
        verdict = "OK" if not self.violations else "VIOLATED"
        return [
            f"  storm [{self.backend}, {self.label}]: {self.incidents:,} incidents"
            f" in one append over {self.targets} targets; limits {self.rate}/h,"
            f" {self.max_in_flight} in flight, cooldown {self.cooldown / 60:g} min",
            f"    all {self.decided:,} decided in {self.seconds:.2f} s"
            f" ({self.decided / self.seconds:,.0f}/s); baseline (trivial stage, same batch)"
            f" {self.baseline_seconds:.2f} s; ratio {self.ratio:.1f}",
            f"    ran {self.executed} (limit {self.rate}/h; most in one hour"
            f" {self.max_runs_in_an_hour}); most runs of one action id {most};"
            f" most in flight {self.seen_in_flight} (limit {self.max_in_flight});"
            f" targets run twice within the cooldown {self.targets_run_twice}",
            f"    events: {self.succeeded} succeeded, {self.started_events} started (raw),"
            f" {skipped} skipped by the guard ({why}); {self.repeated_events} seen twice",
            *([f"    {self.replication()}"] if self.replicas > 1 else []),
            f"    invariants: {verdict}",
            *(f"    VIOLATION: {v}" for v in self.violations),
            *(f"    NOTE: {a}" for a in self.anomalies),
        ]

    def replication(self) -> str:
        if self.joined:
            moved = "partitions moved" if self.rebalanced else "NO rebalance seen"
            return f"replica 2 joined after {self.rate // 5 or 1} runs: {moved} under the storm"
        held = f"storm incidents per replica (by the partitions each held) {self.per_replica}"
        return held + (", REBALANCED meanwhile" if self.rebalanced else "")


async def storm(
    backend: str,
    workdir: Path,
    *,
    incidents: int,
    targets: int,
    rate: int,
    max_in_flight: int,
    replicas: int = 1,
    join: bool = False,
    delay: float = 0.005,
) -> Storm:
    """``incidents`` incident.opened in one append over ``targets`` Deployments, the guard's
    limits binding; what ran, what was said, and whether the limits held. ``join``: the last
    replica starts once a fifth of the rate limit has run (a scale-out under load: partitions
    move, and what the first replica fetched but had not committed is delivered again)."""
    if replicas > 1 and backend != "production":
        raise ValueError("replicas share a consumer group on the production backends only")
    limits = Limits(rate_per_hour=rate, max_in_flight=max_in_flight)
    result = Storm(
        backend,
        replicas,
        incidents,
        targets,
        rate,
        max_in_flight,
        limits.cooldown_of(BENCH_ACTION, "mutating"),
    )
    runs = Runs(delay)
    names = deployment_names(targets)
    inv = inventory({NAMESPACE: names})
    result.joined = join and replicas > 1
    first = replicas - 1 if result.joined else replicas
    async with Install(backend, f"storm{replicas}{'j' if join else ''}", workdir) as install:
        stages = [await install.open() for _ in range(replicas)]
        bench = await install.open()
        runtimes = []
        for clients in stages:  # a catalogue each, as each process has; one count for all
            catalogue = Catalogue()
            catalogue.register(counting_action(runs))
            runtimes.append(
                actions_runtime(
                    clients,
                    catalogue=catalogue,
                    inventory=inv,
                    limits=limits,
                    group_prefix=install.groups,
                )
            )
        partitions = int(getattr(bench.log, "partitions", 1))
        running = Running([*runtimes[:first], echo_runtime(stages[0].log, install.groups)])
        watcher = Watcher(bench.log, install.groups + "bench-watch").start()
        try:
            assigned = [{0}]  # embedded: one partition, one member
            if install.production:
                assigned = await until_assigned(runtimes[:first], running, partitions)
            await warm_up(bench, watcher, running, target=names[0], n=6 * first)

            echoes = [opened(OUTAGE, NAMESPACE, names[i % targets]) for i in range(incidents)]
            began = time.perf_counter()
            await bench.log.append(ECHO_IN, echoes, dedup_keys=[e.id for e in echoes])
            await watcher.until(
                lambda: all((ECHO_TYPE, e.subject) in watcher.first for e in echoes),
                running,
                "the baseline's echoes",
                STORM_WAIT,
            )
            result.baseline_seconds = (
                max(watcher.first[(ECHO_TYPE, e.subject)] for e in echoes) - began
            )

            envs = [opened(OUTAGE, NAMESPACE, names[i % targets]) for i in range(incidents)]
            await bench.store.restore([(TOPIC_INCIDENTS, e) for e in envs])
            began = time.perf_counter()
            await bench.log.append(TOPIC_INCIDENTS, envs, dedup_keys=[e.id for e in envs])
            if result.joined:  # while the runs are still going on
                await watcher.until(
                    lambda: runs.total >= max(1, rate // 5), running, "runs", STORM_WAIT
                )
                running.add(runtimes[-1])
            await watcher.until(
                lambda: all(e.subject in watcher.decided for e in envs),
                running,
                "every action of the storm decided",
                STORM_WAIT,
            )
            result.seconds = max(watcher.decided[e.subject] for e in envs) - began
            await asyncio.sleep(SETTLE)
            await check_book(result, bench.store, runs)
            result.rebalanced = install.production and held(runtimes) != [
                *assigned,
                *([set()] if result.joined else []),
            ]
        finally:
            await running.close()
            await watcher.stop()
        where = [partition_index(e.subject.encode(), partitions) for e in envs]
        result.per_replica = [sum(1 for p in where if p in mine) for mine in assigned]
        result.repeated_events = len(watcher.seen) - len({s.id for s in watcher.seen})
    judge(result, runs, watcher, {e.subject for e in envs})
    return result


async def check_book(result: Storm, store: IncidentStore, runs: Runs) -> None:
    """The actions book (what the API shows) says succeeded of every action that ran."""
    if not isinstance(store, ActionsBook):
        return
    for action_id in runs.by_action:
        stored = await store.get_action(action_id)
        state = stored.state if stored is not None else "nothing"
        if state != "succeeded":
            why = f" ({stored.reason})" if stored is not None and stored.reason else ""
            result.anomalies.append(f"{action_id} ran, but the actions book says {state}{why}")


def judge(result: Storm, runs: Runs, watcher: Watcher, subjects: set[str]) -> None:
    """The guard's limits, and every action accounted for, from raw counts."""
    _limits_held(result, runs)
    said: dict[str, list[tuple[str, str, str]]] = {}  # action id -> (event id, type, reason)
    for seen in watcher.seen:
        if seen.subject in subjects and seen.type.startswith("action."):
            event = (seen.id, seen.type, str(seen.data.get("reason") or ""))
            said.setdefault(str(seen.data["action_id"]), []).append(event)
    result.decided = sum(1 for s in subjects if s in watcher.decided)
    if result.decided < len(subjects):
        result.violations.append(f"{len(subjects) - result.decided} incidents undecided")
    if len(said) != len(subjects):
        result.violations.append(f"{len(said)} action ids for {len(subjects)} one-step incidents")
    for action, events in said.items():
        _accounted(result, action, runs.by_action[action], events)


def _limits_held(result: Storm, runs: Runs) -> None:
    v = result.violations
    result.runs = Counter(runs.by_action)
    starts = runs.starts()
    result.max_runs_in_an_hour = max(
        (sum(1 for t in starts[i:] if t - s < HOUR) for i, s in enumerate(starts)), default=0
    )
    if result.max_runs_in_an_hour > result.rate:
        v.append(f"rate limit exceeded: {result.max_runs_in_an_hour} runs within an hour")
    twice = {a: n for a, n in runs.by_action.items() if n > 1}
    if twice:
        v.append(f"run more than once: {twice}")
    result.seen_in_flight = runs.max_in_flight
    if runs.max_in_flight > result.max_in_flight:
        v.append(f"concurrency exceeded: {runs.max_in_flight} in flight")
    for target, times in runs.by_target.items():
        ordered = sorted(times)
        if any(b - a < result.cooldown for a, b in itertools.pairwise(ordered)):
            result.targets_run_twice += 1
            v.append(f"cooldown broken on {target}: {len(times)} runs")


def _accounted(result: Storm, action: str, ran: int, events: list[tuple[str, str, str]]) -> None:
    """One action: run and said succeeded, or not run and skipped by the guard."""
    v = result.violations
    types = {t for _, t, _ in events}
    result.started_events += sum(1 for _, t, _ in events if t == "action.started")
    result.succeeded += "action.succeeded" in types
    if "action.failed" in types:
        v.append(f"{action} failed: {events}")
    if ran and "action.succeeded" not in types:
        v.append(f"{action} ran but was never said succeeded: {events}")
    if not ran and "action.succeeded" in types:
        v.append(f"{action} said succeeded but never ran")
    skips = list({i: r for i, t, r in events if t == "action.skipped"}.values())  # by id
    if skips and ran:
        result.anomalies.append(f"{action} ran and was also said skipped: {skips}")
    for reason in skips:
        kind = next((k for k, text in GUARD_REASONS.items() if text in reason), None)
        if kind is None:
            v.append(f"{action} skipped for a reason not the guard's: {reason}")
            continue
        result.reasons[kind] += 1
        if kind == "rate" and f"of {result.rate} " not in reason:
            v.append(f"a rate refusal names another limit: {reason}")


# -- the run ----------------------------------------------------------------------------------


@dataclass
class BackendRun:
    backend: str
    latencies: list[Latency] = field(default_factory=list)
    storms: list[Storm] = field(default_factory=list)
    error: str = ""

    @property
    def violations(self) -> list[str]:
        found = [v for lat in self.latencies for v in lat.violations]
        return found + [v for s in self.storms for v in s.violations]


DESCRIBED: Final = {
    "embedded": "EmbeddedLog + EmbeddedStore + EmbeddedEffectsLedger + LocalCoordinator",
    "production": "KafkaLog + PostgresStore + PostgresEffectsLedger + RedisCoordinator",
}


async def run_backend(
    backend: str, workdir: Path, args: argparse.Namespace, kubeconfig: str | None
) -> BackendRun:
    print(f"{backend}: {DESCRIBED[backend]}", flush=True)
    out = BackendRun(backend)
    try:
        if args.incidents:
            out.latencies = await latency_part(backend, workdir, args, kubeconfig)
        if args.storm:
            variants = [(1, False)]
            if backend == "production" and args.replicas > 1:
                variants += [(args.replicas, False), (args.replicas, True)]
            for replicas, join in variants:
                result = await storm(
                    backend,
                    workdir,
                    incidents=args.storm,
                    targets=args.targets,
                    rate=args.rate,
                    max_in_flight=args.max_in_flight,
                    replicas=replicas,
                    join=join,
                    delay=args.delay,
                )
                for line in result.lines():
                    print(line, flush=True)
                out.storms.append(result)
    except Exception as exc:  # noqa: BLE001 - reported, and the run exits 1
        out.error = f"{type(exc).__name__}: {exc}"
        print(f"  {backend}: not measured: {out.error}", flush=True)
    return out


def summary(outcomes: Sequence[BackendRun]) -> None:
    rows: dict[str, dict[str, str]] = {}

    def put(row: str, backend: str, text: str) -> None:
        rows.setdefault(row, {})[backend] = text

    def p(values: Sequence[float]) -> str:
        return f"{pct(values, 0.5):.1f} / {pct(values, 0.99):.1f}"

    for out in outcomes:
        b = out.backend
        for lat in out.latencies:
            name = "kube-apiserver restart" if KUBE_ACTION in lat.label else BENCH_ACTION
            put(f"{name}: opened -> started, p50 / p99 ms", b, p(lat.stage_ms))
            put(f"{name}:   baseline (trivial stage), p50 / p99 ms", b, p(lat.baseline_ms))
            put(
                f"{name}:   ratio, p50 / p99",
                b,
                f"{lat.ratio(0.5):.2f} / {lat.ratio(0.99):.2f}",
            )
        for s in out.storms:
            tag = f"storm {s.incidents:,}, {s.label.replace('the 2nd joining', 'one joins')}"
            put(
                f"{tag}: all decided (baseline), s",
                b,
                f"{s.seconds:.2f} ({s.baseline_seconds:.2f})",
            )
            put(f"{tag}:   ratio", b, f"{s.ratio:.1f}")
            put(
                f"{tag}:   ran / limit; max per id; in flight",
                b,
                f"{s.executed}/{s.rate}; {max(s.runs.values(), default=0)};"
                f" {s.seen_in_flight}/{s.max_in_flight}",
            )
            verdict = "OK" if not s.violations else "VIOLATED"
            notes = f" ({len(s.anomalies)} notes)" if s.anomalies else ""
            put(f"{tag}:   invariants", b, verdict + notes)
    backends = [o.backend for o in outcomes]
    width = max((len(r) for r in rows), default=10)
    print()
    print(f"{'actions stage':<{width}}  " + "  ".join(f"{b:>22}" for b in backends))
    for row, cells in rows.items():
        print(f"{row:<{width}}  " + "  ".join(f"{cells.get(b, '-'):>22}" for b in backends))


async def run_all(
    args: argparse.Namespace, backends: Sequence[str], kubeconfig: str | None
) -> list[BackendRun]:
    with tempfile.TemporaryDirectory(prefix="sevpipe-bench-actions-") as tmp:
        return [await run_backend(b, Path(tmp), args, kubeconfig) for b in backends]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--backend", choices=("both", "embedded", "production"), default="both", help="(both)"
    )
    p.add_argument("--incidents", type=int, default=200, help="incidents for latency (200)")
    p.add_argument(
        "--kube-incidents",
        type=int,
        default=50,
        help="incidents for latency on the kube-apiserver (50; 0: none), if SEVPIPE_KUBECONFIG",
    )
    p.add_argument("--storm", type=int, default=1000, help="incidents of the storm (1,000)")
    p.add_argument("--targets", type=int, default=200, help="Deployments the storm hits (200)")
    p.add_argument("--rate", type=int, default=50, help="restarts per hour allowed (50)")
    p.add_argument("--max-in-flight", type=int, default=1, help="mutations at once (1)")
    p.add_argument("--replicas", type=int, default=2, help="stage replicas, production (2)")
    p.add_argument("--delay", type=float, default=0.005, help="the action's await, s (0.005)")
    args = p.parse_args(argv)
    backends = ["embedded", "production"] if args.backend == "both" else [args.backend]
    missing = [name for name in SERVICES if not os.environ.get(name)]
    if "production" in backends and missing:
        print(
            f"set {', '.join(missing)} (scripts/with-services does), or --backend embedded",
            file=sys.stderr,
        )
        return 2
    kubeconfig = os.environ.get("SEVPIPE_KUBECONFIG") or None
    if not args.kube_incidents:
        kubeconfig = None
    print(
        f"actions stage, live: {args.incidents} incidents one at a time"
        f"{f' (+{args.kube_incidents} on the kube-apiserver)' if kubeconfig else ''};"
        f" storm of {args.storm:,} over {args.targets} targets, {args.rate}/h,"
        f" {args.max_in_flight} in flight, cooldown 10 min",
        flush=True,
    )
    outcomes = uvloop.run(run_all(args, backends, kubeconfig))
    summary(outcomes)
    failed = [v for o in outcomes for v in o.violations]
    errors = [f"{o.backend}: {o.error}" for o in outcomes if o.error]
    for line in failed + errors:
        print(f"FAILED: {line}")
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
