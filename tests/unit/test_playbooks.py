"""Playbooks: the defaults load (with and without a catalogue), errors name file:line, matching
by impact/alertname/labels/min severity, targets only from the inventory, `when` conditions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from actions.catalogue import ActionSpec, Catalogue, Outcome
from actions.inventory import Inventory
from actions.playbooks import (
    PlaybookError,
    Playbooks,
    default_playbooks,
    load_playbooks,
    matching,
    unmet,
)
from schemas.actions import ApiRequest, Risk, Target
from schemas.incidents import Incident, IncidentAlert
from schemas.severity import Severity

NS = "origin-production"


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hpa(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_replicas: int
    max_replicas: int


class Patch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str
    value: str


class Image(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str | None = None


async def plan(target: Target, params: Any) -> tuple[ApiRequest, ...]:
    return ()


async def execute(target: Target, params: Any, token: int) -> Outcome:
    return {}


async def check(target: Target, params: Any) -> Outcome | None:
    return None


def spec(name: str, params: type[BaseModel], risk: Risk, kind: str) -> ActionSpec[Any]:
    return ActionSpec(f"kubernetes.{name}", params, risk, kind, plan, execute, check)


def catalogue() -> Catalogue:
    cat = Catalogue()
    for s in (
        spec("get_state", NoParams, "read_only", "Namespace"),
        spec("top", NoParams, "read_only", "Namespace"),
        spec("rollout_history", NoParams, "read_only", "Deployment"),
        spec("rollout_restart", NoParams, "mutating", "Deployment"),
        spec("rollout_status", NoParams, "read_only", "Deployment"),
        spec("scale", NoParams, "mutating", "Deployment"),
        spec("emergency_hpa", Hpa, "mutating", "Deployment"),
        spec("set_image", Image, "destructive", "Deployment"),
        spec("patch_configmap", Patch, "mutating", "ConfigMap"),
        spec("pod_logs", NoParams, "read_only", "Pods"),
    ):
        cat.register(s)
    return cat


INVENTORY = Inventory.model_validate(
    {
        "default_namespace": NS,
        "namespaces": {
            NS: {
                "deployments": {
                    "origin-backend": {"max_replicas": 20},
                    "origin-frontend": {"max_replicas": 10},
                },
                "configmaps": {"origin-backend-config": {"keys": ["DB_POOL_MAX"]}},
                "pods": {"origin-backend": {"app": "origin-backend"}},
            }
        },
    }
)
NOW = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)


def incident(severity: Severity, status: str = "open") -> Incident:
    return Incident.model_validate(
        {
            "id": "inc-1",
            "key": '{}:{service="checkout"}',
            "severity": severity,
            "status": status,
            "title": "checkout down",
            "reasons": ["impact outage"],
            "opened_at": NOW,
            "updated_at": NOW,
        }
    )


def alert(name: str = "CheckoutDown", firing: bool = True, **labels: str) -> IncidentAlert:
    return IncidentAlert(
        fingerprint=f"fp-{name}-{sorted(labels.items())}",
        alertname=name,
        status="firing" if firing else "resolved",
        severity="SEV-0",
        labels=labels,
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "playbooks.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# -- the defaults ------------------------------------------------------------------------------


def test_the_defaults_load() -> None:
    """With every action's catalogue: tests/unit/test_actions_wiring.py."""
    names = [b.name for b in default_playbooks().playbooks]
    assert names[:2] == ["sev0-security-breach", "sev0-outage"]


def test_a_sev0_outage_plans_the_runbook_steps_on_the_alerted_deployment() -> None:
    steps = matching(default_playbooks(), incident("SEV-0"), [alert(impact="outage")], INVENTORY)
    assert {s.playbook for s in steps} == {"sev0-outage"}
    by_id = {s.step: s for s in steps}
    assert list(by_id) == [
        *("state", "top", "history", "health", "targets", "restart", "status", "database"),
        *("database-start", "scale", "failover", "cache", "emergency-image", "evidence"),
    ]
    assert by_id["state"].target == Target(kind="Namespace", namespace=NS)
    # Beyond Kubernetes the runbook's names, refused (and said so) when the inventory lacks
    # them, as this one does.
    assert by_id["database"].refusal == "RdsInstance origin-rds-prod is not in the inventory"
    assert (by_id["database-start"].mode, by_id["failover"].mode) == ("auto", "approve")
    assert by_id["restart"].target == Target(kind="Deployment", namespace=NS, name="origin-backend")
    assert (by_id["restart"].mode, by_id["scale"].mode) == ("auto", "approve")
    assert by_id["emergency-image"].mode == "never"


def test_a_sev1_outage_only_restarts_on_approval() -> None:
    steps = matching(default_playbooks(), incident("SEV-1"), [alert(impact="outage")], INVENTORY)
    restart = next(s for s in steps if s.step == "restart")
    assert (restart.playbook, restart.mode) == ("sev1-degraded", "approve")


def test_a_forged_deployment_label_plans_a_refusal_not_a_target() -> None:
    alerts = [alert(impact="outage", deployment="evil")]
    steps = matching(default_playbooks(), incident("SEV-0"), alerts, INVENTORY)
    restart = next(s for s in steps if s.step == "restart")
    assert restart.target is None
    assert restart.refusal == f"Deployment {NS}/evil is not in the inventory"
    assert all(s.target is None for s in steps if s.action.endswith(("restart", "hpa")))


def test_alerts_choosing_two_inventory_deployments_plan_one_step_each() -> None:
    alerts = [
        alert(impact="outage", deployment="origin-backend"),
        alert("FrontDown", impact="outage", deployment="origin-frontend"),
        alert("Again", impact="outage", deployment="origin-frontend"),
    ]
    steps = matching(default_playbooks(), incident("SEV-0"), alerts, INVENTORY)
    restarts = [s.target.name for s in steps if s.step == "restart" and s.target]
    assert restarts == ["origin-backend", "origin-frontend"]
    assert len([s for s in steps if s.step == "state"]) == 1


# -- matching ---------------------------------------------------------------------------------

BOOKS = """\
playbooks:
  - name: by-impact
    match: {min_severity: SEV-1, impacts: [Data-Loss]}
    steps: [{id: a, action: kubernetes.get_state, target: {kind: Namespace}, mode: auto}]
  - name: by-alertname
    match: {min_severity: SEV-2, alertnames: [DiskFull]}
    steps: [{id: a, action: kubernetes.get_state, target: {kind: Namespace}, mode: auto}]
  - name: by-labels
    match: {min_severity: SEV-2, labels: {team: payments, env: prod}}
    steps: [{id: a, action: kubernetes.get_state, target: {kind: Namespace}, mode: auto}]
  - name: any-sev0
    match: {min_severity: SEV-0}
    steps: [{id: a, action: kubernetes.get_state, target: {kind: Namespace}, mode: auto}]
"""


@pytest.mark.parametrize(
    ("severity", "alerts", "expected"),
    [
        ("SEV-1", [alert(impact="data_loss")], "by-impact"),  # impacts compare normalised
        ("SEV-2", [alert(impact="data_loss")], None),  # below min_severity
        ("SEV-2", [alert("DiskFull")], "by-alertname"),
        ("SEV-3", [alert("DiskFull")], None),
        ("SEV-2", [alert(team="payments", env="prod", other="x")], "by-labels"),
        ("SEV-2", [alert(team="payments")], None),  # every label must hold
        ("SEV-0", [alert(impact="data_loss")], "by-impact"),  # first match wins
        ("SEV-0", [alert("Other")], "any-sev0"),  # no criteria: severity alone
        ("SEV-1", [alert("DiskFull", firing=False)], None),  # resolved alerts do not match
    ],
)
def test_matching(
    tmp_path: Path, severity: Severity, alerts: list[IncidentAlert], expected: str | None
) -> None:
    books = load_playbooks(write(tmp_path, BOOKS), catalogue())
    steps = matching(books, incident(severity), alerts, INVENTORY)
    assert (steps[0].playbook if steps else None) == expected


def test_a_resolved_incident_plans_nothing() -> None:
    alerts = [alert(impact="outage")]
    assert matching(default_playbooks(), incident("SEV-0", "resolved"), alerts, INVENTORY) == []
    assert matching(Playbooks(), incident("SEV-0"), alerts, INVENTORY) == []


# -- when -------------------------------------------------------------------------------------


def test_when_runs_a_step_only_on_an_earlier_result() -> None:
    book = next(b for b in default_playbooks().playbooks if b.name == "sev0-outage")
    steps = {s.id: s for s in book.steps}
    restart, status = steps["restart"].when, steps["status"].when
    assert unmet(None, {}) is None
    assert unmet(restart, {"state": {"ready": False}}) is None
    assert unmet(restart, {"state": {"ready": True}}) == "step state's ready is True, not False"
    assert unmet(restart, {"state": {}}) == "step state's result has no ready"
    assert unmet(restart, {}) == "step state did not succeed"
    assert unmet(status, {"restart": {}}) is None  # a bare step: it succeeded
    assert unmet(status, {"state": {"ready": False}}) == "step restart did not succeed"


def test_when_follows_dotted_paths(tmp_path: Path) -> None:
    text = BOOKS.replace(
        "steps: [{id: a, action: kubernetes.get_state, target: {kind: Namespace}, mode: auto}]\n"
        "  - name: any-sev0",
        "steps:\n"
        "      - {id: a, action: kubernetes.get_state, target: {kind: Namespace}, mode: auto}\n"
        "      - id: b\n"
        "        action: kubernetes.rollout_restart\n"
        "        target: {kind: Deployment, name: origin-backend}\n"
        "        mode: approve\n"
        "        when: {step: a, deployments.origin-backend.ready: false}\n"
        "  - name: any-sev0",
    )
    [when] = [
        s.when for b in load_playbooks(write(tmp_path, text)).playbooks for s in b.steps if s.when
    ]
    assert unmet(when, {"a": {"deployments": {"origin-backend": {"ready": False}}}}) is None
    assert unmet(when, {"a": {"deployments": {}}}) is not None


# -- errors name file:line ---------------------------------------------------------------------

STEP = "        action: kubernetes.get_state\n        target: {kind: Namespace}\n"


def book(steps: str, match: str = "{min_severity: SEV-1}") -> str:
    return f"playbooks:\n  - name: p\n    match: {match}\n    steps:\n{steps}"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (book(f"      - id: a\n{STEP}        mode: sometimes\n"), 8, "mode: Input should be"),
        (book(f"      - id: a\n{STEP}        mode: auto\n        colour: red\n"), 9, "unknown key"),
        (
            book(f"      - id: a\n{STEP}        mode: auto\n", "{min_severity: SEV-9}"),
            3,
            "min_severity",
        ),
        (
            book(
                f"      - id: a\n{STEP}        mode: auto\n        when: {{step: b}}\n"
                f"      - id: b\n{STEP}        mode: auto\n"
            ),
            9,
            "when names a later step 'b'",
        ),
        (
            book(f"      - id: a\n{STEP}        mode: auto\n        when: {{step: zz}}\n"),
            9,
            "when names an unknown step 'zz'",
        ),
        (
            book(2 * f"      - id: a\n{STEP}        mode: auto\n"),
            9,
            "step id 'a' is used twice",
        ),
        ("playbooks:\n  - name: p\n    match: {min_severity: SEV-1}\n    steps: []\n", 4, "steps"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PlaybookError) as info:
        load_playbooks(path)
    assert f"{path}:{line}:" in str(info.value)
    assert message in str(info.value)


def deploy_step(action: str, mode: str = "approve", params: str = "{}") -> str:
    return (
        f"      - id: a\n        action: {action}\n        params: {params}\n"
        "        target: {kind: Deployment, name: origin-backend}\n"
        f"        mode: {mode}\n"
    )


@pytest.mark.parametrize(
    ("steps", "line", "message"),
    [
        (deploy_step("kubernetes.rollout_restrat"), 6, "did you mean kubernetes.rollout_restart"),
        (deploy_step("kubernetes.emergency_hpa", params="{min_replicas: 3}"), 7, "max_replicas"),
        (
            deploy_step("kubernetes.emergency_hpa", params="{min_replicas: x, max_replicas: 4}"),
            7,
            "params.min_replicas",
        ),
        (deploy_step("kubernetes.set_image", mode="auto"), 9, "destructive: approve or never"),
        (deploy_step("kubernetes.get_state", mode="auto"), 8, "acts on a Namespace"),
    ],
)
def test_the_catalogue_checks_actions_and_params(
    tmp_path: Path, steps: str, line: int, message: str
) -> None:
    path = write(tmp_path, book(steps))
    load_playbooks(path)  # without a catalogue names and params are not checked
    with pytest.raises(PlaybookError) as info:
        load_playbooks(path, catalogue())
    assert f"{path}:{line}:" in str(info.value)
    assert message in str(info.value)


class Cidr(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cidr: str
    key: str = "block-cidrs"


BLOCK = """\
playbooks:
  - name: breach
    match: {min_severity: SEV-0}
    steps:
      - id: block
        action: kubernetes.block_ip
        params_from_labels: {cidr: client_ip}
        target: {kind: ConfigMap, name: origin-backend-config}
        mode: approve
"""


def test_params_from_labels_plan_one_action_per_value(tmp_path: Path) -> None:
    cat = catalogue()
    cat.register(spec("block_ip", Cidr, "mutating", "ConfigMap"))
    books = load_playbooks(write(tmp_path, BLOCK), cat)
    alerts = [
        alert("A", client_ip="203.0.113.7"),
        alert("B", client_ip="198.51.100.9"),
        alert("C", client_ip="203.0.113.7"),  # the same value: one action
        alert("D"),
        alert("E", firing=False, client_ip="192.0.2.1"),  # resolved: not chosen
    ]
    planned = matching(books, incident("SEV-0"), alerts, INVENTORY)
    assert [(p.variant, dict(p.params)) for p in planned] == [
        ("cidr=203.0.113.7", {"cidr": "203.0.113.7"}),
        ("cidr=198.51.100.9", {"cidr": "198.51.100.9"}),
    ]
    assert all(p.refusal is None for p in planned)
    [none] = matching(books, incident("SEV-0"), [alert("D")], INVENTORY)
    assert none.refusal == "no firing alert has the label(s) client_ip"


def test_params_from_labels_must_name_params_of_the_action(tmp_path: Path) -> None:
    cat = catalogue()
    cat.register(spec("block_ip", Cidr, "mutating", "ConfigMap"))
    text = BLOCK.replace("{cidr: client_ip}", "{ip: client_ip}")
    with pytest.raises(PlaybookError, match=r"playbooks\.yaml:7: .*has no param 'ip'"):
        load_playbooks(write(tmp_path, text), cat)
