"""The catalogue's Kubernetes actions, through kubernetes_asyncio: ``kubernetes_catalogue``.

Mutations (each ``plan`` is the exact request ``execute`` sends; ``check`` finds it done):

- ``kubernetes.rollout_restart`` (Deployment): the strategic-merge PATCH of the pod
  template's ``kubectl.kubernetes.io/restartedAt`` annotation, as ``kubectl rollout restart``
  does, but with a deterministic value instead of the time. Run by the stage, the value is
  ``sevpipe-action-<action id>`` (``catalogue.ACTION_ID``): the planned request is the one
  sent, and ``check`` finds the restart done exactly when the template carries this action's
  mark, whatever changed the spec since and whatever restart came before. Called outside the
  stage, it is ``sevpipe-generation-<G>``, G the Deployment's generation when planned, and
  ``check`` finds it when the restart is the latest spec change. A paused Deployment is
  refused (a restart would not roll out).
- ``kubernetes.scale`` (Deployment, ``replicas``): a PATCH of the scale subresource.
- ``kubernetes.emergency_hpa`` and ``kubernetes.patch_configmap``: see
  :mod:`actions.kubernetes_capacity`.
- ``kubernetes.set_image`` (destructive; the inventory's emergency image): see
  :mod:`actions.kubernetes_image`.
- ``kubernetes.block_ip`` (a CIDR added to the ingress controller's ConfigMap list, e.g.
  ingress-nginx's ``block-cidrs``): see :mod:`actions.kubernetes_security`.

Reads (``kubernetes.get_state``, ``kubernetes.rollout_status``) and the error mapping are in
:mod:`actions.kubernetes_reads`; ``kubernetes.top`` (metrics.k8s.io, said so when absent) and
``kubernetes.rollout_history`` in :mod:`actions.kubernetes_observe`; ``kubernetes.pod_logs``
(matching lines of a pod group's logs) in :mod:`actions.kubernetes_logs`.
"""

from __future__ import annotations

from typing import Any, Final

from kubernetes_asyncio import client
from pydantic import BaseModel, ConfigDict, Field

from actions.catalogue import ACTION_ID, ActionSpec, Catalogue, Outcome
from actions.kubernetes_capacity import Capacity, ConfigMapKey, HpaBounds
from actions.kubernetes_image import ImageParams, SetImage
from actions.kubernetes_logs import LogParams, PodLogs
from actions.kubernetes_observe import HistoryParams, Observe, TopParams
from actions.kubernetes_reads import (
    REQUEST_TIMEOUT,
    ApiClientFactory,
    KubernetesError,
    KubernetesRefused,
    NoParams,
    call,
    deployment_path,
    get_state,
    namespace_of,
    no_check,
    plan_get_state,
    plan_rollout_status,
    rollout_status,
)
from actions.kubernetes_security import BlockIp, BlockIpParams
from schemas.actions import ApiRequest, Target

RESTARTED_AT: Final = "kubectl.kubernetes.io/restartedAt"
RESTART_PREFIX: Final = "sevpipe-generation-"
ACTION_PREFIX: Final = "sevpipe-action-"
STRATEGIC: Final = "application/strategic-merge-patch+json"


class Replicas(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replicas: int = Field(ge=0)


def restart_value(generation: int) -> str:
    """The mark of a restart: the action's own id when the stage runs it (ACTION_ID), else
    the Deployment's generation when planned."""
    action_id = ACTION_ID.get()
    if action_id is not None:
        return f"{ACTION_PREFIX}{action_id}"
    return f"{RESTART_PREFIX}{generation}"


def restart_body(generation: int) -> dict[str, Any]:
    annotations = {RESTARTED_AT: restart_value(generation)}
    return {"spec": {"template": {"metadata": {"annotations": annotations}}}}


def _template_annotation(dep: client.V1Deployment) -> str | None:
    meta = dep.spec.template.metadata if dep.spec and dep.spec.template else None
    return ((meta.annotations if meta else None) or {}).get(RESTARTED_AT)


def _deployment_target(target: Target) -> tuple[str, str]:
    deployment_path(target)  # names a Deployment, or KubernetesError
    return namespace_of(target), target.name


class _Deployments:
    """The Deployment actions, on clients from FACTORY."""

    def __init__(self, factory: ApiClientFactory) -> None:
        self.factory = factory

    async def _read(self, api: client.ApiClient, target: Target) -> client.V1Deployment:
        ns, name = _deployment_target(target)
        return await call(
            "get",
            "deployments",
            ns,
            client.AppsV1Api(api).read_namespaced_deployment(
                name, ns, _request_timeout=REQUEST_TIMEOUT
            ),
        )

    # rollout_restart

    async def plan_restart(self, target: Target, params: NoParams) -> tuple[ApiRequest, ...]:
        async with await self.factory() as api:
            dep = await self._read(api, target)
        return (self._restart_request(target, dep),)

    def _restart_request(self, target: Target, dep: client.V1Deployment) -> ApiRequest:
        return ApiRequest(
            method="PATCH",
            path=deployment_path(target),
            body=restart_body(dep.metadata.generation or 0),
            content_type=STRATEGIC,
        )

    async def restart(self, target: Target, params: NoParams, token: int) -> Outcome:
        ns, name = _deployment_target(target)
        async with await self.factory() as api:
            dep = await self._read(api, target)
            if dep.spec and dep.spec.paused:
                raise KubernetesRefused(
                    f"deployment {name} in namespace {ns} is paused: a restart would not roll "
                    "out; resume it first (kubectl rollout resume)"
                )
            request = self._restart_request(target, dep)
            patched = await call(
                "patch",
                "deployments",
                ns,
                client.AppsV1Api(api).patch_namespaced_deployment(
                    name, ns, request.body, _request_timeout=REQUEST_TIMEOUT
                ),
            )
        return {
            "generation": patched.metadata.generation,
            "previous_generation": dep.metadata.generation,
            "restarted_at": _template_annotation(patched),
            "request": request.model_dump(mode="json"),
        }

    async def restarted(self, target: Target, params: NoParams) -> Outcome | None:
        async with await self.factory() as api:
            dep = await self._read(api, target)
        generation = dep.metadata.generation or 0
        if ACTION_ID.get() is not None:
            # The action's own mark: found whatever changed the spec since; another action's
            # restart is not this one.
            mark = restart_value(generation)
        else:
            mark = restart_value(generation - 1)
        if _template_annotation(dep) != mark:
            return None
        return {"generation": generation, "restarted_at": mark}

    # scale

    async def plan_scale(self, target: Target, params: Replicas) -> tuple[ApiRequest, ...]:
        return (
            ApiRequest(
                method="PATCH",
                path=f"{deployment_path(target)}/scale",
                body={"spec": {"replicas": params.replicas}},
                content_type=STRATEGIC,
            ),
        )

    async def scale(self, target: Target, params: Replicas, token: int) -> Outcome:
        ns, name = _deployment_target(target)
        (request,) = await self.plan_scale(target, params)
        async with await self.factory() as api:
            apps = client.AppsV1Api(api)
            before = await call(
                "get",
                "deployments/scale",
                ns,
                apps.read_namespaced_deployment_scale(name, ns, _request_timeout=REQUEST_TIMEOUT),
            )
            after = await call(
                "patch",
                "deployments/scale",
                ns,
                apps.patch_namespaced_deployment_scale(
                    name, ns, request.body, _request_timeout=REQUEST_TIMEOUT
                ),
            )
        return {
            "replicas": after.spec.replicas if after.spec else None,
            "previous_replicas": before.spec.replicas if before.spec else None,
            "request": request.model_dump(mode="json"),
        }

    async def scaled(self, target: Target, params: Replicas) -> Outcome | None:
        ns, name = _deployment_target(target)
        async with await self.factory() as api:
            current = await call(
                "get",
                "deployments/scale",
                ns,
                client.AppsV1Api(api).read_namespaced_deployment_scale(
                    name, ns, _request_timeout=REQUEST_TIMEOUT
                ),
            )
        replicas = current.spec.replicas if current.spec else None
        return {"replicas": replicas} if replicas == params.replicas else None


def kubernetes_catalogue(
    api_client_factory: ApiClientFactory, catalogue: Catalogue | None = None
) -> Catalogue:
    """The Kubernetes actions, registered in CATALOGUE (a new one by default)."""
    cat = catalogue if catalogue is not None else Catalogue()
    deps = _Deployments(api_client_factory)
    cat.register(
        ActionSpec(
            name="kubernetes.rollout_restart",
            params=NoParams,
            risk="mutating",
            target_kind="Deployment",
            plan=deps.plan_restart,
            execute=deps.restart,
            check=deps.restarted,
            description="restart a Deployment's pods (the restartedAt template annotation)",
        )
    )
    cat.register(
        ActionSpec(
            name="kubernetes.scale",
            params=Replicas,
            risk="mutating",
            target_kind="Deployment",
            plan=deps.plan_scale,
            execute=deps.scale,
            check=deps.scaled,
            description="set a Deployment's replicas through the scale subresource",
        )
    )
    cat.register(
        ActionSpec(
            name="kubernetes.get_state",
            params=NoParams,
            risk="read_only",
            target_kind="Namespace",
            plan=plan_get_state,
            execute=get_state(api_client_factory),
            check=no_check,
            description="Deployments, Pods by phase, Services, Ingresses; ready: all available",
        )
    )
    cat.register(
        ActionSpec(
            name="kubernetes.rollout_status",
            params=NoParams,
            risk="read_only",
            target_kind="Deployment",
            plan=plan_rollout_status,
            execute=rollout_status(api_client_factory),
            check=no_check,
            description="a Deployment's rollout: complete, failed (ProgressDeadlineExceeded)",
        )
    )
    capacity = Capacity(api_client_factory)
    cat.register(
        ActionSpec(
            name="kubernetes.emergency_hpa",
            params=HpaBounds,
            risk="mutating",
            target_kind="Deployment",
            plan=capacity.plan_hpa,
            execute=capacity.emergency_hpa,
            check=capacity.hpa_in_place,
            description="create an autoscaling/v2 HPA for a Deployment, or set its bounds",
        )
    )
    cat.register(
        ActionSpec(
            name="kubernetes.patch_configmap",
            params=ConfigMapKey,
            risk="mutating",
            target_kind="ConfigMap",
            plan=capacity.plan_configmap,
            execute=capacity.patch_configmap,
            check=capacity.configmap_patched,
            description="set one key of a ConfigMap's data",
        )
    )
    observe = Observe(api_client_factory)
    cat.register(
        ActionSpec(
            name="kubernetes.top",
            params=TopParams,
            risk="read_only",
            target_kind="Namespace",
            plan=observe.plan_top,
            execute=observe.top,
            check=no_check,
            description="Pods' and Nodes' CPU and memory (metrics.k8s.io), or that it is absent",
        )
    )
    cat.register(
        ActionSpec(
            name="kubernetes.rollout_history",
            params=HistoryParams,
            risk="read_only",
            target_kind="Deployment",
            plan=observe.plan_history,
            execute=observe.history,
            check=no_check,
            description="a Deployment's revisions (its ReplicaSets), newest first",
        )
    )
    image = SetImage(api_client_factory)
    cat.register(
        ActionSpec(
            name="kubernetes.set_image",
            params=ImageParams,
            risk="destructive",
            target_kind="Deployment",
            plan=image.plan,
            execute=image.set_image,
            check=image.image_set,
            description="set a container's image in a Deployment's pod template",
        )
    )
    logs = PodLogs(api_client_factory)
    cat.register(
        ActionSpec(
            name="kubernetes.pod_logs",
            params=LogParams,
            risk="read_only",
            target_kind="Pods",
            plan=logs.plan,
            execute=logs.pod_logs,
            check=no_check,
            description="the lines of a pod group's logs matching a pattern (auth|login|token)",
        )
    )
    block = BlockIp(api_client_factory)
    cat.register(
        ActionSpec(
            name="kubernetes.block_ip",
            params=BlockIpParams,
            risk="mutating",
            target_kind="ConfigMap",
            plan=block.plan,
            execute=block.block,
            check=block.blocked,
            description="add a CIDR to the ingress controller's block list (block-cidrs)",
        )
    )
    return cat


__all__ = [
    "ConfigMapKey",
    "HpaBounds",
    "KubernetesError",
    "Replicas",
    "kubernetes_catalogue",
]
