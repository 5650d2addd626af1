"""kubernetes.top, rollout_history, set_image and pod_logs against the real kube-apiserver and
controller-manager of ``scripts/test-services``: each plan is what its execute sends
(recorded at the HTTP client, as in test_kubernetes_actions).

The test cluster serves no metrics.k8s.io (no metrics-server): ``top`` says so and succeeds.
It has no kubelet, so Pods stay Pending on no node and their logs cannot be read; ``pod_logs``
reports why per Pod and succeeds. For the logs that can be read, a Node object points the
apiserver at a fake kubelet served here (HTTPS on 127.0.0.1; the apiserver verifies no kubelet
certificate without ``--kubelet-certificate-authority``): the apiserver itself proxies the
read, with its query, and turns the kubelet's errors into its own statuses.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import test_kubernetes_actions as actions_tests
import trustme
from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from services import Services, unique_name
from test_kubernetes_actions import NAME, Recorder, dep_target
from test_kubernetes_api import (
    IMAGE,
    deployment,
    eventually,
    meta,
    replica_sets,
    service_account_client,
)

from actions.catalogue import ActionSpec, Catalogue
from actions.guard import Admitted, Guard, Limits
from actions.inventory import Inventory
from actions.kubernetes import kubernetes_catalogue
from actions.kubernetes_observe import CHANGE_CAUSE, NOT_SERVED
from actions.kubernetes_reads import (
    MAX_OBJECTS,
    KubernetesForbidden,
    KubernetesNotFound,
    KubernetesRefused,
)
from actions.playbooks import PlannedStep, default_playbooks
from runtime.effects import EffectResult, perform
from schemas.actions import ApiRequest, Target
from store import LocalCoordinator
from store.effects_embedded import EmbeddedEffectsLedger

IMAGE2 = "registry.invalid/sevpipe/web:2"
EMERGENCY = "registry.invalid/sevpipe/web:stable"
STRATEGIC = "application/strategic-merge-patch+json"
BACKEND = "origin-backend"

# The fixtures of test_kubernetes_actions, by the names the tests ask for: admin (a client of
# the cluster's admin), ns (a fresh namespace), recorder (what the actions' clients sent) and
# catalogue (kubernetes_catalogue on the recorder's clients).
admin = actions_tests.admin
ns = actions_tests.ns
recorder = actions_tests.recorder
catalogue = actions_tests.catalogue


async def performed(spec: ActionSpec[Any], target: Target, params: Any, path: Path) -> EffectResult:
    """The action run as the stage runs it: through the effects ledger."""
    async with EmbeddedEffectsLedger(path / "effects.db") as ledger:
        return await perform(
            ledger,
            unique_name("effect"),
            holder="test",
            lease=60,
            do=lambda token: spec.execute(target, params, token),
            check=lambda: spec.check(target, params),
        )


def params_of(spec: ActionSpec[Any], **given: Any) -> Any:
    return spec.params.model_validate(given)


# -- kubernetes.top ------------------------------------------------------------------------------


async def test_top_says_metrics_are_not_served_and_succeeds(
    admin: client.ApiClient, ns: str, catalogue: Catalogue, recorder: Recorder, tmp_path: Path
) -> None:
    groups = await client.ApisApi(admin).get_api_versions()
    assert "metrics.k8s.io" not in {g.name for g in groups.groups}  # what this test is about
    spec = catalogue.get("kubernetes.top")
    target, params = Target(kind="Namespace", namespace=ns), params_of(spec)

    planned = await spec.plan(target, params)
    assert planned == (
        ApiRequest(method="GET", path=f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods"),
        ApiRequest(method="GET", path="/apis/metrics.k8s.io/v1beta1/nodes"),
    )
    recorder.sent.clear()
    outcome = await spec.execute(target, params, 1)
    assert outcome == {"available": False, "namespace": ns, "reason": NOT_SERVED}
    assert NOT_SERVED == "metrics.k8s.io is not served by this cluster (no metrics-server)"
    assert recorder.sent == list(planned[:1])  # the nodes' read is not sent after a 404

    result = await performed(spec, target, params, tmp_path)
    assert (result.status, result.outcome["available"]) == ("succeeded", False)
    assert await spec.check(target, params) is None


# -- kubernetes.rollout_history ------------------------------------------------------------------


async def test_rollout_history(
    admin: client.ApiClient, ns: str, catalogue: Catalogue, recorder: Recorder
) -> None:
    apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
    first = deployment(NAME, 0)
    first.metadata.annotations = {CHANGE_CAUSE: "create web:1"}
    await apps.create_namespaced_deployment(ns, first)
    await eventually(lambda: replica_sets(apps, ns, NAME), what="revision 1")
    await apps.patch_namespaced_deployment(
        NAME,
        ns,
        {
            "metadata": {"annotations": {CHANGE_CAUSE: "set image web:2"}},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": IMAGE2}]}}},
        },
    )

    async def two() -> list[client.V1ReplicaSet] | None:
        sets = await replica_sets(apps, ns, NAME)
        return sets if len(sets) == 2 else None

    rs1, rs2 = await eventually(two, what="revision 2")
    # A ReplicaSet the selector matches but that another object controls: not a revision.
    holder = await core.create_namespaced_config_map(
        ns, client.V1ConfigMap(metadata=meta("holder"))
    )
    stray = {"app": NAME, "tier": "stray"}
    await apps.create_namespaced_replica_set(
        ns,
        client.V1ReplicaSet(
            metadata=client.V1ObjectMeta(
                name="stray",
                labels=stray,
                annotations={"deployment.kubernetes.io/revision": "99"},
                owner_references=[
                    client.V1OwnerReference(
                        api_version="v1",
                        kind="ConfigMap",
                        name="holder",
                        uid=holder.metadata.uid,
                        controller=True,
                    )
                ],
            ),
            spec=client.V1ReplicaSetSpec(
                replicas=0,
                selector=client.V1LabelSelector(match_labels=stray),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=stray),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="w", image="x:1")]),
                ),
            ),
        ),
    )
    spec = catalogue.get("kubernetes.rollout_history")
    target, params = dep_target(ns), params_of(spec)

    planned = await spec.plan(target, params)
    assert planned == (
        ApiRequest(method="GET", path=f"/apis/apps/v1/namespaces/{ns}/deployments/{NAME}"),
        ApiRequest(
            method="GET",
            path=f"/apis/apps/v1/namespaces/{ns}/replicasets?labelSelector=app%3D{NAME}"
            f"&limit={MAX_OBJECTS}",
        ),
    )
    recorder.sent.clear()
    history = await spec.execute(target, params, 1)
    assert recorder.sent == list(planned)
    assert (history["deployment"], history["namespace"]) == (NAME, ns)
    assert history["current_revision"] == 2
    assert (history["total"], history["truncated"]) == (2, False)  # not the stray one
    newest, oldest = history["revisions"]
    assert newest == {
        "revision": 2,
        "replicaset": rs2.metadata.name,
        "images": {"web": IMAGE2},
        "change_cause": "set image web:2",
        "created": newest["created"],
        "replicas": 0,
        "ready_replicas": 0,
        "current": True,
    }
    assert datetime.fromisoformat(newest["created"]) == rs2.metadata.creation_timestamp
    assert (oldest["revision"], oldest["replicaset"]) == (1, rs1.metadata.name)
    assert (oldest["images"], oldest["change_cause"]) == ({"web": IMAGE}, "create web:1")
    assert oldest["current"] is False

    capped = await spec.execute(target, params_of(spec, max_revisions=1), 2)
    assert [r["revision"] for r in capped["revisions"]] == [2]
    assert (capped["total"], capped["truncated"]) == (2, True)
    assert await spec.check(target, params) is None  # a read

    with pytest.raises(KubernetesNotFound) as missing:
        await spec.execute(dep_target(ns, "absent"), params, 3)
    assert missing.value.retriable is False


# -- kubernetes.set_image ------------------------------------------------------------------------


def _image_patch(ns: str, name: str, container: str, image: str) -> ApiRequest:
    return ApiRequest(
        method="PATCH",
        path=f"/apis/apps/v1/namespaces/{ns}/deployments/{name}",
        body={
            "spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}}
        },
        content_type=STRATEGIC,
    )


def _images(dep: client.V1Deployment) -> dict[str, str]:
    return {c.name: c.image for c in dep.spec.template.spec.containers}


async def test_set_image(
    admin: client.ApiClient, ns: str, catalogue: Catalogue, recorder: Recorder
) -> None:
    apps = client.AppsV1Api(admin)
    await apps.create_namespaced_deployment(ns, deployment(NAME, 1))
    spec = catalogue.get("kubernetes.set_image")
    target, params = dep_target(ns), params_of(spec, image=IMAGE2)

    assert await spec.check(target, params) is None
    planned = await spec.plan(target, params)
    assert planned == (_image_patch(ns, NAME, "web", IMAGE2),)
    assert await spec.plan(target, params_of(spec, image=IMAGE2, container="web")) == planned

    recorder.sent.clear()
    outcome = await spec.execute(target, params, 1)
    assert recorder.mutations() == list(planned)
    assert outcome["container"] == "web"
    assert (outcome["image"], outcome["previous_image"], outcome["changed"]) == (
        IMAGE2,
        IMAGE,
        True,
    )
    assert (outcome["generation"], outcome["previous_generation"]) == (2, 1)
    after = await apps.read_namespaced_deployment(NAME, ns)
    assert _images(after) == {"web": IMAGE2}

    # Done once the Deployment controller has observed generation 2.
    done = await eventually(lambda: spec.check(target, params), what="the image observed")
    assert done == {"container": "web", "image": IMAGE2, "generation": 2, "observed_generation": 2}
    assert await spec.check(target, params_of(spec, image=IMAGE)) is None

    # Sent again (a redelivery whose check ran before the controller saw it): no new rollout.
    recorder.sent.clear()
    again = await spec.execute(target, params, 2)
    assert recorder.mutations() == list(planned)
    assert (again["changed"], again["generation"]) == (False, 2)


async def test_set_image_refuses_a_container_it_cannot_name(
    admin: client.ApiClient, ns: str, catalogue: Catalogue, recorder: Recorder, tmp_path: Path
) -> None:
    apps = client.AppsV1Api(admin)
    pair = deployment("pair", 1)
    pair.spec.template.spec.containers.append(client.V1Container(name="sidecar", image="side:1"))
    await apps.create_namespaced_deployment(ns, pair)
    spec = catalogue.get("kubernetes.set_image")
    target = dep_target(ns, "pair")
    refusals = {
        "has 2 containers (web, sidecar): name one with the container param": {"image": IMAGE2},
        "has no container nope (containers: web, sidecar)": {"image": IMAGE2, "container": "nope"},
        "no image to set on deployment pair": {},
    }
    for why, given in refusals.items():
        params = params_of(spec, **given)
        with pytest.raises(KubernetesRefused, match=re.escape(why)):
            await spec.plan(target, params)
        with pytest.raises(KubernetesRefused) as refused:
            await spec.execute(target, params, 1)
        assert refused.value.retriable is False
        assert await spec.check(target, params) is None  # undecidable is not done
        result = await performed(spec, target, params, tmp_path / why[:8].replace(" ", "-"))
        assert result.status == "failed", why
        assert why in result.outcome["error"]
    assert recorder.mutations() == []
    assert (await apps.read_namespaced_deployment("pair", ns)).metadata.generation == 1

    sidecar = params_of(spec, image="side:2", container="sidecar")
    planned = await spec.plan(target, sidecar)
    assert planned == (_image_patch(ns, "pair", "sidecar", "side:2"),)
    await spec.execute(target, sidecar, 2)
    assert recorder.mutations() == list(planned)
    after = await apps.read_namespaced_deployment("pair", ns)
    assert _images(after) == {"web": IMAGE, "sidecar": "side:2"}  # the other one untouched


async def test_set_image_takes_the_inventorys_emergency_image_through_the_guard(
    admin: client.ApiClient, ns: str, catalogue: Catalogue, recorder: Recorder
) -> None:
    """As the stage runs the default playbook's step (no params): validated, dumped for the
    guard, filled with the inventory's emergency image, validated again, planned, sent."""
    apps = client.AppsV1Api(admin)
    await apps.create_namespaced_deployment(ns, deployment(NAME, 1))
    inventory = Inventory.model_validate(
        {
            "namespaces": {
                ns: {"deployments": {NAME: {"max_replicas": 5, "emergency_image": EMERGENCY}}}
            }
        }
    )
    (book,) = [b for b in default_playbooks().playbooks if b.name == "sev0-outage"]
    (step,) = [s for s in book.steps if s.action == "kubernetes.set_image"]
    target = inventory.resolve(step.target, {"namespace": ns, "deployment": NAME})
    assert target == dep_target(ns)
    spec = catalogue.get("kubernetes.set_image")
    planned_step = PlannedStep(book.name, step.id, step.action, step.params, "approve", target)
    asked = spec.params.model_validate(dict(step.params)).model_dump()
    admitted = await Guard(LocalCoordinator(), Limits(), inventory).admit(
        planned_step, target, asked, spec.risk, dry_run=False
    )
    assert isinstance(admitted, Admitted), admitted
    params = spec.params.model_validate(admitted.params)
    planned = await spec.plan(target, params)
    assert planned == (_image_patch(ns, NAME, "web", EMERGENCY),)
    await spec.execute(target, params, 1)
    assert recorder.mutations() == list(planned)
    assert _images(await apps.read_namespaced_deployment(NAME, ns)) == {"web": EMERGENCY}


# -- kubernetes.pod_logs -------------------------------------------------------------------------


def _pods_target(ns: str) -> Target:
    """The security-breach playbook's logs target, resolved as the stage does."""
    inventory = Inventory.model_validate(
        {"namespaces": {ns: {"pods": {BACKEND: {"app": BACKEND}}}}}
    )
    (book,) = [b for b in default_playbooks().playbooks if b.name == "sev0-security-breach"]
    (step,) = [s for s in book.steps if s.action == "kubernetes.pod_logs"]
    target = inventory.resolve(step.target, {"namespace": ns, "app": BACKEND})
    assert target == Target(kind="Pods", namespace=ns, selector={"app": BACKEND})
    return target


def _log_read(
    ns: str, pod: str, container: str, tail: int = 1000, limit: int = 262144
) -> ApiRequest:
    query = f"container={container}&limitBytes={limit}&tailLines={tail}"
    return ApiRequest(method="GET", path=f"/api/v1/namespaces/{ns}/pods/{pod}/log?{query}")


def _bare_pod(name: str, node: str | None, *containers: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=meta(name, app=BACKEND),
        spec=client.V1PodSpec(
            node_name=node,
            automount_service_account_token=False,
            containers=[client.V1Container(name=c, image=IMAGE) for c in containers],
        ),
    )


async def _pods(core: client.CoreV1Api, ns: str, count: int) -> list[client.V1Pod]:
    listed = await core.list_namespaced_pod(ns, label_selector=f"app={BACKEND}")
    return sorted(listed.items, key=lambda p: p.metadata.name) if len(listed.items) >= count else []


async def _force_delete(core: client.CoreV1Api, ns: str, pod: str) -> None:
    """A Pod bound to a node waits for its kubelet to confirm a deletion: none will."""
    try:
        await core.delete_namespaced_pod(pod, ns, grace_period_seconds=0)
    except ApiException as exc:
        if exc.status != 404:
            raise


async def test_pod_logs_without_a_kubelet_say_why_per_pod_and_succeed(
    admin: client.ApiClient, ns: str, catalogue: Catalogue, recorder: Recorder, tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
    await apps.create_namespaced_deployment(ns, deployment(BACKEND, 2))  # Pending, on no node
    ghost = unique_name("ghost-node")
    await core.create_namespaced_pod(ns, _bare_pod("bound", ghost, "web"))  # a node never made
    try:
        pods = await eventually(lambda: _pods(core, ns, 3), what="3 Pods")
        spec = catalogue.get("kubernetes.pod_logs")
        target, params = _pods_target(ns), params_of(spec)

        planned = await spec.plan(target, params)
        listing = f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3D{BACKEND}&limit=10"
        assert planned == (
            ApiRequest(method="GET", path=listing),
            *(_log_read(ns, p.metadata.name, "web") for p in pods),
        )
        recorder.sent.clear()
        outcome = await spec.execute(target, params, 1)
        assert recorder.sent == list(planned)
        assert (outcome["namespace"], outcome["selector"]) == (ns, f"app={BACKEND}")
        assert outcome["pattern"] == "auth|login|token"
        assert (outcome["pods"], outcome["truncated"], outcome["unavailable"]) == (3, False, 3)
        logs = {log["pod"]: log for log in outcome["logs"]}
        bound = logs.pop("bound")
        assert bound["available"] is False
        assert bound["node"] == ghost
        assert bound["reason"].startswith("404 Not Found: ")
        assert ghost in bound["reason"]
        assert bound["retriable"] is False
        for log in logs.values():
            assert log["available"] is False
            assert (log["phase"], log["node"], log["container"]) == ("Pending", None, "web")
            assert log["reason"] == (
                "no log: the pod is Pending on no node, so no container has started "
                "(the apiserver answered 204 No Content)"
            )

        result = await performed(spec, target, params, tmp_path)
        assert result.status == "succeeded"
        assert result.outcome["unavailable"] == 3

        fewer = params_of(spec, max_pods=2)
        recorder.sent.clear()
        capped = await spec.execute(target, fewer, 2)
        assert (capped["pods"], capped["truncated"], len(capped["logs"])) == (2, True, 2)
        assert recorder.sent[0].path.endswith("&limit=2")
        assert len(recorder.sent) == 3
    finally:
        await _force_delete(core, ns, "bound")


@dataclass
class FakeKubelet:
    """The kubelet's containerLogs endpoint, answering per container name."""

    port: int = 0
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def logs(self, request: web.Request) -> web.Response:
        self.asked.append(str(request.rel_url))
        status, body = self.answers[request.match_info["container"]]
        return web.Response(status=status, body=body)


@pytest.fixture
async def kubelet(admin: client.ApiClient) -> AsyncIterator[tuple[FakeKubelet, str]]:
    """A fake kubelet and a Node (named as returned) that points the apiserver at it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    fake = FakeKubelet()
    app = web.Application()
    app.router.add_get("/containerLogs/{ns}/{pod}/{container}", fake.logs)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    fake.port = runner.addresses[0][1]
    core = client.CoreV1Api(admin)
    node = unique_name("sevpipe-fake-node")
    await core.create_node(client.V1Node(metadata=meta(node)))
    try:
        status = {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": fake.port}},
        }
        await core.patch_node_status(node, {"status": status})
        yield fake, node
    finally:
        await core.delete_node(node)
        await runner.cleanup()


async def test_pod_logs_read_through_the_apiserver_keep_the_matching_lines(
    admin: client.ApiClient,
    ns: str,
    catalogue: Catalogue,
    recorder: Recorder,
    kubelet: tuple[FakeKubelet, str],
) -> None:
    fake, node = kubelet
    fake.answers = {
        "app": (
            200,
            b"GET /health 200\n"
            b"LOGIN failed for user=admin\n"
            b"cache miss\n"
            b"Authorization header missing\n"
            b"refreshed token for session 42\n"
            b"caf\xc3",  # limitBytes cut a character in two
        ),
        "json": (200, b'{"level": "warn", "msg": "token reuse detected"}\n'),
        "waiting": (
            400,
            b'container "waiting" in pod "api-0" is waiting to start: ContainerCreating',
        ),
        "broken": (500, b"kubelet: runtime unavailable"),
    }
    core = client.CoreV1Api(admin)
    await core.create_namespaced_pod(
        ns, _bare_pod("api-0", node, "app", "json", "waiting", "broken")
    )
    try:
        spec = catalogue.get("kubernetes.pod_logs")
        target = _pods_target(ns)
        params = params_of(spec, tail_lines=50, limit_bytes=4096, max_lines=2)
        planned = await spec.plan(target, params)
        assert planned[1:] == tuple(
            _log_read(ns, "api-0", c, 50, 4096) for c in ("app", "json", "waiting", "broken")
        )
        recorder.sent.clear()
        outcome = await spec.execute(target, params, 1)
        assert recorder.sent == list(planned)
        # The apiserver asked the kubelet with the same bounds.
        assert fake.asked[0] == f"/containerLogs/{ns}/api-0/app?limitBytes=4096&tailLines=50"
        assert len(fake.asked) == 4
        app, json_log, waiting, broken = outcome["logs"]
        assert app == {
            "pod": "api-0",
            "container": "app",
            "phase": "Pending",
            "node": node,
            "available": True,
            "lines_read": 6,
            "matched": 3,
            "lines": ["Authorization header missing", "refreshed token for session 42"],
            "lines_dropped": 1,
        }
        assert json_log["lines"] == ['{"level": "warn", "msg": "token reuse detected"}']  # as text
        assert waiting["available"] is False
        assert waiting["reason"] == (
            '400 Bad Request: container "waiting" in pod "api-0" is waiting to start: '
            "ContainerCreating"
        )
        assert waiting["retriable"] is False
        assert broken["available"] is False
        assert broken["reason"].startswith("500 Internal Server Error: ")
        assert "kubelet: runtime unavailable" in broken["reason"]
        assert broken["retriable"] is True
        assert outcome["unavailable"] == 2

        other = await spec.execute(target, params_of(spec, pattern="CACHE|health"), 2)
        assert other["logs"][0]["lines"] == ["GET /health 200", "cache miss"]
    finally:
        await _force_delete(core, ns, "api-0")


# -- RBAC ----------------------------------------------------------------------------------------


async def test_a_remediator_that_may_only_list_pods(
    services: Services, admin: client.ApiClient, ns: str
) -> None:
    """A ServiceAccount whose Role lists Pods only: each log is unavailable, forbidden (the
    action still succeeds); top and rollout_history are failures naming what was refused."""
    apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
    rbac = client.RbacAuthorizationV1Api(admin)
    await apps.create_namespaced_deployment(ns, deployment(BACKEND, 1))
    await eventually(lambda: _pods(core, ns, 1), what="a Pod")
    account = "sevpipe-reader"
    await core.create_namespaced_service_account(
        ns, client.V1ServiceAccount(metadata=meta(account))
    )
    await rbac.create_namespaced_role(
        ns,
        client.V1Role(
            metadata=meta("pod-lister"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])],
        ),
    )
    await rbac.create_namespaced_role_binding(
        ns,
        client.V1RoleBinding(
            metadata=meta("pod-lister"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="pod-lister"
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=ns)],
        ),
    )

    async def sa_factory() -> client.ApiClient:
        return await service_account_client(services.kubeconfig, core, ns, account)

    cat = kubernetes_catalogue(sa_factory)
    logs = cat.get("kubernetes.pod_logs")
    target, params = _pods_target(ns), params_of(logs)

    async def listed() -> Any:
        try:
            return await logs.execute(target, params, 1)
        except KubernetesForbidden:
            return None

    outcome = await eventually(listed, what="the Role binding in effect", within=10)
    (log,) = outcome["logs"]
    assert log["available"] is False
    assert log["retriable"] is False
    assert log["reason"].startswith("403 Forbidden: ")
    assert f"system:serviceaccount:{ns}:{account}" in log["reason"]
    assert '"pods/log"' in log["reason"]

    top = cat.get("kubernetes.top")
    with pytest.raises(KubernetesForbidden) as refused:
        await top.execute(Target(kind="Namespace", namespace=ns), params_of(top), 1)
    assert str(refused.value) == f"forbidden: list pods.metrics.k8s.io in namespace {ns}"
    assert refused.value.retriable is False
    history = cat.get("kubernetes.rollout_history")
    with pytest.raises(KubernetesForbidden, match=f"forbidden: get deployments in namespace {ns}"):
        await history.execute(dep_target(ns, BACKEND), params_of(history), 1)
