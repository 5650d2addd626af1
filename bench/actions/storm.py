"""2. The storm, the worst case: incidents in one append with guard limits that bind, on one
replica or more (one joining mid-storm); the limits and once-per-action judged from raw
counts."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from pathlib import Path
from typing import Final

from actions.catalogue import Catalogue
from actions.guard import Limits
from bench.actions.backends import Install
from bench.actions.counting import Runs, counting_action
from bench.actions.report import Storm
from bench.actions.scenario import (
    BENCH_ACTION,
    NAMESPACE,
    append,
    deployment_names,
    inventory,
    outages,
)
from bench.actions.stages import (
    ECHO_IN,
    ECHO_TYPE,
    actions_runtime,
    echo_runtime,
    held,
    until_assigned,
)
from bench.actions.watcher import Watcher, warm_up, watched
from eventlog.kafka import partition_index
from schemas import TOPIC_INCIDENTS
from store import IncidentStore
from store.actions import ActionsBook

HOUR: Final = 3600.0
STORM_WAIT: Final = 300.0
SETTLE: Final = 1.0  # after the storm is decided: time for anything run or said twice to show
GUARD_REASONS: Final = {  # what each of the guard's refusals says (actions/guard.py)
    "cooldown": "cooling down, it ran less than",
    "rate": "per hour reached",
    "in flight": "mutating actions already in flight",
    "already running": ": already running",
}


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
        started = [*runtimes[:first], echo_runtime(stages[0].log, install.groups)]
        async with watched(started, bench.log, install.groups) as (running, watcher):
            assigned = [{0}]  # embedded: one partition, one member
            if install.production:
                assigned = await until_assigned(runtimes[:first], running, partitions)
            await warm_up(bench, watcher, running, target=names[0], n=6 * first)

            echoes = outages(names, incidents)
            began = time.perf_counter()
            await append(bench.log, ECHO_IN, echoes)
            await watcher.until(
                lambda: all((ECHO_TYPE, e.subject) in watcher.first for e in echoes),
                running,
                "the baseline's echoes",
                STORM_WAIT,
            )
            result.baseline_seconds = (
                max(watcher.first[(ECHO_TYPE, e.subject)] for e in echoes) - began
            )

            envs = outages(names, incidents)
            await bench.store.restore([(TOPIC_INCIDENTS, e) for e in envs])
            began = time.perf_counter()
            await append(bench.log, TOPIC_INCIDENTS, envs)
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
    twice = runs.doubled()
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
