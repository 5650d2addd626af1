"""Two ``sevpipe act`` replicas (Kafka + PostgreSQL + Redis) over SEV-0 outages in several
namespaces; one is killed -9 in the middle of a restart, and a new one joins. Judged by the
kube-apiserver, not by sevpipe's own events: each Deployment restarted exactly once (its
generation), and exactly one successful PATCH of each in the audit log, counted raw.

The kill moments: ``planned``, as soon as a replica has logged ``action.planned`` of a restart
(admitted by the guard, its cooldown started; ``action.started`` and the ledger's claim come
next, and the kill usually lands between them); ``started``, as soon as a replica has put
``action.started`` of a restart on ``sevpipe.actions`` (its claim in the effects ledger and
its PATCH may or may not have followed); ``patched``, as soon as the audit log shows the
PATCH of a restart that replica started (whether the ledger recorded it is unknown).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Literal

import aiohttp
import pytest

from . import act_support
from .act_support import (
    Cluster,
    Playbooks,
    act_settings,
    action_events,
    actions_partitions,
    audit_entries,
    codes,
    deployment_patches,
    finished,
    outage,
    playbooks,
    post_alerts,
)
from .backends import Backend
from .harness import Launcher, Server

pytestmark = pytest.mark.e2e

INCIDENTS = 4
ADMIN = "admin"  # the user of the admin kubeconfig, which sevpipe acts with here
PARTITIONS = {0, 1, 2}  # sevpipe.incidents (kafka_partitions: 3)
GROUP_DEADLINE = 60.0
KILL_DEADLINE = 90.0
# A replica killed mid-action leaves the action held (its coordinator hold and its claim in the
# effects ledger) for actions_lease (15 s here): the other replicas wait that out (retried
# with backoff of up to 30 s), then the restart's check decides.
SETTLE_DEADLINE = 180.0
RESTART_STARTED = re.compile(
    r"action kubernetes\.rollout_restart started: Deployment/([a-z0-9-]+)/origin-backend"
)
RESTART_PLANNED = re.compile(
    r"action kubernetes\.rollout_restart planned: Deployment/([a-z0-9-]+)/origin-backend"
)
Moment = Literal["planned", "started", "patched"]


production = act_support.production
cluster = act_support.cluster


async def both_consuming(replicas: list[Server]) -> None:
    """Until the replicas share the incidents' partitions, each with some: the group has
    settled, so the incidents are spread over both."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(GROUP_DEADLINE):
        while True:
            owned = [await actions_partitions(session, f"{r.base_url}/metrics") for r in replicas]
            if all(owned) and set().union(*owned) == PARTITIONS and sum(map(len, owned)) == 3:
                return
            await asyncio.sleep(0.2)


async def kill_mid_restart(
    replicas: list[Server], moment: Moment, audit_log: str
) -> tuple[Server, str]:
    """kill -9 the first replica to reach ``moment`` of a restart; it and the namespace."""
    async with asyncio.timeout(KILL_DEADLINE):
        while True:
            for replica in replicas:
                if moment == "planned" and (planned := RESTART_PLANNED.findall(replica.stderr())):
                    replica.kill()
                    return replica, planned[0]
                started = RESTART_STARTED.findall(replica.stderr())
                if not started:
                    continue
                if moment == "started":
                    replica.kill()
                    return replica, started[0]
                entries = await asyncio.to_thread(audit_entries, audit_log)
                for ns in started:
                    if any(200 <= c < 300 for c in codes(deployment_patches(entries, ns))):
                        replica.kill()
                        return replica, ns
            await asyncio.sleep(0.005)


async def settled(data: Path, backend: Backend, namespaces: list[str]) -> Playbooks:
    """The playbooks once every incident's has reached its last step."""
    async with asyncio.timeout(SETTLE_DEADLINE):
        while True:
            runs = playbooks(await action_events(data, backend))
            if finished(runs, namespaces):
                return runs
            await asyncio.sleep(1.0)


@pytest.mark.parametrize("moment", ["planned", "started", "patched"])
async def test_a_replica_killed_mid_restart_leaves_each_deployment_restarted_once(
    moment: Moment, production: Backend, cluster: Cluster, launcher: Launcher, tmp_path: Path
) -> None:
    namespaces = [await cluster.namespace("replicas") for _ in range(INCIDENTS)]
    args = act_settings(tmp_path, namespaces, cluster.kubeconfig)
    env = production.env
    start = launcher.start
    ingest = await asyncio.to_thread(start, tmp_path / "i", *args, env=env, command="ingest")
    await asyncio.to_thread(start, tmp_path / "c", *args, env=env, command="classify")
    replicas = [
        await asyncio.to_thread(start, tmp_path / f"a{n}", *args, env=env, command="act")
        for n in (1, 2)
    ]
    await both_consuming(replicas)

    await post_alerts(ingest.alerts_url, [outage(ns) for ns in namespaces])
    killed, ns_killed = await kill_mid_restart(replicas, moment, cluster.audit_log)
    await asyncio.to_thread(start, tmp_path / "a3", *args, env=env, command="act")

    runs = await settled(tmp_path / "a3", production, namespaces)
    entries = await asyncio.to_thread(audit_entries, cluster.audit_log)
    generations = {ns: await cluster.generation(ns) for ns in namespaces}
    patches = {ns: codes(deployment_patches(entries, ns, user=ADMIN)) for ns in namespaces}
    where = (
        f"killed pid {killed.proc.pid} at {moment} of the restart in {ns_killed}; "
        f"generations {generations}; PATCH codes {patches}; playbooks {runs}"
    )
    assert moment == "planned" or "started" in runs[ns_killed]["restart"], where
    for ns in namespaces:
        assert generations[ns] == 2, where  # restarted, and once
        # One PATCH went through: the audit log's entries, as many as there were requests.
        assert [c for c in patches[ns] if 200 <= c < 300] == [200], where
        assert "succeeded" in runs[ns]["restart"], where
        assert not {"failed", "skipped"} & set(runs[ns]["restart"]), where
