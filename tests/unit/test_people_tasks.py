"""``people.credential_rotation``: a task for people recorded as an action (no request, no
effect), its params checked, its outcome the task and its checklist, its check that same
outcome; and what the catalogue and the playbook loader say of it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from actions.catalogue import Catalogue
from actions.people_tasks import CredentialRotation, people_catalogue
from actions.playbooks import Playbooks
from schemas.actions import Target

AT = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
NS = Target(kind="Namespace", namespace="origin-production")
PARAMS = {"credentials": ["db-password", "api-keys"], "reason": "tokens seen in the auth logs"}


def catalogue() -> Catalogue:
    return people_catalogue(clock=lambda: AT)


async def test_registered_as_a_mutating_namespace_task() -> None:
    cat = catalogue()
    spec = cat.get("people.credential_rotation")
    assert (spec.risk, spec.target_kind, spec.params) == (
        "mutating",
        "Namespace",
        CredentialRotation,
    )
    given = Catalogue()
    assert people_catalogue(given) is given  # registers into the catalogue it is given
    assert given.names() == ["people.credential_rotation"]
    with pytest.raises(ValueError, match="registered twice"):
        people_catalogue(given)


async def test_the_task_is_recorded_and_its_check_is_the_same_outcome() -> None:
    spec = catalogue().get("people.credential_rotation")
    params = spec.params.model_validate(PARAMS)
    assert await spec.plan(NS, params) == ()  # acts on nothing
    outcome = await spec.execute(NS, params, 1)
    assert outcome == {
        "task": "Rotate credentials in origin-production: db-password, api-keys",
        "checklist": [
            "db-password: issue a new value",
            "db-password: store it where origin-production's workloads read it, and roll them",
            "db-password: revoke the old value, and check that it is refused",
            "api-keys: issue a new value",
            "api-keys: store it where origin-production's workloads read it, and roll them",
            "api-keys: revoke the old value, and check that it is refused",
            "Search the access and audit logs for uses of the old values since the breach began",
            "Record in the incident who rotated what, and when",
        ],
        "opened_at": "2026-03-01T12:30:00+00:00",
        "namespace": "origin-production",
        "credentials": ["db-password", "api-keys"],
        "reason": "tokens seen in the auth logs",
    }
    # A crash before the ledger recorded it: the check finds the same task, never None (the
    # stage would otherwise open it again as a new one).
    assert await spec.check(NS, params) == outcome


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"credentials": [], "reason": "x"}, "at least 1 item"),
        ({"credentials": ["db-password"], "reason": "  "}, "at least 1 character"),
        ({"credentials": ["db-password", "db-password"], "reason": "x"}, "listed twice"),
        ({"credentials": ["db\npassword"], "reason": "x"}, "should match pattern"),
        ({"credentials": ["x"] * 21, "reason": "x"}, "at most 20 items"),
        ({"credentials": ["db-password"]}, "reason"),
        ({"credentials": ["db-password"], "reason": "x", "rotate": True}, "Extra inputs"),
    ],
)
def test_params_are_checked(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CredentialRotation.model_validate(params)


async def test_a_target_that_is_not_a_namespace_is_refused() -> None:
    spec = catalogue().get("people.credential_rotation")
    params = spec.params.model_validate(PARAMS)
    other = Target(kind="Deployment", namespace="origin-production", name="origin-backend")
    with pytest.raises(ValueError, match="is not a namespace"):
        await spec.plan(other, params)


def test_the_playbook_loader_takes_it_with_its_catalogue() -> None:
    step = {
        "id": "rotate",
        "action": "people.credential_rotation",
        "params": PARAMS,
        "target": {"kind": "Namespace", "namespace": "origin-production"},
        "mode": "auto",
    }
    book = {
        "name": "breach",
        "match": {"min_severity": "SEV-1", "impacts": ["security_breach"]},
        "steps": [step],
    }
    loaded = Playbooks.model_validate({"playbooks": [book]}, context={"catalogue": catalogue()})
    assert loaded.playbooks[0].steps[0].action == "people.credential_rotation"
    wrong = {**step, "target": {"kind": "Deployment", "name": "origin-backend"}}
    with pytest.raises(ValidationError, match="Namespace"):
        Playbooks.model_validate(
            {"playbooks": [{**book, "steps": [wrong]}]}, context={"catalogue": catalogue()}
        )
