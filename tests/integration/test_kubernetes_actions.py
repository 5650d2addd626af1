"""The catalogue's Kubernetes actions against the real kube-apiserver and controller-manager
of ``scripts/test-services``: each plan is the request its execute sends (recorded at the
HTTP client), execute changes the object, check finds a done action and not an undone one,
and RBAC, paused and missing objects are failures that are not retried.

No kubelet: Pods stay Pending, so a Deployment of 1 or more is never ready. For the ready
case the test does not patch the Deployment's status (the controller-manager rewrites it from
its ReplicaSet at once); it patches the Pods' status subresource as a kubelet would (Running,
Ready), which nothing here rewrites, and the ReplicaSet and Deployment controllers carry that
up to a steady Deployment status with every replica available. A Deployment of 0 replicas is
the other ready case; ProgressDeadlineExceeded is the controller-manager's own, after a
1-second progress deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from services import Services, unique_name
from test_kubernetes_api import IMAGE, deployment, eventually, meta, service_account_client

from actions.catalogue import ACTION_ID, ActionSpec, Catalogue
from actions.kubernetes import RESTARTED_AT, kubernetes_catalogue, restart_value
from actions.kubernetes_reads import (
    MAX_OBJECTS,
    KubernetesForbidden,
    KubernetesNotFound,
    KubernetesRefused,
)
from runtime.effects import perform
from schemas.actions import ApiRequest, Target
from store.effects_embedded import EmbeddedEffectsLedger

NAME = "web"


@dataclass
class Recorder:
    """Every request the actions' clients sent, as (method, path, content type, body)."""

    kubeconfig: str
    sent: list[ApiRequest] = field(default_factory=list)

    async def factory(self) -> client.ApiClient:
        api = await config.new_client_from_config(config_file=self.kubeconfig)
        rest = api.rest_client
        original = rest.request

        async def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            headers = kwargs.get("headers") or {}
            query = kwargs.get("query_params")
            self.sent.append(
                ApiRequest(
                    method=method,
                    path=urlsplit(url).path + (f"?{urlencode(query)}" if query else ""),
                    body=kwargs.get("body"),
                    content_type=headers.get("Content-Type") if method == "PATCH" else None,
                )
            )
            return await original(method, url, *args, **kwargs)

        rest.request = request  # type: ignore[method-assign]
        return api

    def mutations(self) -> list[ApiRequest]:
        return [r for r in self.sent if r.method not in ("GET", "HEAD")]


@pytest.fixture
async def admin(services: Services) -> AsyncIterator[client.ApiClient]:
    assert services.kubeconfig, "no SEVPIPE_KUBECONFIG: scripts/test-services up provides it"
    api = await config.new_client_from_config(config_file=services.kubeconfig)
    async with api:
        yield api


@pytest.fixture
async def ns(admin: client.ApiClient) -> AsyncIterator[str]:
    """A fresh namespace, deleted afterwards (not waited for: nothing else uses its name)."""
    core = client.CoreV1Api(admin)
    name = unique_name("sevpipe-act")
    await core.create_namespace(client.V1Namespace(metadata=meta(name)))
    try:
        yield name
    finally:
        try:
            await core.delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def recorder(services: Services) -> Recorder:
    return Recorder(services.kubeconfig)


@pytest.fixture
def catalogue(recorder: Recorder) -> Catalogue:
    return kubernetes_catalogue(recorder.factory)


def dep_target(ns: str, name: str = NAME) -> Target:
    return Target(kind="Deployment", namespace=ns, name=name)


async def run(spec: ActionSpec[Any], target: Target, params: dict[str, Any]) -> Any:
    model = spec.params.model_validate(params)
    return await spec.execute(target, model, 1)


async def test_catalogue_names() -> None:
    async def never() -> client.ApiClient:
        raise AssertionError("no call at registration")

    cat = kubernetes_catalogue(never)
    assert {
        "kubernetes.rollout_restart",
        "kubernetes.scale",
        "kubernetes.get_state",
        "kubernetes.rollout_status",
        "kubernetes.emergency_hpa",
        "kubernetes.patch_configmap",
    } <= set(cat.names())
    assert cat.get("kubernetes.rollout_restart").risk == "mutating"
    assert cat.get("kubernetes.get_state").target_kind == "Namespace"


async def test_rollout_restart(
    admin: client.ApiClient, ns: str, catalogue: Catalogue, recorder: Recorder
) -> None:
    apps = client.AppsV1Api(admin)
    await apps.create_namespaced_deployment(ns, deployment(NAME, 1))
    spec = catalogue.get("kubernetes.rollout_restart")
    target, params = dep_target(ns), spec.params.model_validate({})

    assert await spec.check(target, params) is None  # never restarted
    planned = await spec.plan(target, params)
    assert planned == (
        ApiRequest(
            method="PATCH",
            path=f"/apis/apps/v1/namespaces/{ns}/deployments/{NAME}",
            body={
                "spec": {
                    "template": {"metadata": {"annotations": {RESTARTED_AT: restart_value(1)}}}
                }
            },
            content_type="application/strategic-merge-patch+json",
        ),
    )
    assert await spec.plan(target, params) == planned  # deterministic: no clock

    recorder.sent.clear()
    outcome = await spec.execute(target, params, 7)
    assert recorder.mutations() == list(planned)  # the planned request is the one sent
    assert outcome["generation"] == 2
    assert outcome["restarted_at"] == restart_value(1)
    after = await apps.read_namespaced_deployment(NAME, ns)
    assert after.metadata.generation == 2
    assert after.spec.template.metadata.annotations[RESTARTED_AT] == restart_value(1)

    # After a crash the check finds it done (and the stage does not patch again) ...
    assert await spec.check(target, params) == {
        "generation": 2,
        "restarted_at": restart_value(1),
    }
    # ... while a later restart is a new one: a new value, generation 3, and done in turn.
    replanned = await spec.plan(target, params)
    assert replanned[0].body["spec"]["template"]["metadata"]["annotations"] == {
        RESTARTED_AT: restart_value(2)
    }
    recorder.sent.clear()
    assert (await spec.execute(target, params, 8))["generation"] == 3
    assert recorder.mutations() == list(replanned)
    assert (await spec.check(target, params) or {})["generation"] == 3

    # Any later spec change makes a crashed restart's check say "not done".
    await apps.patch_namespaced_deployment(NAME, ns, {"spec": {"replicas": 2}})
    assert await spec.check(target, params) is None


async def test_rollout_restart_run_by_the_stage_carries_its_own_action_id(
    admin: client.ApiClient, ns: str, catalogue: Catalogue, recorder: Recorder
) -> None:
    """Run as the stage runs it (ACTION_ID set), a restart's mark is its action id: its check
    finds it after any later spec change, and another action's restart is not it."""
    apps = client.AppsV1Api(admin)
    await apps.create_namespaced_deployment(ns, deployment(NAME, 1))
    spec = catalogue.get("kubernetes.rollout_restart")
    target, params = dep_target(ns), spec.params.model_validate({})
    mine = ACTION_ID.set("01JNQACTION0000000000000A1")
    try:
        assert await spec.check(target, params) is None
        planned = await spec.plan(target, params)
        recorder.sent.clear()
        await spec.execute(target, params, 1)
        assert recorder.mutations() == list(planned)
        mark = "sevpipe-action-01JNQACTION0000000000000A1"
        annotations = (await apps.read_namespaced_deployment(NAME, ns)).spec.template.metadata
        assert annotations.annotations[RESTARTED_AT] == mark
        await apps.patch_namespaced_deployment(NAME, ns, {"spec": {"replicas": 2}})
        assert (await spec.check(target, params) or {})["restarted_at"] == mark
    finally:
        ACTION_ID.reset(mine)
    other = ACTION_ID.set("01JNQACTION0000000000000B2")
    try:
        assert await spec.check(target, params) is None  # that restart was not this one
    finally:
        ACTION_ID.reset(other)


async def test_rollout_restart_refuses_a_paused_deployment(
    admin: client.ApiClient, ns: str, catalogue: Catalogue, recorder: Recorder, tmp_path: Any
) -> None:
    apps = client.AppsV1Api(admin)
    paused = deployment(NAME, 1)
    paused.spec.paused = True
    await apps.create_namespaced_deployment(ns, paused)
    spec = catalogue.get("kubernetes.rollout_restart")
    target, params = dep_target(ns), spec.params.model_validate({})

    with pytest.raises(KubernetesRefused, match="paused") as refused:
        await spec.execute(target, params, 1)
    assert refused.value.retriable is False
    assert recorder.mutations() == []

    # Through the effects ledger: the action's failed outcome, recorded, not retried.
    async with EmbeddedEffectsLedger(tmp_path / "effects.db") as ledger:
        result = await perform(
            ledger,
            "restart-paused",
            holder="test",
            lease=60,
            do=lambda token: spec.execute(target, params, token),
            check=lambda: spec.check(target, params),
        )
    assert result.status == "failed"
    assert "paused" in result.outcome["error"]
    assert (await apps.read_namespaced_deployment(NAME, ns)).metadata.generation == 1


async def test_scale(
    admin: client.ApiClient, ns: str, catalogue: Catalogue, recorder: Recorder
) -> None:
    apps = client.AppsV1Api(admin)
    await apps.create_namespaced_deployment(ns, deployment(NAME, 1))
    spec = catalogue.get("kubernetes.scale")
    target = dep_target(ns)
    params = spec.params.model_validate({"replicas": 3})
    with pytest.raises(ValueError, match="greater than or equal"):
        spec.params.model_validate({"replicas": -1})

    assert await spec.check(target, params) is None
    planned = await spec.plan(target, params)
    assert planned == (
        ApiRequest(
            method="PATCH",
            path=f"/apis/apps/v1/namespaces/{ns}/deployments/{NAME}/scale",
            body={"spec": {"replicas": 3}},
            content_type="application/strategic-merge-patch+json",
        ),
    )
    outcome = await spec.execute(target, params, 1)
    assert recorder.mutations() == list(planned)
    assert outcome["replicas"] == 3
    assert outcome["previous_replicas"] == 1
    after = await apps.read_namespaced_deployment(NAME, ns)
    assert after.spec.replicas == 3
    assert after.metadata.generation == 2
    assert await spec.check(target, params) == {"replicas": 3}
    assert await spec.check(target, spec.params.model_validate({"replicas": 0})) is None


async def test_missing_deployment_is_not_found(ns: str, catalogue: Catalogue) -> None:
    for action, params in (
        ("kubernetes.rollout_restart", {}),
        ("kubernetes.scale", {"replicas": 2}),
        ("kubernetes.rollout_status", {}),
    ):
        with pytest.raises(KubernetesNotFound, match="not found") as missing:
            await run(catalogue.get(action), dep_target(ns, "absent"), params)
        assert missing.value.retriable is False, action


async def test_forbidden_is_a_failure_naming_verb_and_resource(
    services: Services, admin: client.ApiClient, ns: str, tmp_path: Any
) -> None:
    """A ServiceAccount of NS may only get Deployments in OTHER: patching there is refused."""
    core, apps = client.CoreV1Api(admin), client.AppsV1Api(admin)
    rbac = client.RbacAuthorizationV1Api(admin)
    other = unique_name("sevpipe-act-other")
    await core.create_namespace(client.V1Namespace(metadata=meta(other)))
    try:
        await apps.create_namespaced_deployment(other, deployment(NAME, 1))
        account = "sevpipe-remediator"
        await core.create_namespaced_service_account(
            ns, client.V1ServiceAccount(metadata=meta(account))
        )
        await rbac.create_namespaced_role(
            other,
            client.V1Role(
                metadata=meta("reader"),
                rules=[
                    client.V1PolicyRule(
                        api_groups=["apps"], resources=["deployments"], verbs=["get"]
                    )
                ],
            ),
        )
        await rbac.create_namespaced_role_binding(
            other,
            client.V1RoleBinding(
                metadata=meta("reader"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="reader"
                ),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=ns)],
            ),
        )

        async def sa_factory() -> client.ApiClient:
            return await service_account_client(services.kubeconfig, core, ns, account)

        cat = kubernetes_catalogue(sa_factory)
        restart = cat.get("kubernetes.rollout_restart")
        target, params = dep_target(other), restart.params.model_validate({})

        async def may_get() -> bool:
            try:
                await restart.check(target, params)
            except KubernetesForbidden:
                return False
            return True

        await eventually(may_get, what="the Role binding in effect", within=10)

        with pytest.raises(KubernetesForbidden) as refused:
            await restart.execute(target, params, 1)
        assert str(refused.value) == f"forbidden: patch deployments in namespace {other}"
        assert refused.value.retriable is False

        async with EmbeddedEffectsLedger(tmp_path / "effects.db") as ledger:
            result = await perform(
                ledger,
                "restart-forbidden",
                holder="test",
                lease=60,
                do=lambda token: restart.execute(target, params, token),
                check=lambda: restart.check(target, params),
            )
        assert result.status == "failed"
        assert result.outcome["error"] == f"forbidden: patch deployments in namespace {other}"

        scale = cat.get("kubernetes.scale")
        with pytest.raises(KubernetesForbidden, match="deployments/scale"):
            await run(scale, target, {"replicas": 4})
        assert (await apps.read_namespaced_deployment(NAME, other)).metadata.generation == 1
    finally:
        await core.delete_namespace(other)


def _ready_pod_status() -> dict[str, Any]:
    """What a kubelet would report for a started, ready Pod."""
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": "web",
                    "image": IMAGE,
                    "imageID": "",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }
            ],
        }
    }


async def _pods(core: client.CoreV1Api, ns: str, name: str, count: int) -> list[client.V1Pod]:
    listed = await core.list_namespaced_pod(ns, label_selector=f"app={name}")
    return listed.items if len(listed.items) >= count else []


async def test_get_state(
    admin: client.ApiClient, ns: str, catalogue: Catalogue, recorder: Recorder
) -> None:
    """Pending Pods: not ready. Ready only once the Pods report Running and Ready, as a kubelet
    would (their status subresource patched here; with no kubelet nothing rewrites it), and the
    ReplicaSet and Deployment controllers carry that up to the Deployment's status."""
    apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
    net = client.NetworkingV1Api(admin)
    await apps.create_namespaced_deployment(ns, deployment(NAME, 2))
    await core.create_namespaced_service(
        ns,
        client.V1Service(
            metadata=meta(NAME),
            spec=client.V1ServiceSpec(
                selector={"app": NAME}, ports=[client.V1ServicePort(port=80)]
            ),
        ),
    )
    await net.create_namespaced_ingress(
        ns,
        client.V1Ingress(
            metadata=meta(NAME),
            spec=client.V1IngressSpec(
                rules=[client.V1IngressRule(host="origin.example.test")],
                default_backend=client.V1IngressBackend(
                    service=client.V1IngressServiceBackend(
                        name=NAME, port=client.V1ServiceBackendPort(number=80)
                    )
                ),
            ),
        ),
    )
    pods = await eventually(partial(_pods, core, ns, NAME, 2), what="2 Pods")
    spec = catalogue.get("kubernetes.get_state")
    target, params = Target(kind="Namespace", namespace=ns), spec.params.model_validate({})

    planned = await spec.plan(target, params)
    assert [r.method for r in planned] == ["GET"] * 4
    recorder.sent.clear()
    state = await spec.execute(target, params, 1)
    assert recorder.sent == list(planned)
    assert state["ready"] is False
    assert state["max_objects_per_kind"] == MAX_OBJECTS
    assert state["truncated"] == dict.fromkeys(
        ("deployments", "pods", "services", "ingresses"), False
    )
    (web,) = state["deployments"]
    assert web["name"] == NAME
    assert web["replicas"]["desired"] == 2
    assert web["replicas"]["available"] == 0
    assert web["complete"] is False
    assert state["pods"]["by_phase"] == {"Pending": 2}
    assert [s["name"] for s in state["services"]] == [NAME]
    assert state["services"][0]["ports"] == ["80/TCP"]
    assert state["ingresses"] == [{"name": NAME, "class": None, "hosts": ["origin.example.test"]}]
    assert await spec.check(target, params) is None  # a read: nothing to find

    for pod in pods:
        await core.patch_namespaced_pod_status(pod.metadata.name, ns, _ready_pod_status())

    async def ready() -> Any:
        found = await spec.execute(target, params, 2)
        return found if found["ready"] else None

    state = await eventually(ready, what="the namespace ready")
    assert state["pods"]["by_phase"] == {"Running": 2}
    (web,) = state["deployments"]
    assert web["replicas"]["available"] == 2
    assert web["observed_generation"] == web["generation"]
    assert web["complete"] is True

    # A second Deployment, not ready, makes the namespace not ready.
    await apps.create_namespaced_deployment(ns, deployment("api", 1))
    assert (await spec.execute(target, params, 3))["ready"] is False


async def test_rollout_status(
    admin: client.ApiClient, ns: str, catalogue: Catalogue, recorder: Recorder
) -> None:
    """Pending Pods: neither complete nor failed, until the progress deadline (1 s here) passes
    and the controller-manager itself marks it ProgressDeadlineExceeded."""
    apps = client.AppsV1Api(admin)
    slow = deployment(NAME, 1)
    slow.spec.progress_deadline_seconds = 1
    await apps.create_namespaced_deployment(ns, slow)
    await apps.create_namespaced_deployment(ns, deployment("idle", 0))
    spec = catalogue.get("kubernetes.rollout_status")
    params = spec.params.model_validate({})

    planned = await spec.plan(dep_target(ns), params)
    assert planned == (
        ApiRequest(method="GET", path=f"/apis/apps/v1/namespaces/{ns}/deployments/{NAME}"),
    )
    recorder.sent.clear()
    first = await spec.execute(dep_target(ns), params, 1)
    assert recorder.sent == list(planned)
    assert first["complete"] is False
    assert first["replicas"]["desired"] == 1

    async def failed() -> Any:
        found = await spec.execute(dep_target(ns), params, 1)
        return found if found["failed"] else None

    status = await eventually(failed, what="ProgressDeadlineExceeded")
    assert status["complete"] is False
    assert any(c["reason"] == "ProgressDeadlineExceeded" for c in status["conditions"])

    async def complete() -> Any:
        found = await spec.execute(dep_target(ns, "idle"), params, 1)
        return found if found["complete"] else None

    idle = await eventually(complete, what="a Deployment of 0 complete")
    assert idle["failed"] is False
    assert idle["observed_generation"] == idle["generation"] == 1


async def test_emergency_hpa(
    admin: client.ApiClient, ns: str, catalogue: Catalogue, recorder: Recorder
) -> None:
    apps, hpas = client.AppsV1Api(admin), client.AutoscalingV2Api(admin)
    await apps.create_namespaced_deployment(ns, deployment(NAME, 2))
    spec = catalogue.get("kubernetes.emergency_hpa")
    target = dep_target(ns)
    params = spec.params.model_validate({"min_replicas": 6, "max_replicas": 20})
    with pytest.raises(ValueError, match="below"):
        spec.params.model_validate({"min_replicas": 6, "max_replicas": 2})
    collection = f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers"

    # None yet: planned and sent as a create.
    assert await spec.check(target, params) is None
    (create,) = await spec.plan(target, params)
    assert (create.method, create.path) == ("POST", collection)
    assert create.body["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": NAME,
    }
    recorder.sent.clear()
    outcome = await spec.execute(target, params, 1)
    assert recorder.mutations() == [create]
    assert outcome["created"] is True
    made = await hpas.read_namespaced_horizontal_pod_autoscaler(NAME, ns)
    assert (made.spec.min_replicas, made.spec.max_replicas) == (6, 20)
    assert await spec.check(target, params) == {"min_replicas": 6, "max_replicas": 20}

    # There: planned and sent as a patch of the bounds.
    wider = spec.params.model_validate({"min_replicas": 8, "max_replicas": 30})
    assert await spec.check(target, wider) is None
    planned = await spec.plan(target, wider)
    assert planned == (
        ApiRequest(
            method="PATCH",
            path=f"{collection}/{NAME}",
            body={"spec": {"minReplicas": 8, "maxReplicas": 30}},
            content_type="application/strategic-merge-patch+json",
        ),
    )
    recorder.sent.clear()
    outcome = await spec.execute(target, wider, 2)
    assert recorder.mutations() == list(planned)
    assert outcome["created"] is False
    assert outcome["previous"] == {"min_replicas": 6, "max_replicas": 20}
    patched = await hpas.read_namespaced_horizontal_pod_autoscaler(NAME, ns)
    assert (patched.spec.min_replicas, patched.spec.max_replicas) == (8, 30)
    assert patched.metadata.generation == made.metadata.generation + 1
    assert await spec.check(target, wider) == {"min_replicas": 8, "max_replicas": 30}


async def test_patch_configmap(
    admin: client.ApiClient, ns: str, catalogue: Catalogue, recorder: Recorder
) -> None:
    core = client.CoreV1Api(admin)
    await core.create_namespaced_config_map(
        ns, client.V1ConfigMap(metadata=meta("db"), data={"POOL_SIZE": "10", "OTHER": "x"})
    )
    spec = catalogue.get("kubernetes.patch_configmap")
    target = Target(kind="ConfigMap", namespace=ns, name="db")
    params = spec.params.model_validate({"key": "POOL_SIZE", "value": "40"})

    assert await spec.check(target, params) is None
    planned = await spec.plan(target, params)
    assert planned == (
        ApiRequest(
            method="PATCH",
            path=f"/api/v1/namespaces/{ns}/configmaps/db",
            body={"data": {"POOL_SIZE": "40"}},
            content_type="application/strategic-merge-patch+json",
        ),
    )
    recorder.sent.clear()
    outcome = await spec.execute(target, params, 1)
    assert recorder.mutations() == list(planned)
    assert outcome["previous_value"] == "10"
    after = await core.read_namespaced_config_map("db", ns)
    assert after.data == {"POOL_SIZE": "40", "OTHER": "x"}  # the other keys untouched
    assert await spec.check(target, params) == {"key": "POOL_SIZE", "value": "40"}

    with pytest.raises(KubernetesNotFound):
        await run(spec, Target(kind="ConfigMap", namespace=ns, name="absent"), params.model_dump())
