"""The stages under measure: the actions stage as ``sevpipe`` wires it, the trivial baseline
stage, and runtimes running until closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from prometheus_client import CollectorRegistry

from actions.catalogue import Catalogue
from actions.guard import Guard, Limits
from actions.inventory import Inventory
from actions.stage import CONSUMER_GROUP, ActionsStage
from bench.actions.backends import Clients
from bench.actions.scenario import append, playbooks
from eventlog import EventLog, Record
from runtime.stage import StageRuntime
from schemas import TOPIC_INCIDENTS, Envelope, derived_event_id
from schemas.events import IncidentEnvelope

ECHO_IN: Final = "bench.incidents"
ECHO_OUT: Final = "bench.echo"
ECHO_TYPE: Final = "bench.echoed"
WAIT: Final = 60.0  # hang guard for one incident / one assignment; not a timing assert


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
        await append(self.log, ECHO_OUT, out)


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
