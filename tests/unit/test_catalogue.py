"""The action catalogue: explicit registration, one action per name, nothing unregistered."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from actions.catalogue import ActionSpec, Catalogue, Outcome, UnknownAction
from schemas.actions import ApiRequest, Target


class Replicas(BaseModel):
    replicas: int


async def plan(target: Target, params: Replicas) -> tuple[ApiRequest, ...]:
    path = f"/apis/apps/v1/namespaces/{target.namespace}/deployments/{target.name}/scale"
    return (ApiRequest(method="PATCH", path=path, body={"spec": params.model_dump()}),)


async def execute(target: Target, params: Replicas, token: int) -> Outcome:
    return {"replicas": params.replicas, "token": token}


async def check(target: Target, params: Replicas) -> Outcome | None:
    return None


SCALE = ActionSpec("kubernetes.scale", Replicas, "mutating", "Deployment", plan, execute, check)


async def test_a_registered_action_plans_and_an_unknown_one_is_refused() -> None:
    catalogue = Catalogue()
    catalogue.register(SCALE)
    spec = catalogue.get("kubernetes.scale")
    target = Target(kind="Deployment", namespace="origin", name="origin-backend")
    [request] = await spec.plan(target, spec.params.model_validate({"replicas": 6}))
    assert (request.method, request.body) == ("PATCH", {"spec": {"replicas": 6}})
    assert catalogue.names() == ["kubernetes.scale"]
    with pytest.raises(UnknownAction):
        catalogue.get("kubernetes.delete_everything")
    with pytest.raises(ValueError, match="twice"):
        catalogue.register(SCALE)
