"""Two more Kubernetes mutations of the catalogue (registered by ``kubernetes_catalogue``):

- ``kubernetes.emergency_hpa`` (Deployment; ``min_replicas``, ``max_replicas``): an
  autoscaling/v2 HorizontalPodAutoscaler named as the Deployment and scaling it. ``plan`` reads
  whether it exists: a POST of a new one (CPU utilisation target 70 %) when it does not, else
  a strategic-merge PATCH of its bounds. ``check``: it exists with exactly these bounds.
- ``kubernetes.patch_configmap`` (ConfigMap; ``key``, ``value``): a strategic-merge PATCH of
  ``data[key]``; the result keeps the previous value (for a person to put back). ``check``:
  the key already has this value.
"""

from __future__ import annotations

from typing import Any, Final, Self, cast

from kubernetes_asyncio import client
from pydantic import BaseModel, ConfigDict, Field, model_validator

from actions.catalogue import Outcome
from actions.kubernetes_reads import (
    REQUEST_TIMEOUT,
    ApiClientFactory,
    KubernetesError,
    KubernetesNotFound,
    call,
    deployment_path,
    namespace_of,
)
from schemas.actions import ApiRequest, Target

STRATEGIC: Final = "application/strategic-merge-patch+json"
HPA_CPU_PERCENT: Final = 70
HPAS: Final = "horizontalpodautoscalers"


class HpaBounds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_replicas: int = Field(ge=1)
    max_replicas: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas is below min_replicas")
        return self


class ConfigMapKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1)
    value: str


def hpa_body(ns: str, name: str, params: HpaBounds) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": ns, "labels": {"sevpipe.io/emergency": "true"}},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": params.min_replicas,
            "maxReplicas": params.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": HPA_CPU_PERCENT},
                    },
                }
            ],
        },
    }


class Capacity:
    """emergency_hpa and patch_configmap, on clients from FACTORY."""

    def __init__(self, factory: ApiClientFactory) -> None:
        self.factory = factory

    # emergency_hpa

    async def _hpa(
        self, api: client.ApiClient, ns: str, name: str
    ) -> client.V2HorizontalPodAutoscaler | None:
        try:
            return await call(
                "get",
                HPAS,
                ns,
                client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(
                    name, ns, _request_timeout=REQUEST_TIMEOUT
                ),
            )
        except KubernetesNotFound:
            return None

    @staticmethod
    def _hpa_request(target: Target, params: HpaBounds, exists: bool) -> ApiRequest:
        deployment_path(target)  # names a Deployment
        ns, name = namespace_of(target), target.name
        collection = f"/apis/autoscaling/v2/namespaces/{ns}/{HPAS}"
        if not exists:
            return ApiRequest(method="POST", path=collection, body=hpa_body(ns, name, params))
        bounds = {"minReplicas": params.min_replicas, "maxReplicas": params.max_replicas}
        return ApiRequest(
            method="PATCH",
            path=f"{collection}/{name}",
            body={"spec": bounds},
            content_type=STRATEGIC,
        )

    async def plan_hpa(self, target: Target, params: HpaBounds) -> tuple[ApiRequest, ...]:
        async with await self.factory() as api:
            current = await self._hpa(api, namespace_of(target), target.name)
        return (self._hpa_request(target, params, current is not None),)

    async def emergency_hpa(self, target: Target, params: HpaBounds, token: int) -> Outcome:
        ns, name = namespace_of(target), target.name
        async with await self.factory() as api:
            hpas = client.AutoscalingV2Api(api)
            current = await self._hpa(api, ns, name)
            request = self._hpa_request(target, params, current is not None)
            if current is None:
                # A 409 (created meanwhile) is retriable: the retry checks, then patches.
                done = await call(
                    "create",
                    HPAS,
                    ns,
                    hpas.create_namespaced_horizontal_pod_autoscaler(
                        ns,
                        cast(client.V2HorizontalPodAutoscaler, request.body),
                        _request_timeout=REQUEST_TIMEOUT,
                    ),
                )
            else:
                done = await call(
                    "patch",
                    HPAS,
                    ns,
                    hpas.patch_namespaced_horizontal_pod_autoscaler(
                        name, ns, request.body, _request_timeout=REQUEST_TIMEOUT
                    ),
                )
        previous = None
        if current is not None and current.spec:
            previous = {
                "min_replicas": current.spec.min_replicas,
                "max_replicas": current.spec.max_replicas,
            }
        return {
            "created": current is None,
            "min_replicas": done.spec.min_replicas if done.spec else None,
            "max_replicas": done.spec.max_replicas if done.spec else None,
            "previous": previous,
            "request": request.model_dump(mode="json"),
        }

    async def hpa_in_place(self, target: Target, params: HpaBounds) -> Outcome | None:
        async with await self.factory() as api:
            current = await self._hpa(api, namespace_of(target), target.name)
        if current is None or current.spec is None:
            return None
        if (current.spec.min_replicas, current.spec.max_replicas) != (
            params.min_replicas,
            params.max_replicas,
        ):
            return None
        return {"min_replicas": params.min_replicas, "max_replicas": params.max_replicas}

    # patch_configmap

    @staticmethod
    def _cm(target: Target) -> tuple[str, str]:
        if not target.name:
            raise KubernetesError(f"target {target.key()} names no ConfigMap")
        return namespace_of(target), target.name

    async def plan_configmap(self, target: Target, params: ConfigMapKey) -> tuple[ApiRequest, ...]:
        ns, name = self._cm(target)
        return (
            ApiRequest(
                method="PATCH",
                path=f"/api/v1/namespaces/{ns}/configmaps/{name}",
                body={"data": {params.key: params.value}},
                content_type=STRATEGIC,
            ),
        )

    async def _data(self, api: client.ApiClient, ns: str, name: str) -> dict[str, str]:
        cm = await call(
            "get",
            "configmaps",
            ns,
            client.CoreV1Api(api).read_namespaced_config_map(
                name, ns, _request_timeout=REQUEST_TIMEOUT
            ),
        )
        return dict(cm.data or {})

    async def patch_configmap(self, target: Target, params: ConfigMapKey, token: int) -> Outcome:
        ns, name = self._cm(target)
        (request,) = await self.plan_configmap(target, params)
        async with await self.factory() as api:
            before = await self._data(api, ns, name)
            await call(
                "patch",
                "configmaps",
                ns,
                client.CoreV1Api(api).patch_namespaced_config_map(
                    name, ns, request.body, _request_timeout=REQUEST_TIMEOUT
                ),
            )
        return {
            "key": params.key,
            "value": params.value,
            "previous_value": before.get(params.key),
            "request": request.model_dump(mode="json"),
        }

    async def configmap_patched(self, target: Target, params: ConfigMapKey) -> Outcome | None:
        ns, name = self._cm(target)
        async with await self.factory() as api:
            data = await self._data(api, ns, name)
        if data.get(params.key) != params.value:
            return None
        return {"key": params.key, "value": params.value}
