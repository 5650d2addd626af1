"""1. Latency, the typical case: incidents one at a time, from the append of
``incident.opened`` to its first ``action.started``, against the trivial stage's echo; with a
kubeconfig, the real ``kubernetes.rollout_restart`` on the kube-apiserver too."""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from kubernetes_asyncio import client, config

from actions.catalogue import Catalogue
from actions.guard import Limits
from actions.kubernetes import kubernetes_catalogue
from bench.actions.backends import Clients, Install
from bench.actions.counting import Runs, counted, counting_action
from bench.actions.kube import check_restarts, kube_deployments
from bench.actions.report import Latency, say
from bench.actions.scenario import (
    BENCH_ACTION,
    KUBE_ACTION,
    KUBE_OUTAGE,
    NAMESPACE,
    OUTAGE,
    append,
    deployment_names,
    inventory,
    opened,
)
from bench.actions.stages import ECHO_IN, ECHO_TYPE, Running, actions_runtime, echo_runtime
from bench.actions.watcher import DECIDED, Watcher, warm_up, watched
from schemas import TOPIC_INCIDENTS

WARMUP_ROUNDS: Final = 5


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
        await append(bench.log, ECHO_IN, [echo])
        echoed = await watcher.first_of(ECHO_TYPE, echo.subject, running) - began

        env = opened(alertname, namespace, target)
        await bench.store.restore([(TOPIC_INCIDENTS, env)])  # the classifier's, before it
        began = time.perf_counter()
        await append(bench.log, TOPIC_INCIDENTS, [env])
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
    doubled = runs.doubled()
    if doubled:
        result.violations.append(f"actions run more than once: {doubled}")
    return result, ran


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
        async with watched(runtimes, bench.log, install.groups) as (running, watcher):
            await warm_up(bench, watcher, running, target=deployment_names(1)[0], n=3)
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
            say(lat.lines())
            measured = [lat]
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
                say(lat.lines())
                measured.append(lat)
        return measured
