"""The ``action.*`` event contract the actions stage will write (issue 9)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from schemas import EVENT_MODELS
from schemas.actions import ACTION_EVENT_TYPES, ActionEventData, ApiRequest, Target


def test_every_action_event_type_has_the_action_payload() -> None:
    assert set(ACTION_EVENT_TYPES) <= set(EVENT_MODELS)
    assert {EVENT_MODELS[t] for t in ACTION_EVENT_TYPES} == {ActionEventData}


def test_a_target_key_names_kind_namespace_name_and_sorted_selector() -> None:
    deploy = Target(kind="Deployment", namespace="origin", name="origin-backend")
    pods = Target(kind="Pods", namespace="origin", selector={"tier": "api", "app": "origin"})
    assert deploy.key() == "Deployment/origin/origin-backend"
    assert pods.key() == "Pods/origin/?app=origin,tier=api"
    with pytest.raises(ValidationError, match="extra"):
        Target.model_validate({"kind": "Deployment", "cluster": "prod"})


def test_an_action_event_round_trips_with_its_dry_run_request() -> None:
    at = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    data = ActionEventData(
        action_id="act-1",
        incident_id="inc-1",
        incident_version=3,
        playbook="sev0-kubernetes",
        step="restart",
        action="kubernetes.rollout_restart",
        target=Target(kind="Deployment", namespace="origin", name="origin-backend"),
        risk="mutating",
        mode="approve",
        state="awaiting_approval",
        dry_run=True,
        requests=(
            ApiRequest(
                method="PATCH",
                path="/apis/apps/v1/namespaces/origin/deployments/origin-backend",
                body={"spec": {"template": {"metadata": {"annotations": {}}}}},
                content_type="application/strategic-merge-patch+json",
            ),
        ),
        expires_at=at + timedelta(minutes=30),
    )
    again = ActionEventData.model_validate_json(data.model_dump_json())
    assert again == data
    with pytest.raises(ValidationError, match="state"):
        ActionEventData.model_validate({**data.model_dump(), "state": "done"})
