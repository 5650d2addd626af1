"""The guard against the real kube-apiserver, on the embedded backends (``sevpipe run`` with a
kubeconfig): dry-run records the exact request live mode sends and changes nothing; live, a
second incident on the same Deployment finds its cooldown running; an alert naming a
Deployment the cluster has but the inventory does not changes nothing and says why.
Generations are counted on the API server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio import client, config
from services import Services

from .backends import EMBEDDED
from .harness import Launcher, Server
from .test_act import NAME, action_events, origin_namespace, outage

pytestmark = pytest.mark.e2e

DEADLINE = 90.0
EVIL = "coredns-copy"


@pytest.fixture
async def cluster(services: Services) -> AsyncIterator[tuple[client.ApiClient, str]]:
    """A namespace with origin-backend, and a Deployment the inventory does not name."""
    assert services.kubeconfig, "scripts/test-services up provides SEVPIPE_KUBECONFIG"
    api = await config.new_client_from_config(config_file=services.kubeconfig)
    ns = await origin_namespace(api, "guard")
    body: Any = {
        "metadata": {"name": EVIL},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": EVIL}},
            "template": {
                "metadata": {"labels": {"app": EVIL}},
                "spec": {"containers": [{"name": "dns", "image": "dns:1"}]},
            },
        },
    }
    await client.AppsV1Api(api).create_namespaced_deployment(ns, body)
    try:
        yield api, ns
    finally:
        await client.CoreV1Api(api).delete_namespace(ns)
        await api.close()


def settings_file(tmp_path: Path, services: Services, ns: str, mode: str) -> Path:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "default_namespace": ns,
                "namespaces": {ns: {"deployments": {NAME: {"max_replicas": 4}}}},
            }
        )
    )
    path = tmp_path / f"{mode}.yaml"
    body = {
        "inventory_file": str(inventory),
        "actions_mode": mode,
        "kubeconfig": services.kubeconfig,
    }
    path.write_text(yaml.safe_dump(body))
    return path


async def post(server: Server, body: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(server.alerts_url, data=body, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def restart_steps(data: Path, count: int) -> list[dict[str, Any]]:
    """The raw events of the restart steps, once ``count`` of them have an outcome."""
    async with asyncio.timeout(DEADLINE):
        while True:
            steps = [
                e["data"]
                for e in await action_events(data, EMBEDDED)
                if e["data"]["step"] == "restart"
            ]
            done = [s for s in steps if s["state"] in ("succeeded", "failed", "skipped")]
            if len(done) >= count:
                return steps
            await asyncio.sleep(0.5)


async def generation(api: client.ApiClient, ns: str, name: str = NAME) -> int:
    dep = await client.AppsV1Api(api).read_namespaced_deployment(name, ns)
    return int(dep.metadata.generation)


async def test_dry_run_records_the_request_live_mode_sends_and_changes_nothing(
    launcher: Launcher, tmp_path: Path, cluster: tuple[client.ApiClient, str], services: Services
) -> None:
    api, ns = cluster
    dry = await asyncio.to_thread(
        launcher.start,
        tmp_path / "dry",
        "--config",
        str(settings_file(tmp_path, services, ns, "dry_run")),
    )
    await post(dry, outage(ns))
    [planned, skipped] = await restart_steps(tmp_path / "dry", 1)
    assert (planned["state"], skipped["state"]) == ("planned", "skipped")
    assert skipped["reason"] == "dry-run: the requests above were not sent"
    assert await generation(api, ns) == 1
    dry.kill()

    live = await asyncio.to_thread(
        launcher.start,
        tmp_path / "live",
        "--config",
        str(settings_file(tmp_path, services, ns, "live")),
    )
    await post(live, outage(ns))
    steps = await restart_steps(tmp_path / "live", 1)
    assert [s["state"] for s in steps] == ["planned", "started", "succeeded"]
    assert await generation(api, ns) == 2
    # The incident ids (and so the action ids and restart marks) differ between the two data
    # dirs; the request is the same but for that mark.
    [sent] = steps[0]["requests"]
    [would] = planned["requests"]
    assert (would["method"], would["path"]) == (sent["method"], sent["path"])
    assert would["path"] == f"/apis/apps/v1/namespaces/{ns}/deployments/{NAME}"
    mark = "kubectl.kubernetes.io/restartedAt"
    assert would["body"]["spec"]["template"]["metadata"]["annotations"][mark] == (
        f"sevpipe-action-{planned['action_id']}"
    )
    dep = await client.AppsV1Api(api).read_namespaced_deployment(NAME, ns)
    assert dep.spec.template.metadata.annotations[mark] == f"sevpipe-action-{steps[0]['action_id']}"


async def test_a_cooldown_stops_a_second_restart_and_the_inventory_a_forged_target(
    launcher: Launcher, tmp_path: Path, cluster: tuple[client.ApiClient, str], services: Services
) -> None:
    api, ns = cluster
    server = await asyncio.to_thread(
        launcher.start,
        tmp_path / "d",
        "--config",
        str(settings_file(tmp_path, services, ns, "live")),
    )
    await post(server, outage(ns))
    await restart_steps(tmp_path / "d", 1)
    assert await generation(api, ns) == 2
    # Another incident on the same Deployment (another alert name: another group).
    await post(server, outage(ns, alertname="OriginSlow"))
    # An alert whose label names a Deployment the cluster has and the inventory does not.
    await post(server, outage(ns, alertname="DnsDown", deployment=EVIL))
    steps = await restart_steps(tmp_path / "d", 3)
    outcomes = {s["incident_id"]: s for s in steps if s["state"] != "planned"}
    reasons = sorted(s["reason"] or "" for s in outcomes.values() if s["state"] == "skipped")
    assert len(reasons) == 2, steps
    assert sum("cooling down" in r for r in reasons) == 1, reasons
    assert sum(EVIL in r and "inventory" in r for r in reasons) == 1, reasons
    assert await generation(api, ns) == 2  # restarted once
    assert await generation(api, ns, EVIL) == 1  # never touched
