"""The realistic case's Deployments on the real kube-apiserver: a temp namespace of them,
and what the apiserver shows of their restarts afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from actions.kubernetes import RESTARTED_AT
from bench.actions.scenario import deployment_names


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
