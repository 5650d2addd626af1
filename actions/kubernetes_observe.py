"""Two read-only Kubernetes actions of the catalogue (registered by ``kubernetes_catalogue``):

- ``kubernetes.top`` (Namespace; ``max_pods``, ``max_nodes``): the CPU and memory of the
  namespace's Pods and of the cluster's Nodes, from ``metrics.k8s.io/v1beta1`` (what
  ``kubectl top`` reads), busiest first. A cluster that does not serve that API (no
  metrics-server: the apiserver answers 404) is a successful outcome that says so,
  ``{"available": false, "reason": ...}``; the plan's second request (the Nodes) is then not
  sent. Node metrics are cluster-scoped: refused by RBAC (403), they are reported unavailable
  beside the Pods'.
- ``kubernetes.rollout_history`` (Deployment; ``max_revisions``): the ReplicaSets the
  Deployment owns (listed by its selector, kept by owner uid), newest revision
  (``deployment.kubernetes.io/revision``) first: name, images by container,
  ``kubernetes.io/change-cause``, created, replicas. ``plan`` reads the Deployment for its
  selector.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import urlencode

from kubernetes_asyncio import client
from pydantic import BaseModel, ConfigDict, Field

from actions.catalogue import Outcome
from actions.kubernetes_reads import (
    MAX_OBJECTS,
    REQUEST_TIMEOUT,
    ApiClientFactory,
    KubernetesForbidden,
    KubernetesNotFound,
    call,
    deployment_path,
    namespace_of,
)
from schemas.actions import ApiRequest, Target

METRICS_GROUP: Final = "metrics.k8s.io"
METRICS_VERSION: Final = "v1beta1"
METRICS: Final = f"/apis/{METRICS_GROUP}/{METRICS_VERSION}"
NOT_SERVED: Final = f"{METRICS_GROUP} is not served by this cluster (no metrics-server)"
REVISION: Final = "deployment.kubernetes.io/revision"
CHANGE_CAUSE: Final = "kubernetes.io/change-cause"
MIB: Final = Decimal(2**20)

_SMALL: Final = {"": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3")}
_SCALE: Final = {
    **_SMALL,
    **{p: Decimal(1000) ** (i + 1) for i, p in enumerate("kMGTPE")},
    **{f"{p}i": Decimal(1024) ** (i + 1) for i, p in enumerate("KMGTPE")},
}
_QUANTITY: Final = re.compile(
    r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)"
)


class TopParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_pods: int = Field(20, ge=1, le=MAX_OBJECTS, description="the busiest Pods shown")
    max_nodes: int = Field(20, ge=1, le=MAX_OBJECTS, description="the busiest Nodes shown")


class HistoryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_revisions: int = Field(10, ge=1, le=MAX_OBJECTS, description="the newest shown")


def parse_quantity(value: str) -> Decimal | None:
    """A Kubernetes quantity ("250m", "12345n", "64Mi", "1.5G", "1e3") as a number; None
    when it is not one."""
    found = _QUANTITY.fullmatch(value.strip())
    if found is None:
        return None
    try:
        return Decimal(found.group(1)) * _SCALE[found.group(2)]
    except InvalidOperation:
        return None


def usage(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics ``usage`` ({"cpu": "12345n", "memory": "64Mi"}) in millicores and MiB."""
    cpu = parse_quantity(str(raw.get("cpu", "")))
    memory = parse_quantity(str(raw.get("memory", "")))
    return {
        "cpu_millicores": None if cpu is None else int((cpu * 1000).to_integral_value()),
        "memory_mib": None if memory is None else float(round(memory / MIB, 1)),
    }


def _sum(parts: list[dict[str, Any]], key: str) -> Any:
    values = [p[key] for p in parts if p[key] is not None]
    return sum(values) if values else None


def _busiest(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda i: (-(i["cpu_millicores"] or 0), i["name"] or ""))


def pod_usage(item: Mapping[str, Any]) -> dict[str, Any]:
    """One PodMetrics object: its containers' usage and their sum."""
    containers = [
        {"name": c.get("name"), **usage(c.get("usage") or {})} for c in item.get("containers") or []
    ]
    return {
        "name": (item.get("metadata") or {}).get("name"),
        "cpu_millicores": _sum(containers, "cpu_millicores"),
        "memory_mib": _sum(containers, "memory_mib"),
        "containers": containers,
        "window": item.get("window"),
    }


def node_usage(item: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": (item.get("metadata") or {}).get("name"), **usage(item.get("usage") or {})}


def top_outcome(
    ns: str, pods: Mapping[str, Any], nodes: Mapping[str, Any] | str, params: TopParams
) -> dict[str, Any]:
    """The outcome from a PodMetricsList and a NodeMetricsList (or why there is none)."""
    pod_items = _busiest([pod_usage(i) for i in pods.get("items") or []])
    nodes_part: dict[str, Any]
    if isinstance(nodes, str):
        nodes_part = {"available": False, "reason": nodes}
    else:
        node_items = _busiest([node_usage(i) for i in nodes.get("items") or []])
        nodes_part = {
            "available": True,
            "total": len(node_items),
            "truncated": len(node_items) > params.max_nodes,
            "items": node_items[: params.max_nodes],
        }
    return {
        "available": True,
        "namespace": ns,
        "pods": {
            "total": len(pod_items),
            "truncated": len(pod_items) > params.max_pods,
            "cpu_millicores": _sum(pod_items, "cpu_millicores"),
            "memory_mib": _sum(pod_items, "memory_mib"),
            "items": pod_items[: params.max_pods],
        },
        "nodes": nodes_part,
    }


def selector_string(selector: client.V1LabelSelector | None) -> str:
    """A LabelSelector as the ``labelSelector`` query parameter has it."""
    if selector is None:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.match_labels or {}).items())]
    for expr in selector.match_expressions or []:
        values = ",".join(sorted(expr.values or []))
        parts.append(
            {
                "In": f"{expr.key} in ({values})",
                "NotIn": f"{expr.key} notin ({values})",
                "Exists": expr.key,
                "DoesNotExist": f"!{expr.key}",
            }[expr.operator]
        )
    return ",".join(parts)


async def read_deployment(api: client.ApiClient, target: Target) -> client.V1Deployment:
    deployment_path(target)  # names a Deployment, or KubernetesError
    ns = namespace_of(target)
    return await call(
        "get",
        "deployments",
        ns,
        client.AppsV1Api(api).read_namespaced_deployment(
            target.name, ns, _request_timeout=REQUEST_TIMEOUT
        ),
    )


def _revision(annotations: Mapping[str, str] | None) -> int | None:
    try:
        return int((annotations or {})[REVISION])
    except (KeyError, ValueError):
        return None


def revision_entry(rs: client.V1ReplicaSet, current: int | None) -> dict[str, Any]:
    annotations = rs.metadata.annotations or {}
    spec = rs.spec.template.spec if rs.spec and rs.spec.template else None
    revision = _revision(annotations)
    return {
        "revision": revision,
        "replicaset": rs.metadata.name,
        "images": {c.name: c.image for c in (spec.containers if spec else None) or []},
        "change_cause": annotations.get(CHANGE_CAUSE),
        "created": (
            rs.metadata.creation_timestamp.isoformat() if rs.metadata.creation_timestamp else None
        ),
        "replicas": rs.spec.replicas if rs.spec else None,
        "ready_replicas": (rs.status.ready_replicas if rs.status else None) or 0,
        "current": revision is not None and revision == current,
    }


class Observe:
    """top and rollout_history, on clients from FACTORY."""

    def __init__(self, factory: ApiClientFactory) -> None:
        self.factory = factory

    # top

    async def plan_top(self, target: Target, params: TopParams) -> tuple[ApiRequest, ...]:
        ns = namespace_of(target)
        return (
            ApiRequest(method="GET", path=f"{METRICS}/namespaces/{ns}/pods"),
            ApiRequest(method="GET", path=f"{METRICS}/nodes"),
        )

    async def top(self, target: Target, params: TopParams, token: int) -> Outcome:
        ns = namespace_of(target)
        async with await self.factory() as api:
            metrics = client.CustomObjectsApi(api)
            try:
                pods = await call(
                    "list",
                    f"pods.{METRICS_GROUP}",
                    ns,
                    metrics.list_namespaced_custom_object(
                        METRICS_GROUP, METRICS_VERSION, ns, "pods", _request_timeout=REQUEST_TIMEOUT
                    ),
                )
            except KubernetesNotFound:
                return {"available": False, "namespace": ns, "reason": NOT_SERVED}
            nodes = await self._nodes(metrics)
        return top_outcome(ns, pods, nodes, params)

    @staticmethod
    async def _nodes(metrics: client.CustomObjectsApi) -> Mapping[str, Any] | str:
        """The NodeMetricsList, or why not (a namespaced remediator may not list Nodes)."""
        what = f"nodes.{METRICS_GROUP}"
        try:
            listed: Mapping[str, Any] = await call(
                "list",
                what,
                "(cluster-scoped)",
                metrics.list_cluster_custom_object(
                    METRICS_GROUP, METRICS_VERSION, "nodes", _request_timeout=REQUEST_TIMEOUT
                ),
            )
        except KubernetesForbidden:
            return f"forbidden: list {what} (cluster-scoped)"
        except KubernetesNotFound:
            return f"{what} is not served by this cluster"
        return listed

    # rollout_history

    async def plan_history(self, target: Target, params: HistoryParams) -> tuple[ApiRequest, ...]:
        async with await self.factory() as api:
            dep = await read_deployment(api, target)
        return (ApiRequest(method="GET", path=deployment_path(target)), _rs_listing(target, dep))

    async def history(self, target: Target, params: HistoryParams, token: int) -> Outcome:
        ns = namespace_of(target)
        async with await self.factory() as api:
            dep = await read_deployment(api, target)
            listed = await call(
                "list",
                "replicasets",
                ns,
                client.AppsV1Api(api).list_namespaced_replica_set(
                    ns,
                    label_selector=selector_string(dep.spec.selector if dep.spec else None),
                    limit=MAX_OBJECTS,
                    _request_timeout=REQUEST_TIMEOUT,
                ),
            )
        uid = dep.metadata.uid
        owned = [
            rs
            for rs in listed.items
            if any(
                ref.kind == "Deployment" and ref.uid == uid
                for ref in rs.metadata.owner_references or []
            )
        ]
        current = _revision(dep.metadata.annotations)
        entries = [revision_entry(rs, current) for rs in owned]
        entries.sort(key=lambda e: e["revision"] if e["revision"] is not None else -1, reverse=True)
        more = bool(listed.metadata and listed.metadata._continue)
        return {
            "deployment": target.name,
            "namespace": ns,
            "current_revision": current,
            "total": len(entries),
            "truncated": more or len(entries) > params.max_revisions,
            "revisions": entries[: params.max_revisions],
        }


def _rs_listing(target: Target, dep: client.V1Deployment) -> ApiRequest:
    query = urlencode(
        [
            ("labelSelector", selector_string(dep.spec.selector if dep.spec else None)),
            ("limit", MAX_OBJECTS),
        ]
    )
    return ApiRequest(
        method="GET", path=f"/apis/apps/v1/namespaces/{namespace_of(target)}/replicasets?{query}"
    )
