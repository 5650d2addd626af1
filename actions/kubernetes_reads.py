"""The Kubernetes actions' shared ground (clients, errors, paths) and the read-only actions:
``kubernetes.get_state`` (a namespace) and ``kubernetes.rollout_status`` (a Deployment).

Errors: an ``ApiException`` 429, 5xx or 409, a timeout or a connection error becomes
:class:`KubernetesUnavailable` (``retriable = True``: the stage retries later, checking
first); 403 becomes :class:`KubernetesForbidden` ("forbidden: patch deployments in namespace
X"), 404 :class:`KubernetesNotFound`, anything else :class:`KubernetesError`: the action's
failed outcome, not retried.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict

from actions.catalogue import Outcome
from schemas.actions import ApiRequest, Target

T = TypeVar("T")

ApiClientFactory = Callable[[], Awaitable[client.ApiClient]]
"""A fresh ApiClient per call (e.g. ``config.new_client_from_config``); the action closes it."""

MAX_OBJECTS: Final = 200
"""get_state lists at most this many objects of each kind (``truncated`` says when more)."""
REQUEST_TIMEOUT: Final = 30.0
PROGRESS_DEADLINE_EXCEEDED: Final = "ProgressDeadlineExceeded"


class KubernetesError(Exception):
    """A Kubernetes action's failed outcome: reported, not retried."""

    retriable = False


class KubernetesUnavailable(KubernetesError):
    """429, 5xx, 409 (re-read and try again), a timeout, no connection: retried later."""

    retriable = True


class KubernetesForbidden(KubernetesError):
    """RBAC refused the verb on the resource (403)."""


class KubernetesNotFound(KubernetesError):
    """The target does not exist (404)."""


class KubernetesRefused(KubernetesError):
    """The action refuses the object as it stands (e.g. a paused Deployment)."""


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


async def call(verb: str, resource: str, namespace: str, request: Awaitable[T]) -> T:
    """Await one API call, its errors mapped as the module doc says."""
    where = f"{resource} in namespace {namespace}"
    try:
        return await request
    except ApiException as exc:
        status = exc.status or 0
        if status == 403:
            raise KubernetesForbidden(f"forbidden: {verb} {where}") from exc
        if status == 404:
            raise KubernetesNotFound(f"not found: {verb} {where}: {exc.reason}") from exc
        if status in (409, 429) or status >= 500:
            raise KubernetesUnavailable(f"{verb} {where}: {status} {exc.reason}") from exc
        body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
        raise KubernetesError(f"{verb} {where}: {status} {exc.reason}: {body}") from exc
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise KubernetesUnavailable(f"{verb} {where}: {type(exc).__name__}: {exc}") from exc


def namespace_of(target: Target) -> str:
    """A Namespace target names its namespace in ``namespace`` (or, failing that, ``name``)."""
    ns = target.namespace or (target.name if target.kind == "Namespace" else "")
    if not ns:
        raise KubernetesError(f"target {target.key()} names no namespace")
    return ns


def deployment_path(target: Target) -> str:
    if not target.name:
        raise KubernetesError(f"target {target.key()} names no Deployment")
    return f"/apis/apps/v1/namespaces/{namespace_of(target)}/deployments/{target.name}"


def _conditions(dep: client.V1Deployment) -> list[dict[str, Any]]:
    return [
        {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
        for c in (dep.status.conditions if dep.status else None) or []
    ]


def deployment_summary(dep: client.V1Deployment) -> dict[str, Any]:
    """Replicas, generations, conditions, and the verdicts ``complete`` and ``failed``:
    complete as ``kubectl rollout status`` has it (the controller saw the latest spec, every
    desired replica is updated and available, no old ones remain); failed when the Progressing
    condition says ProgressDeadlineExceeded."""
    spec, status = dep.spec, dep.status or client.V1DeploymentStatus()
    desired = spec.replicas if spec and spec.replicas is not None else 1
    generation = dep.metadata.generation or 0
    observed = status.observed_generation or 0
    updated = status.updated_replicas or 0
    available = status.available_replicas or 0
    total = status.replicas or 0
    conditions = _conditions(dep)
    failed = any(
        c["type"] == "Progressing" and c["reason"] == PROGRESS_DEADLINE_EXCEEDED for c in conditions
    )
    complete = (
        observed >= generation and updated >= desired and available >= desired and total <= updated
    )
    return {
        "name": dep.metadata.name,
        "generation": generation,
        "observed_generation": observed,
        "paused": bool(spec and spec.paused),
        "replicas": {
            "desired": desired,
            "current": total,
            "updated": updated,
            "ready": status.ready_replicas or 0,
            "available": available,
            "unavailable": status.unavailable_replicas or 0,
        },
        "conditions": conditions,
        "complete": complete and not failed,
        "failed": failed,
    }


def _listing(ns: str, kind_path: str) -> ApiRequest:
    return ApiRequest(method="GET", path=f"{kind_path.format(ns=ns)}?limit={MAX_OBJECTS}")


_KINDS: Final = {
    "deployments": "/apis/apps/v1/namespaces/{ns}/deployments",
    "pods": "/api/v1/namespaces/{ns}/pods",
    "services": "/api/v1/namespaces/{ns}/services",
    "ingresses": "/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses",
}


async def plan_get_state(target: Target, params: NoParams) -> tuple[ApiRequest, ...]:
    ns = namespace_of(target)
    return tuple(_listing(ns, path) for path in _KINDS.values())


def _more(meta: client.V1ListMeta | None) -> bool:
    return bool(meta and (meta._continue or meta.remaining_item_count))


def get_state(factory: ApiClientFactory) -> Callable[[Target, NoParams, int], Awaitable[Outcome]]:
    async def execute(target: Target, params: NoParams, token: int) -> Outcome:
        ns = namespace_of(target)
        opts: dict[str, Any] = {"limit": MAX_OBJECTS, "_request_timeout": REQUEST_TIMEOUT}
        async with await factory() as api:
            apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
            net = client.NetworkingV1Api(api)
            deps = await call(
                "list", "deployments", ns, apps.list_namespaced_deployment(ns, **opts)
            )
            pods = await call("list", "pods", ns, core.list_namespaced_pod(ns, **opts))
            svcs = await call("list", "services", ns, core.list_namespaced_service(ns, **opts))
            ings = await call("list", "ingresses", ns, net.list_namespaced_ingress(ns, **opts))
            summaries = [deployment_summary(d) for d in deps.items]
            ready = all(_ready(s) for s in summaries)
            # Readiness is over every Deployment, not only the first MAX_OBJECTS shown.
            cont = deps.metadata._continue if deps.metadata else None
            while cont and ready:
                page = await call(
                    "list",
                    "deployments",
                    ns,
                    apps.list_namespaced_deployment(ns, _continue=cont, **opts),
                )
                ready = all(_ready(deployment_summary(d)) for d in page.items)
                cont = page.metadata._continue if page.metadata else None
        phases: dict[str, int] = {}
        for pod in pods.items:
            phase = (pod.status.phase if pod.status else None) or "Unknown"
            phases[phase] = phases.get(phase, 0) + 1
        return {
            "namespace": ns,
            "ready": ready,
            "max_objects_per_kind": MAX_OBJECTS,
            "truncated": {
                "deployments": _more(deps.metadata),
                "pods": _more(pods.metadata),
                "services": _more(svcs.metadata),
                "ingresses": _more(ings.metadata),
            },
            "deployments": summaries,
            "pods": {
                "by_phase": phases,
                "items": [_pod(p) for p in pods.items],
            },
            "services": [_service(s) for s in svcs.items],
            "ingresses": [_ingress(i) for i in ings.items],
        }

    return execute


def _ready(summary: Mapping[str, Any]) -> bool:
    """Every replica available, of the latest spec the controller has seen, and not failed."""
    replicas = summary["replicas"]
    return bool(
        summary["observed_generation"] >= summary["generation"]
        and replicas["available"] >= replicas["desired"]
        and replicas["updated"] >= replicas["desired"]
        and not summary["failed"]
    )


def _pod(pod: client.V1Pod) -> dict[str, Any]:
    statuses = (pod.status.container_statuses if pod.status else None) or []
    return {
        "name": pod.metadata.name,
        "phase": pod.status.phase if pod.status else None,
        "node": pod.spec.node_name if pod.spec else None,
        "ready": bool(statuses) and all(s.ready for s in statuses),
        "restarts": sum(s.restart_count or 0 for s in statuses),
    }


def _service(svc: client.V1Service) -> dict[str, Any]:
    spec = svc.spec or client.V1ServiceSpec()
    return {
        "name": svc.metadata.name,
        "type": spec.type,
        "cluster_ip": spec.cluster_ip,
        "ports": [f"{p.port}/{p.protocol}" for p in spec.ports or []],
        "selector": spec.selector or {},
    }


def _ingress(ing: client.V1Ingress) -> dict[str, Any]:
    spec = ing.spec or client.V1IngressSpec()
    return {
        "name": ing.metadata.name,
        "class": spec.ingress_class_name,
        "hosts": sorted({r.host for r in spec.rules or [] if r.host}),
    }


async def plan_rollout_status(target: Target, params: NoParams) -> tuple[ApiRequest, ...]:
    return (ApiRequest(method="GET", path=deployment_path(target)),)


def rollout_status(
    factory: ApiClientFactory,
) -> Callable[[Target, NoParams, int], Awaitable[Outcome]]:
    async def execute(target: Target, params: NoParams, token: int) -> Outcome:
        deployment_path(target)
        ns = namespace_of(target)
        async with await factory() as api:
            dep = await call(
                "get",
                "deployments",
                ns,
                client.AppsV1Api(api).read_namespaced_deployment(
                    target.name, ns, _request_timeout=REQUEST_TIMEOUT
                ),
            )
        return deployment_summary(dep)

    return execute


async def no_check(target: Target, params: BaseModel) -> Outcome | None:
    """A read has no effect to find: after a crash it simply runs again."""
    return None
