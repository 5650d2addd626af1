"""The Kubernetes API for real: kube-apiserver and kube-controller-manager from
``scripts/test-services``, through kubernetes_asyncio, as remediation will use them.

There is no scheduler and no kubelet: the controller-manager turns a Deployment into
ReplicaSets and Pods, and the Pods stay Pending. Each run works in namespaces of its own, and
deletes them at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from services import Services, unique_name

T = TypeVar("T")

TIMEOUT = 60.0  # for the controllers to act; they do within seconds
POLL = 0.2
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
REVISION = "deployment.kubernetes.io/revision"
IMAGE = "registry.invalid/sevpipe/web:1"  # never pulled: no kubelet


@pytest.fixture
async def admin(services: Services) -> AsyncIterator[client.ApiClient]:
    assert services.kubeconfig, "no SEVPIPE_KUBECONFIG: scripts/test-services up provides it"
    api = await config.new_client_from_config(config_file=services.kubeconfig)
    async with api:
        yield api


@pytest.fixture
async def namespaces(admin: client.ApiClient) -> AsyncIterator[tuple[str, str]]:
    """Two fresh namespaces, deleted afterwards (with all they hold)."""
    core = client.CoreV1Api(admin)
    names = (unique_name("sevpipe-k8s"), unique_name("sevpipe-k8s-other"))
    created: list[str] = []
    try:
        for name in names:
            await core.create_namespace(client.V1Namespace(metadata=meta(name)))
            created.append(name)
        yield names
    finally:
        for name in created:
            try:
                await core.delete_namespace(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        for name in created:
            await eventually(partial(_gone, core, name), what=f"namespace {name} deleted")


async def _gone(core: client.CoreV1Api, name: str) -> bool:
    try:
        await core.read_namespace(name)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


async def eventually(
    check: Callable[[], Awaitable[T | None]], *, what: str, within: float = TIMEOUT
) -> T:
    """Polls CHECK until it returns something true; fails after WITHIN seconds, naming WHAT."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within:.0f}s: {what}", pytrace=False)
        await asyncio.sleep(POLL)


def meta(name: str, **labels: str) -> client.V1ObjectMeta:
    return client.V1ObjectMeta(name=name, labels=labels or None)


def deployment(name: str, replicas: int) -> client.V1Deployment:
    return client.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=meta(name, app=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels={"app": name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": name}),
                spec=client.V1PodSpec(
                    automount_service_account_token=False,
                    containers=[client.V1Container(name="web", image=IMAGE)],
                ),
            ),
        ),
    )


async def replica_sets(
    apps: client.AppsV1Api, namespace: str, name: str
) -> list[client.V1ReplicaSet]:
    """The ReplicaSets that the Deployment NAME owns, oldest revision first."""
    listed = await apps.list_namespaced_replica_set(namespace, label_selector=f"app={name}")
    owned = [
        rs
        for rs in listed.items
        if any(
            ref.kind == "Deployment" and ref.name == name
            for ref in rs.metadata.owner_references or []
        )
    ]
    return sorted(owned, key=lambda rs: int((rs.metadata.annotations or {}).get(REVISION, "0")))


async def pending_pods(core: client.CoreV1Api, namespace: str, name: str) -> list[client.V1Pod]:
    listed = await core.list_namespaced_pod(namespace, label_selector=f"app={name}")
    return [pod for pod in listed.items if pod.status.phase == "Pending"]


async def service_account_client(
    kubeconfig: str, core: client.CoreV1Api, namespace: str, account: str
) -> client.ApiClient:
    """A client that authenticates with a TokenRequest token of the ServiceAccount: the admin
    kubeconfig (server, CA) with the token in place of the admin's."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    token = await core.create_namespaced_service_account_token(account, namespace, request)
    text = await asyncio.to_thread(Path(kubeconfig).read_text)
    kube = yaml.safe_load(text)
    for user in kube["users"]:
        user["user"] = {"token": token.status.token}
    return await config.new_client_from_config_dict(kube)


async def test_deployment_rollout_scale_and_rbac(
    services: Services, admin: client.ApiClient, namespaces: tuple[str, str]
) -> None:
    ns, other = namespaces
    apps = client.AppsV1Api(admin)
    core = client.CoreV1Api(admin)
    name = "web"

    # A Deployment of 2: the controller-manager makes a ReplicaSet of 2 and 2 Pending Pods.
    created = await apps.create_namespaced_deployment(ns, deployment(name, 2))
    assert created.metadata.generation == 1
    first_rs = (await eventually(lambda: replica_sets(apps, ns, name), what="a ReplicaSet"))[0]
    assert first_rs.spec.replicas == 2
    pods = await eventually(
        lambda: _at_least(pending_pods(core, ns, name), 2), what="2 Pending Pods"
    )
    assert len(pods) == 2
    assert all(pod.spec.node_name is None for pod in pods)  # no scheduler
    owners = {ref.name for pod in pods for ref in pod.metadata.owner_references}
    assert owners == {first_rs.metadata.name}

    # A rollout restart, as `kubectl rollout restart` does it: a new template, a new ReplicaSet.
    restarted_at = datetime.now(UTC).isoformat(timespec="seconds")
    patched = await apps.patch_namespaced_deployment(
        name,
        ns,
        {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: restarted_at}}}}},
    )
    assert patched.metadata.generation == 2
    sets = await eventually(
        lambda: _at_least(replica_sets(apps, ns, name), 2), what="a second ReplicaSet"
    )
    new_rs = sets[-1]
    assert new_rs.metadata.name != first_rs.metadata.name
    assert new_rs.metadata.annotations[REVISION] == "2"
    assert new_rs.spec.template.metadata.annotations[RESTARTED_AT] == restarted_at
    observed = await eventually(
        lambda: _observed(apps, ns, name, 2), what="the Deployment's observedGeneration 2"
    )
    assert observed.metadata.annotations[REVISION] == "2"

    # The scale subresource: read 2, set 3.
    scale = await apps.read_namespaced_deployment_scale(name, ns)
    assert scale.spec.replicas == 2
    assert scale.status.selector == f"app={name}"
    scaled = await apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": 3}})
    assert scaled.spec.replicas == 3
    assert (await apps.read_namespaced_deployment(name, ns)).spec.replicas == 3
    assert (await apps.read_namespaced_deployment_scale(name, ns)).spec.replicas == 3

    # RBAC: a ServiceAccount that may get and patch Deployments in its own namespace only.
    await apps.create_namespaced_deployment(other, deployment(name, 1))
    rbac = client.RbacAuthorizationV1Api(admin)
    account = "sevpipe-remediator"
    await core.create_namespaced_service_account(
        ns, client.V1ServiceAccount(metadata=meta(account))
    )
    role = "deployment-restarter"
    await rbac.create_namespaced_role(
        ns,
        client.V1Role(
            metadata=meta(role),
            rules=[
                client.V1PolicyRule(
                    api_groups=["apps"], resources=["deployments"], verbs=["get", "list", "patch"]
                )
            ],
        ),
    )
    await rbac.create_namespaced_role_binding(
        ns,
        client.V1RoleBinding(
            metadata=meta(role),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name=role
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=ns)],
        ),
    )
    user = f"system:serviceaccount:{ns}:{account}"
    sa_api = await service_account_client(services.kubeconfig, core, ns, account)
    async with sa_api:
        review = await client.AuthenticationV1Api(sa_api).create_self_subject_review(
            client.V1SelfSubjectReview()
        )
        assert review.status.user_info.username == user  # not system:anonymous
        sa_apps = client.AppsV1Api(sa_api)

        # Allowed in its namespace (once the RBAC authorizer's cache has the binding).
        async def allowed() -> client.V1Deployment | None:
            try:
                return await sa_apps.read_namespaced_deployment(name, ns)
            except ApiException as exc:
                if exc.status != 403:
                    raise
                return None

        await eventually(allowed, what=f"{user} may get deployments in {ns}", within=10)
        await sa_apps.patch_namespaced_deployment(
            name, ns, {"metadata": {"annotations": {"sevpipe.test/touched": "yes"}}}
        )

        # Refused in the other namespace (403, not 404: authorization comes first), and for
        # the scale subresource, which the Role does not name, in its own.
        refusals: dict[str, Callable[[], Awaitable[object]]] = {
            "get": lambda: sa_apps.read_namespaced_deployment(name, other),
            "list": lambda: sa_apps.list_namespaced_deployment(other),
            "patch": lambda: sa_apps.patch_namespaced_deployment(
                name, other, {"spec": {"replicas": 5}}
            ),
            "scale in its own namespace": lambda: sa_apps.patch_namespaced_deployment_scale(
                name, ns, {"spec": {"replicas": 5}}
            ),
        }
        for verb, call in refusals.items():
            with pytest.raises(ApiException) as refused:
                await call()
            assert refused.value.status == 403, verb
            assert user in str(refused.value.body), verb

    untouched = await apps.read_namespaced_deployment(name, other)
    assert untouched.spec.replicas == 1
    assert (await apps.read_namespaced_deployment_scale(name, ns)).spec.replicas == 3


async def _at_least(listing: Awaitable[list[T]], count: int) -> list[T] | None:
    items = await listing
    return items if len(items) >= count else None


async def _observed(
    apps: client.AppsV1Api, ns: str, name: str, generation: int
) -> client.V1Deployment | None:
    current = await apps.read_namespaced_deployment(name, ns)
    return current if current.status.observed_generation == generation else None
