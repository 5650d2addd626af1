"""The pure parts of kubernetes.top, rollout_history, pod_logs and set_image, with no services:
quantities and metrics lists (metrics.k8s.io is not served by the test apiserver, so the
available path's parsing is tested here), label selectors, the log filter, the params models,
and how set_image's image comes from the inventory through the guard as the stage calls it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from kubernetes_asyncio import client
from pydantic import ValidationError
from test_actions_wiring import full_catalogue

from actions.guard import Admitted, Guard, Limits
from actions.inventory import Inventory
from actions.kubernetes_image import ImageParams
from actions.kubernetes_logs import (
    DEFAULT_PATTERN,
    MAX_LINE_CHARS,
    Filtered,
    LogParams,
    filter_lines,
    redact,
    within,
)
from actions.kubernetes_observe import (
    TopParams,
    parse_quantity,
    selector_string,
    top_outcome,
)
from actions.playbooks import PlannedStep, default_playbooks
from schemas.actions import Target
from store import LocalCoordinator

NS = "origin-production"
EMERGENCY = "registry.example/origin-backend:stable"


async def _no_client() -> client.ApiClient:
    raise AssertionError("no API call in a unit test")


# -- kubernetes.top ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("250m", Decimal("0.25")),
        ("12345678n", Decimal("0.012345678")),
        ("1500u", Decimal("0.0015")),
        ("2", Decimal(2)),
        ("0.5", Decimal("0.5")),
        ("64Mi", Decimal(64 * 2**20)),
        ("1Gi", Decimal(2**30)),
        ("131072Ki", Decimal(128 * 2**20)),
        ("1.5G", Decimal(1_500_000_000)),
        ("2k", Decimal(2000)),
        ("1e3", Decimal(1000)),
        ("1E", Decimal(10) ** 18),  # exa, not an exponent
    ],
)
def test_quantities(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Mi", "12 cores", "1.2.3", "5mi", "1Ki2"])
def test_not_quantities(text: str) -> None:
    assert parse_quantity(text) is None


# What metrics-server answers for GET /apis/metrics.k8s.io/v1beta1/namespaces/NS/pods and
# /nodes (the fields kubectl top reads).
POD_METRICS: dict[str, Any] = {
    "kind": "PodMetricsList",
    "apiVersion": "metrics.k8s.io/v1beta1",
    "metadata": {},
    "items": [
        {
            "metadata": {"name": "origin-backend-a", "namespace": NS},
            "timestamp": "2026-11-29T03:00:00Z",
            "window": "15.018s",
            "containers": [
                {"name": "app", "usage": {"cpu": "250000000n", "memory": "200Mi"}},
                {"name": "proxy", "usage": {"cpu": "5m", "memory": "16384Ki"}},
            ],
        },
        {
            "metadata": {"name": "origin-backend-b", "namespace": NS},
            "timestamp": "2026-11-29T03:00:00Z",
            "window": "15.018s",
            "containers": [{"name": "app", "usage": {"cpu": "1", "memory": "1Gi"}}],
        },
        {
            "metadata": {"name": "origin-frontend-c", "namespace": NS},
            "window": "15s",
            "containers": [{"name": "web", "usage": {"cpu": "1m", "memory": "bogus"}}],
        },
    ],
}
NODE_METRICS: dict[str, Any] = {
    "kind": "NodeMetricsList",
    "items": [
        {"metadata": {"name": "node-1"}, "usage": {"cpu": "350m", "memory": "2Gi"}},
        {"metadata": {"name": "node-2"}, "usage": {"cpu": "1200m", "memory": "3Gi"}},
    ],
}


def test_top_outcome_from_metrics_lists() -> None:
    top = top_outcome(NS, POD_METRICS, NODE_METRICS, TopParams())
    assert top["available"] is True
    assert top["namespace"] == NS
    pods = top["pods"]
    assert [p["name"] for p in pods["items"]] == [
        "origin-backend-b",  # busiest first
        "origin-backend-a",
        "origin-frontend-c",
    ]
    b, a, c = pods["items"]
    assert (b["cpu_millicores"], b["memory_mib"]) == (1000, 1024.0)
    assert (a["cpu_millicores"], a["memory_mib"]) == (255, 216.0)  # both containers
    assert a["containers"] == [
        {"name": "app", "cpu_millicores": 250, "memory_mib": 200.0},
        {"name": "proxy", "cpu_millicores": 5, "memory_mib": 16.0},
    ]
    assert a["window"] == "15.018s"
    assert (c["cpu_millicores"], c["memory_mib"]) == (1, None)  # unparseable: unknown, not 0
    assert (pods["total"], pods["truncated"]) == (3, False)
    assert (pods["cpu_millicores"], pods["memory_mib"]) == (1256, 1240.0)
    nodes = top["nodes"]
    assert nodes["available"] is True
    assert nodes["items"] == [
        {"name": "node-2", "cpu_millicores": 1200, "memory_mib": 3072.0},
        {"name": "node-1", "cpu_millicores": 350, "memory_mib": 2048.0},
    ]


def test_top_outcome_caps_and_reports_nodes_it_could_not_read() -> None:
    top = top_outcome(NS, POD_METRICS, "forbidden: list nodes", TopParams(max_pods=1))
    assert [p["name"] for p in top["pods"]["items"]] == ["origin-backend-b"]
    assert (top["pods"]["total"], top["pods"]["truncated"]) == (3, True)
    assert top["pods"]["cpu_millicores"] == 1256  # the total is over every pod
    assert top["nodes"] == {"available": False, "reason": "forbidden: list nodes"}
    capped = top_outcome(NS, {"items": []}, NODE_METRICS, TopParams(max_nodes=1))
    assert capped["pods"] == {
        "total": 0,
        "truncated": False,
        "cpu_millicores": None,
        "memory_mib": None,
        "items": [],
    }
    assert [n["name"] for n in capped["nodes"]["items"]] == ["node-2"]
    assert capped["nodes"]["truncated"] is True


# -- kubernetes.rollout_history ----------------------------------------------------------------


def test_selector_string() -> None:
    assert selector_string(None) == ""
    assert selector_string(client.V1LabelSelector(match_labels={"tier": "b", "app": "a"})) == (
        "app=a,tier=b"
    )
    expressions = client.V1LabelSelector(
        match_labels={"app": "web"},
        match_expressions=[
            client.V1LabelSelectorRequirement(key="env", operator="In", values=["prod", "ca"]),
            client.V1LabelSelectorRequirement(key="track", operator="NotIn", values=["canary"]),
            client.V1LabelSelectorRequirement(key="owner", operator="Exists"),
            client.V1LabelSelectorRequirement(key="legacy", operator="DoesNotExist"),
        ],
    )
    assert selector_string(expressions) == (
        "app=web,env in (ca,prod),track notin (canary),owner,!legacy"
    )


# -- kubernetes.pod_logs -----------------------------------------------------------------------

LOG = (
    "2026-11-29T03:00:00Z GET /health 200\n"
    "2026-11-29T03:00:01Z LOGIN failed for user=admin from 203.0.113.9\n"
    "2026-11-29T03:00:02Z cache miss key=products\n"
    "2026-11-29T03:00:03Z Authorization header missing\r\n"
    "2026-11-29T03:00:04Z refreshed Token for session 42\n"
    "2026-11-29T03:00:05Z OAuth callback ok\n"
)


def test_filter_keeps_auth_login_token_lines_case_insensitively() -> None:
    found = filter_lines(LOG, DEFAULT_PATTERN, 100)
    assert found.lines == [
        "2026-11-29T03:00:01Z LOGIN failed for user=admin from 203.0.113.9",
        "2026-11-29T03:00:03Z Authorization header missing",  # CR dropped
        "2026-11-29T03:00:04Z refreshed Token for session 42",
        "2026-11-29T03:00:05Z OAuth callback ok",  # anywhere in the line
    ]
    assert (found.matched, found.read) == (4, 6)  # the final newline is not a 7th line


def test_filter_keeps_the_newest_matches_and_clips_long_lines() -> None:
    found = filter_lines(LOG, DEFAULT_PATTERN, 2)
    assert found.lines == [
        "2026-11-29T03:00:04Z refreshed Token for session 42",
        "2026-11-29T03:00:05Z OAuth callback ok",
    ]
    assert found.matched == 4
    long = "token " + "x" * (2 * MAX_LINE_CHARS)
    (clipped,) = filter_lines(long, DEFAULT_PATTERN, 10).lines
    assert clipped == long[:MAX_LINE_CHARS] + "…"


def test_filter_with_another_pattern_and_on_nothing() -> None:
    found = filter_lines(LOG, r"cache|GET /", 10)
    assert [line[21:] for line in found.lines] == ["GET /health 200", "cache miss key=products"]
    assert filter_lines("", DEFAULT_PATTERN, 10) == Filtered([], 0, 0)
    assert filter_lines("no match here\n", DEFAULT_PATTERN, 10) == Filtered([], 0, 1)


def test_lines_within_a_budget_keep_the_newest() -> None:
    lines = ["aaaa", "bb", "cccccc", "d"]
    assert within(lines, 100) == lines
    assert within(lines, 7) == ["cccccc", "d"]
    assert within(lines, 6) == ["d"]  # not a gap: older lines stop at the first too long
    assert within(lines, 0) == []


def test_log_params() -> None:
    defaults = LogParams()
    assert defaults.pattern == DEFAULT_PATTERN == "auth|login|token"
    with pytest.raises(ValidationError, match="not a regular expression"):
        LogParams(pattern="auth|(login")
    with pytest.raises(ValidationError):
        LogParams(max_pods=0)
    with pytest.raises(ValidationError):
        LogParams.model_validate({"grep": "auth"})


# -- the catalogue and playbooks -----------------------------------------------------------------


def test_the_default_playbooks_load_with_the_real_catalogue() -> None:
    """Every action the runbook's playbooks name is registered, takes their params (none: the
    defaults) and their target kind, and no destructive one runs automatically."""
    cat = full_catalogue()
    books = default_playbooks(cat)
    used = {step.action for book in books.playbooks for step in book.steps}
    assert used <= set(cat.names())
    assert {
        "kubernetes.top",
        "kubernetes.rollout_history",
        "kubernetes.set_image",
        "kubernetes.pod_logs",
    } <= used
    kinds = {name: (cat.get(name).risk, cat.get(name).target_kind) for name in used}
    assert kinds["kubernetes.top"] == ("read_only", "Namespace")
    assert kinds["kubernetes.rollout_history"] == ("read_only", "Deployment")
    assert kinds["kubernetes.set_image"] == ("destructive", "Deployment")
    assert kinds["kubernetes.pod_logs"] == ("read_only", "Pods")


INVENTORY = Inventory.model_validate(
    {
        "default_namespace": NS,
        "namespaces": {
            NS: {
                "deployments": {
                    "origin-backend": {"max_replicas": 20, "emergency_image": EMERGENCY},
                    "origin-frontend": {"max_replicas": 10},
                },
                "pods": {"origin-backend": {"app": "origin-backend"}},
            }
        },
    }
)


def test_the_security_breach_logs_step_resolves_to_a_pod_selector() -> None:
    (book,) = [b for b in default_playbooks().playbooks if b.name == "sev0-security-breach"]
    (logs,) = [s for s in book.steps if s.action == "kubernetes.pod_logs"]
    pods = Target(kind="Pods", namespace=NS, selector={"app": "origin-backend"})
    assert INVENTORY.resolve(logs.target, {"namespace": NS, "app": "origin-backend"}) == pods
    assert INVENTORY.resolve(logs.target, {}) == pods  # the step's default group
    refused = INVENTORY.resolve(logs.target, {"app": "payments"})
    assert not isinstance(refused, Target)
    assert "pod group origin-production/payments is not in the inventory" in refused.reason


async def test_set_image_gets_the_emergency_image_through_the_guard_as_the_stage_asks() -> None:
    """The stage validates the step's params ({} in the default playbook), dumps them for the
    guard (image None), and validates what the guard admits: the inventory's image."""
    guard = Guard(LocalCoordinator(), Limits(), INVENTORY)
    backend = Target(kind="Deployment", namespace=NS, name="origin-backend")
    step = PlannedStep(
        "sev0-outage", "emergency-image", "kubernetes.set_image", {}, "approve", backend
    )
    dumped = ImageParams.model_validate({}).model_dump()
    assert dumped == {"image": None, "container": None}
    got = await guard.admit(step, backend, dumped, "destructive", dry_run=True)
    assert isinstance(got, Admitted), got
    params = ImageParams.model_validate(got.params)
    assert params.image == EMERGENCY
    assert got.notes == (f"image is the inventory's emergency image {EMERGENCY}",)

    other = ImageParams(image="evil:1").model_dump()
    refused = await guard.admit(step, backend, other, "destructive", dry_run=True)
    assert not isinstance(refused, Admitted)
    assert refused.reason.endswith("image evil:1 is not its emergency image")
    frontend = Target(kind="Deployment", namespace=NS, name="origin-frontend")
    none = await guard.admit(step, frontend, dumped, "destructive", dry_run=True)
    assert not isinstance(none, Admitted)
    assert none.reason.endswith("the inventory allows it no emergency image")


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (
            "GET /login Authorization: Bearer abc.DEF-123 ok",
            "GET /login Authorization: Bearer [redacted] ok",
        ),
        (
            "auth failed for user=bob password=hunter2 from 10.0.0.1",
            "auth failed for user=bob password=[redacted] from 10.0.0.1",
        ),
        (
            '{"msg": "token refreshed", "access_token": "s3cr3t", "user": "bob"}',
            '{"msg": "token refreshed", "access_token": "[redacted]", "user": "bob"}',
        ),
        ("session_id=abcdef; login ok", "session_id=[redacted]; login ok"),
        (
            "login with eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl accepted",
            "login with [redacted] accepted",
        ),
        ("login failed: bad credentials", "login failed: bad credentials"),
        ("X-Api-Key: k-123 auth", "X-Api-Key: [redacted] auth"),
    ],
)
def test_kept_lines_are_redacted(line: str, shown: str) -> None:
    assert redact(line) == shown
    assert filter_lines(line + "\n", DEFAULT_PATTERN, 10).lines == [shown]
