"""``kubernetes.set_image`` (Deployment; destructive): set one container's image in the pod
template, as ``kubectl set image`` does.

Params: ``image`` and ``container``. Run by the stage, ``image`` is never a playbook's free
choice: the guard admits only the inventory's ``emergency_image`` for the Deployment and fills
it in when the step gives none (see :mod:`actions.guard`). ``container`` may be left out when
the template has exactly one container; a container the template does not have, or an
ambiguous one, is refused (not retriable) before anything is sent, since a strategic-merge
patch naming an unknown container would try to ADD one.

``plan`` reads the Deployment and returns the strategic-merge PATCH of
``spec.template.spec.containers[name=C].image``; ``execute`` sends it (a no-op when the image
is already there). ``check``: the template's container has the image AND the Deployment
controller has observed that generation (``status.observedGeneration``), so a done action's
rollout is under way; until then it is not done, and a re-run sends the same patch, which
changes nothing.
"""

from __future__ import annotations

from typing import Final

from kubernetes_asyncio import client
from pydantic import BaseModel, ConfigDict, Field

from actions.catalogue import Outcome
from actions.kubernetes_observe import read_deployment
from actions.kubernetes_reads import (
    REQUEST_TIMEOUT,
    ApiClientFactory,
    KubernetesRefused,
    call,
    deployment_path,
    namespace_of,
)
from schemas.actions import ApiRequest, Target

STRATEGIC: Final = "application/strategic-merge-patch+json"


class ImageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str | None = Field(
        None, min_length=1, description="default: the inventory's emergency_image (the guard's)"
    )
    container: str | None = Field(
        None, min_length=1, description="may be left out when the template has one container"
    )


def _containers(dep: client.V1Deployment) -> dict[str, str | None]:
    spec = dep.spec.template.spec if dep.spec and dep.spec.template else None
    return {c.name: c.image for c in (spec.containers if spec else None) or []}


def _where(target: Target) -> str:
    return f"deployment {target.name} in namespace {target.namespace}"


def container_of(target: Target, dep: client.V1Deployment, params: ImageParams) -> str:
    """The container to set: the one named, or the only one; else KubernetesRefused."""
    names = list(_containers(dep))
    shown = ", ".join(names) or "none"
    if params.container is None:
        if len(names) != 1:
            raise KubernetesRefused(
                f"{_where(target)} has {len(names)} containers ({shown}): name one with the "
                "container param"
            )
        return names[0]
    if params.container not in names:
        raise KubernetesRefused(
            f"{_where(target)} has no container {params.container} (containers: {shown})"
        )
    return params.container


def _image(target: Target, params: ImageParams) -> str:
    if params.image is None:
        raise KubernetesRefused(
            f"no image to set on {_where(target)}: give image, or an emergency_image in the "
            "inventory"
        )
    return params.image


def image_request(target: Target, container: str, image: str) -> ApiRequest:
    body = {"spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}}}
    return ApiRequest(
        method="PATCH", path=deployment_path(target), body=body, content_type=STRATEGIC
    )


class SetImage:
    """set_image, on clients from FACTORY."""

    def __init__(self, factory: ApiClientFactory) -> None:
        self.factory = factory

    async def plan(self, target: Target, params: ImageParams) -> tuple[ApiRequest, ...]:
        image = _image(target, params)
        async with await self.factory() as api:
            dep = await read_deployment(api, target)
        return (image_request(target, container_of(target, dep, params), image),)

    async def set_image(self, target: Target, params: ImageParams, token: int) -> Outcome:
        image = _image(target, params)
        ns = namespace_of(target)
        async with await self.factory() as api:
            dep = await read_deployment(api, target)
            container = container_of(target, dep, params)
            request = image_request(target, container, image)
            patched = await call(
                "patch",
                "deployments",
                ns,
                client.AppsV1Api(api).patch_namespaced_deployment(
                    target.name, ns, request.body, _request_timeout=REQUEST_TIMEOUT
                ),
            )
        previous = _containers(dep)[container]
        return {
            "container": container,
            "image": _containers(patched).get(container),
            "previous_image": previous,
            "changed": previous != image,
            "generation": patched.metadata.generation,
            "previous_generation": dep.metadata.generation,
            "request": request.model_dump(mode="json"),
        }

    async def image_set(self, target: Target, params: ImageParams) -> Outcome | None:
        if params.image is None:
            return None
        async with await self.factory() as api:
            dep = await read_deployment(api, target)
        try:
            container = container_of(target, dep, params)
        except KubernetesRefused:
            return None  # execute refuses it, as the action's failed outcome
        generation = dep.metadata.generation or 0
        observed = (dep.status.observed_generation if dep.status else None) or 0
        if _containers(dep)[container] != params.image or observed < generation:
            return None
        return {
            "container": container,
            "image": params.image,
            "generation": generation,
            "observed_generation": observed,
        }
