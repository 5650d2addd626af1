"""Approvals end to end against the real kube-apiserver and controller-manager: the SEV-0
outage playbook's emergency HPA waits for a person; an approver approves it with
``sevpipe approve`` and the Deployment is scaled (by the HPA controller) to the inventory's
capped size; ``sevpipe deny`` leaves another as it was; an approval nobody gives expires.
The Alertmanager credential and a viewer cannot approve. Counted on the API server."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from kubernetes_asyncio import client, config
from services import Services

from .backends import EMBEDDED, Backend, backend_named
from .harness import Launcher, sevpipe
from .test_act import NAME, action_events, origin_namespace, outage

pytestmark = pytest.mark.e2e

DEADLINE = 120.0
AM_TOKEN = "alertmanager-token"
T = TypeVar("T")


@pytest.fixture
def production(request: pytest.FixtureRequest) -> Any:
    with backend_named("production", request) as backend:
        yield backend


@pytest.fixture
async def kube(services: Services) -> AsyncIterator[client.ApiClient]:
    assert services.kubeconfig, "scripts/test-services up provides SEVPIPE_KUBECONFIG"
    api = await config.new_client_from_config(config_file=services.kubeconfig)
    made: list[str] = []
    api.made = made  # type: ignore[attr-defined]
    try:
        yield api
    finally:
        for ns in made:
            await client.CoreV1Api(api).delete_namespace(ns)
        await api.close()


async def namespace(api: client.ApiClient, prefix: str) -> str:
    ns = await origin_namespace(api, prefix)
    api.made.append(ns)  # type: ignore[attr-defined]
    return ns


def write_settings(tmp_path: Path, services: Services, namespaces: list[str], **more: Any) -> Path:
    inventory = tmp_path / "inventory.yaml"
    deployment = {"max_replicas": 4, "hpa": {"min": 2, "max": 4}}
    inventory.write_text(
        yaml.safe_dump(
            {
                "default_namespace": namespaces[0],
                "namespaces": {ns: {"deployments": {NAME: deployment}} for ns in namespaces},
            }
        )
    )
    settings = tmp_path / "sevpipe.yaml"
    body = {
        "inventory_file": str(inventory),
        "actions_mode": "live",
        "kubeconfig": services.kubeconfig,
        **more,
    }
    settings.write_text(yaml.safe_dump(body))
    return settings


async def until(what: str, probe: Callable[[], Awaitable[T | None]]) -> T:
    async with asyncio.timeout(DEADLINE):
        while True:
            found = await probe()
            if found is not None:
                return found
            await asyncio.sleep(0.5)
    raise AssertionError(what)  # pragma: no cover - the timeout raises first


async def scale_steps(data: Path, backend: Backend, ns: str) -> list[dict[str, Any]]:
    """The emergency HPA step's raw events for the incident of ``ns``, in log order."""
    return [
        e["data"]
        for e in await action_events(data, backend)
        if e["data"]["step"] == "scale" and e["data"]["target"]["namespace"] == ns
    ]


async def post(url: str, body: bytes, token: str) -> tuple[int, str]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_approve_scales_to_the_capped_size_and_deny_leaves_it(
    production: Backend,
    launcher: Launcher,
    tmp_path: Path,
    kube: client.ApiClient,
    services: Services,
) -> None:
    ns_yes, ns_no = await namespace(kube, "approve"), await namespace(kube, "deny")
    (tmp_path / "alex").write_text("alex-token\n")
    settings = write_settings(
        tmp_path,
        services,
        [ns_yes, ns_no],
        auth_token=AM_TOKEN,
        operators=[
            {"name": "alex", "token_file": str(tmp_path / "alex"), "roles": ["approver"]},
            {
                "name": "vic",
                "token_sha256": hashlib.sha256(b"vic-token").hexdigest(),
                "roles": ["viewer"],
            },
        ],
    )
    args, env = ("--config", str(settings)), production.env
    start = launcher.start
    ingest = await asyncio.to_thread(start, tmp_path / "i", *args, env=env, command="ingest")
    await asyncio.to_thread(start, tmp_path / "c", *args, env=env, command="classify")
    await asyncio.to_thread(start, tmp_path / "a", *args, env=env, command="act")
    for ns in (ns_yes, ns_no):
        assert (await post(ingest.alerts_url, outage(ns), AM_TOKEN))[0] == 200

    async def asked(ns: str) -> str | None:
        steps = await scale_steps(tmp_path / "a", production, ns)
        return steps[0]["action_id"] if steps else None

    yes, no = (
        await until("asked", lambda: asked(ns_yes)),
        await until("asked", lambda: asked(ns_no)),
    )
    cli = ("--url", ingest.base_url)
    listed = await asyncio.to_thread(
        sevpipe, "actions", "list", "--status", "awaiting_approval", "--token", "vic-token", *cli
    )
    assert listed.returncode == 0, listed.stderr
    assert {yes, no} <= {line.split()[0] for line in listed.stdout.splitlines()[1:]}

    # Neither Alertmanager's credential nor a viewer may approve.
    approve_url = f"{ingest.base_url}/api/v1/actions/{yes}/approve"
    assert (await post(approve_url, b"{}", AM_TOKEN))[0] == 403
    refused = await asyncio.to_thread(sevpipe, "approve", yes, "--token", "vic-token", *cli)
    assert (refused.returncode, refused.stderr) == (
        1,
        "sevpipe: 403: vic does not hold the approver role\n",
    )

    token = ("--token-file", str(tmp_path / "alex"))
    done = await asyncio.to_thread(
        sevpipe, "approve", yes, "--reason", "origin is down", *token, *cli
    )
    assert (done.returncode, done.stdout) == (0, f"{yes} approved by alex\n"), done.stderr
    done = await asyncio.to_thread(
        sevpipe, "deny", no, "--reason", "a deploy fixes it", *token, *cli
    )
    assert (done.returncode, done.stdout) == (0, f"{no} denied by alex\n"), done.stderr

    async def ran() -> list[str] | None:
        states = [s["state"] for s in await scale_steps(tmp_path / "a", production, ns_yes)]
        return states if "succeeded" in states or "failed" in states else None

    assert await until("the approved HPA ran", ran) == [
        "awaiting_approval",
        "approved",
        "started",
        "succeeded",
    ]
    autoscaling, apps = client.AutoscalingV2Api(kube), client.AppsV1Api(kube)
    [hpa] = (await autoscaling.list_namespaced_horizontal_pod_autoscaler(ns_yes)).items
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (4, 4)  # asked 6..20, capped

    async def scaled() -> int | None:
        dep = await apps.read_namespaced_deployment(NAME, ns_yes)
        return dep.spec.replicas if dep.spec.replicas != 2 else None

    assert await until("the HPA controller scaled it", scaled) == 4

    denied = await scale_steps(tmp_path / "a", production, ns_no)
    assert [s["state"] for s in denied] == ["awaiting_approval", "denied"]
    assert (denied[-1]["actor"], denied[-1]["reason"]) == ("alex", "a deploy fixes it")
    assert (await autoscaling.list_namespaced_horizontal_pod_autoscaler(ns_no)).items == []
    assert (await apps.read_namespaced_deployment(NAME, ns_no)).spec.replicas == 2


async def test_an_approval_nobody_gives_expires(
    launcher: Launcher, tmp_path: Path, kube: client.ApiClient, services: Services
) -> None:
    ns = await namespace(kube, "expire")
    settings = write_settings(tmp_path, services, [ns], approval_ttl="2s")
    server = await asyncio.to_thread(
        launcher.start, tmp_path / "d", "--config", str(settings), env=EMBEDDED.env
    )
    assert (await post(server.alerts_url, outage(ns), ""))[0] == 200

    async def expired() -> list[dict[str, Any]] | None:
        steps = await scale_steps(tmp_path / "d", EMBEDDED, ns)
        return steps if steps and steps[-1]["state"] == "expired" else None

    steps = await until("the approval expired", expired)
    assert [s["state"] for s in steps] == ["awaiting_approval", "expired"]
    assert steps[-1]["reason"] == "nobody approved it within 2s"
    late = await asyncio.to_thread(
        sevpipe, "approve", steps[0]["action_id"], "--url", server.base_url
    )
    assert late.returncode == 1
    assert "is expired by sevpipe" in late.stderr
    hpas = await client.AutoscalingV2Api(kube).list_namespaced_horizontal_pod_autoscaler(ns)
    assert hpas.items == []
