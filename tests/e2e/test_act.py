"""``sevpipe act`` on Kafka + PostgreSQL against the real kube-apiserver: a SEV-0 outage runs
the runbook's playbook live; the Deployment is restarted exactly once (its generation counted
on the API server), the emergency HPA waits for a person, the emergency image is never set;
kill -9 of ``sevpipe act`` and a restart change nothing more."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio import client, config
from services import Services, unique_name

from .backends import Backend, backend_named
from .harness import Launcher, one_alert_webhook, replay

pytestmark = pytest.mark.e2e

DEADLINE = 90.0
NAME = "origin-backend"


@pytest.fixture
def production(request: pytest.FixtureRequest) -> Any:
    with backend_named("production", request) as backend:
        yield backend


async def origin_namespace(api: client.ApiClient, prefix: str = "act") -> str:
    """A new namespace with a Deployment origin-backend of 2 (Pending: there is no kubelet)."""
    ns = unique_name(prefix).replace("_", "-").lower()[:50]
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    labels = {"app": NAME}
    body: Any = {
        "metadata": {"name": NAME},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "origin:1"}]},
            },
        },
    }
    await apps.create_namespaced_deployment(ns, body)  # the API takes a plain dict as well
    return ns


@pytest.fixture
async def cluster(services: Services) -> AsyncIterator[tuple[client.ApiClient, str]]:
    assert services.kubeconfig, "scripts/test-services up provides SEVPIPE_KUBECONFIG"
    api = await config.new_client_from_config(config_file=services.kubeconfig)
    ns = await origin_namespace(api)
    try:
        yield api, ns
    finally:
        await client.CoreV1Api(api).delete_namespace(ns)
        await api.close()


def outage(ns: str, *, deployment: str = NAME, alertname: str = "OriginDown") -> bytes:
    """A SEV-0 outage alert of ``ns`` whose label names ``deployment``: one incident per
    (namespace, alertname)."""
    labels = {
        "alertname": alertname,
        "impact": "outage",
        "namespace": ns,
        "deployment": deployment,
    }
    return one_alert_webhook(
        f'{{}}:{{namespace="{ns}", alertname="{alertname}"}}',
        labels,
        hashlib.sha256(f"{ns}{alertname}{deployment}".encode()).hexdigest()[:16],
        summary="origin is down",
        starts_at="2026-11-29T03:00:00Z",
    )


async def action_events(data: Path, backend: Backend) -> list[dict[str, Any]]:
    return await asyncio.to_thread(replay, data, "--topic", "sevpipe.actions", env=backend.env)


async def test_a_sev0_outage_restarts_origin_backend_once_and_waits_for_a_person(
    production: Backend,
    launcher: Launcher,
    tmp_path: Path,
    cluster: tuple[client.ApiClient, str],
    services: Services,
) -> None:
    api, ns = cluster
    apps = client.AppsV1Api(api)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "default_namespace": ns,
                "namespaces": {
                    ns: {"deployments": {NAME: {"max_replicas": 20, "hpa": {"min": 2, "max": 20}}}}
                },
            }
        )
    )
    settings = tmp_path / "sevpipe.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "inventory_file": str(inventory),
                "actions_mode": "live",
                "kubeconfig": services.kubeconfig,
            }
        )
    )
    args = ("--config", str(settings))
    env = production.env
    start = launcher.start
    ingest = await asyncio.to_thread(start, tmp_path / "i", *args, env=env, command="ingest")
    await asyncio.to_thread(start, tmp_path / "c", *args, env=env, command="classify")
    act = await asyncio.to_thread(start, tmp_path / "a", *args, env=env, command="act")
    async with aiohttp.ClientSession() as session:
        headers = {"Content-Type": "application/json"}
        async with session.post(ingest.alerts_url, data=outage(ns), headers=headers) as resp:
            assert resp.status == 200, await resp.text()

    async def settled() -> dict[str, list[str]]:
        async with asyncio.timeout(DEADLINE):
            while True:
                steps: dict[str, list[str]] = {}
                for e in await action_events(tmp_path / "a", production):
                    steps.setdefault(e["data"]["step"], []).append(e["data"]["state"])
                if steps.get("emergency-image") and steps.get("status"):
                    return steps
                await asyncio.sleep(0.5)

    steps = await settled()
    deployment = await apps.read_namespaced_deployment(NAME, ns)
    assert deployment.metadata.generation == 2  # one restart
    annotations = deployment.spec.template.metadata.annotations or {}
    assert annotations["kubectl.kubernetes.io/restartedAt"].startswith("sevpipe-action-")
    assert steps["restart"] == ["planned", "started", "succeeded"]
    assert steps["scale"] == ["awaiting_approval"]
    assert steps["emergency-image"] == ["skipped"]
    assert steps["top"] == ["planned", "started", "succeeded"]  # says metrics are absent
    assert steps["history"] == ["planned", "started", "succeeded"]

    act.kill()  # kill -9, then a new process over the same log and ledger
    await asyncio.to_thread(start, tmp_path / "a", *args, env=env, command="act")
    await asyncio.sleep(5.0)  # what it would redo, it would redo at once
    again = await apps.read_namespaced_deployment(NAME, ns)
    assert again.metadata.generation == 2  # not restarted twice
    hpas = await client.AutoscalingV2Api(api).list_namespaced_horizontal_pod_autoscaler(ns)
    assert hpas.items == []  # the emergency HPA waits for a person
