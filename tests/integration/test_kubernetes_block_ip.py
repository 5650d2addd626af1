"""``kubernetes.block_ip`` against the real kube-apiserver of ``scripts/test-services``: the
ingress controller's ConfigMap (created by each test) gains the CIDR once, with the others
kept, the planned request is the one sent, check finds it; bad CIDRs are refused before any
request; the guard refuses a key the inventory does not allow; a ConfigMap changed between
the read and the write (a 409, provoked at the HTTP client) is read again; and through the
real actions stage, an alert's client_ip is blocked once approved, a bad one never."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import test_kubernetes_actions as actions_tests
from incident_support import alert_json, append_webhook, drain, new_stage, records, webhook
from kubernetes_asyncio import client, config
from pydantic import ValidationError
from services import Services
from test_actions_stage import Actions, Clock, open_actions
from test_kubernetes_api import meta

from actions.catalogue import ActionSpec
from actions.guard import Admitted, Guard, Limits, Refused
from actions.inventory import Inventory
from actions.kubernetes import kubernetes_catalogue
from actions.kubernetes_reads import KubernetesRefused, KubernetesUnavailable
from actions.kubernetes_security import CONFLICT_ATTEMPTS, BlockIpParams
from actions.playbooks import PlannedStep, Playbooks
from actions.stage import CONSUMER_GROUP, ActionsStage
from runtime.relay import relay_outbox
from schemas import TOPIC_ACTIONS, TOPIC_ALERTS, TOPIC_INCIDENTS
from schemas.actions import ActionEventData, ApiRequest, Target
from store import LocalCoordinator
from store.actions import ActionQuery, DecisionRequest

CM = "ingress-nginx-controller"
KEY = "block-cidrs"
STRATEGIC = "application/strategic-merge-patch+json"
Meddle = Callable[[], Awaitable[None]]


@dataclass
class Intercepted:
    """Every request the action's clients sent, as (method, path, body); ``before_patch``
    runs before each PATCH leaves (another writer changing the ConfigMap meanwhile)."""

    kubeconfig: str
    sent: list[ApiRequest] = field(default_factory=list)
    before_patch: list[Meddle] = field(default_factory=list)
    clients: int = 0

    async def factory(self) -> client.ApiClient:
        self.clients += 1
        api = await config.new_client_from_config(config_file=self.kubeconfig)
        rest = api.rest_client
        original = rest.request

        async def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            if method == "PATCH" and self.before_patch:
                await self.before_patch.pop(0)()
            headers = kwargs.get("headers") or {}
            self.sent.append(
                ApiRequest(
                    method=method,
                    path=urlsplit(url).path,
                    body=kwargs.get("body"),
                    content_type=headers.get("Content-Type") if method == "PATCH" else None,
                )
            )
            return await original(method, url, *args, **kwargs)

        rest.request = request  # type: ignore[method-assign]
        return api

    def patches(self) -> list[ApiRequest]:
        return [r for r in self.sent if r.method == "PATCH"]


admin = actions_tests.admin
ns = actions_tests.ns


@pytest.fixture
def wire(services: Services) -> Intercepted:
    return Intercepted(services.kubeconfig)


@pytest.fixture
def spec(wire: Intercepted) -> ActionSpec[Any]:
    return kubernetes_catalogue(wire.factory).get("kubernetes.block_ip")


async def make_cm(admin: client.ApiClient, ns: str, data: dict[str, str]) -> None:
    await client.CoreV1Api(admin).create_namespaced_config_map(
        ns, client.V1ConfigMap(metadata=meta(CM), data=data)
    )


async def cm_data(admin: client.ApiClient, ns: str) -> dict[str, str]:
    cm = await client.CoreV1Api(admin).read_namespaced_config_map(CM, ns)
    return dict(cm.data or {})


def target(ns: str) -> Target:
    return Target(kind="ConfigMap", namespace=ns, name=CM)


def params(cidr: str, **more: str) -> BlockIpParams:
    return BlockIpParams.model_validate({"cidr": cidr, **more})


async def test_registered_as_a_mutating_configmap_action(spec: ActionSpec[Any]) -> None:
    assert (spec.risk, spec.target_kind, spec.params) == ("mutating", "ConfigMap", BlockIpParams)


async def test_a_cidr_is_added_once_the_others_kept_and_check_finds_it(
    admin: client.ApiClient, ns: str, spec: ActionSpec[Any], wire: Intercepted
) -> None:
    before = "198.51.100.0/24, 192.0.2.9"
    await make_cm(admin, ns, {KEY: before, "use-forwarded-headers": "true"})
    cm = await client.CoreV1Api(admin).read_namespaced_config_map(CM, ns)
    rv = cm.metadata.resource_version
    ip = params("203.0.113.7")
    assert ip.cidr == "203.0.113.7/32"  # normalised
    assert ip.key == KEY
    t = target(ns)

    assert await spec.check(t, ip) is None
    planned = await spec.plan(t, ip)
    expected_value = f"{before},203.0.113.7/32"
    assert planned == (
        ApiRequest(
            method="PATCH",
            path=f"/api/v1/namespaces/{ns}/configmaps/{CM}",
            body={"metadata": {"resourceVersion": rv}, "data": {KEY: expected_value}},
            content_type=STRATEGIC,
        ),
    )
    wire.sent.clear()
    outcome = await spec.execute(t, ip, 1)
    assert wire.patches() == list(planned)  # the planned request is the one sent
    assert outcome["added"] is True
    assert outcome["previous_value"] == before
    assert outcome["value"] == expected_value
    assert outcome["conflicts"] == 0
    assert await cm_data(admin, ns) == {KEY: expected_value, "use-forwarded-headers": "true"}
    assert await spec.check(t, ip) == {
        "cidr": "203.0.113.7/32",
        "key": KEY,
        "covered_by": "203.0.113.7/32",
    }

    # Idempotent: run again (a redelivery, a second playbook), nothing is written.
    wire.sent.clear()
    again = await spec.execute(t, ip, 2)
    assert wire.patches() == []
    assert (again["added"], again["covered_by"], again["value"]) == (
        False,
        "203.0.113.7/32",
        expected_value,
    )
    assert await spec.plan(t, ip) == ()
    # An address a listed network covers is blocked already: nothing written either.
    inside = params("198.51.100.77")
    assert (await spec.check(t, inside) or {})["covered_by"] == "198.51.100.0/24"
    assert (await spec.execute(t, inside, 3))["added"] is False
    assert wire.patches() == []
    # An IPv6 network, normalised.
    v6 = params("2001:DB8:0:1::/64")
    assert (await spec.execute(t, v6, 4))["added"] is True
    assert (await cm_data(admin, ns))[KEY] == f"{expected_value},2001:db8:0:1::/64"


async def test_a_missing_key_is_created_and_a_missing_configmap_is_not(
    admin: client.ApiClient, ns: str, spec: ActionSpec[Any]
) -> None:
    await make_cm(admin, ns, {"other": "x"})
    outcome = await spec.execute(target(ns), params("203.0.113.0/24"), 1)
    assert (outcome["previous_value"], outcome["value"]) == (None, "203.0.113.0/24")
    assert await cm_data(admin, ns) == {"other": "x", KEY: "203.0.113.0/24"}
    absent = Target(kind="ConfigMap", namespace=ns, name="absent")
    with pytest.raises(Exception, match="not found") as caught:
        await spec.execute(absent, params("203.0.113.7"), 2)
    assert getattr(caught.value, "retriable", None) is False


BAD = [
    ("0.0.0.0/0", "would block every IPv4 client"),
    ("::/0", "would block every IPv6 client"),
    ("10.0.0.0/8", "broader than /16"),
    ("2001:db8::/32", "broader than /48"),
    ("127.0.0.1", "loopback"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"),
    ("203.0.113.7/24", "has host bits set: write 203.0.113.0/24"),
    ("not-an-ip", "is not an IP address or CIDR"),
    ("203.0.113.7/33", "is not an IP address or CIDR"),
    ("::ffff:203.0.113.7", "write it as 203.0.113.7/32"),
    ("0.0.0.0", "unspecified"),
]


@pytest.mark.parametrize(("cidr", "why"), BAD)
async def test_a_cidr_it_must_not_block_is_refused_before_any_request(
    ns: str, spec: ActionSpec[Any], wire: Intercepted, cidr: str, why: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(why)):
        BlockIpParams.model_validate({"cidr": cidr})
    # However the params were built, the action checks before it reads or writes anything.
    forged = BlockIpParams.model_construct(cidr=cidr, key=KEY)
    for call in (
        spec.plan(target(ns), forged),
        spec.execute(target(ns), forged, 1),
        spec.check(target(ns), forged),
    ):
        with pytest.raises(KubernetesRefused, match=re.escape(why)):
            await call
    assert wire.sent == []
    assert wire.clients == 0


def block_step(ns: str, mode: str = "approve") -> PlannedStep:
    return PlannedStep("breach", "block", "kubernetes.block_ip", {}, mode, target(ns))  # type: ignore[arg-type]


async def test_the_guard_refuses_a_key_the_inventory_does_not_allow(ns: str) -> None:
    inventory = Inventory.model_validate(
        {"namespaces": {ns: {"configmaps": {CM: {"keys": [KEY]}}}}}
    )
    coord = LocalCoordinator()
    await coord.start()
    try:
        guard = Guard(coord, Limits(), inventory)
        step, t = block_step(ns), target(ns)
        # As the stage asks: the params as their model dumps them (the default key included).
        ok = params("203.0.113.7").model_dump()
        got = await guard.admit(step, t, ok, "mutating", dry_run=True)
        assert isinstance(got, Admitted), got
        assert got.params == {"cidr": "203.0.113.7/32", "key": KEY}
        other = params("203.0.113.7", key="allow-snippet-annotations").model_dump()
        refused = await guard.admit(step, t, other, "mutating", dry_run=True)
        assert isinstance(refused, Refused)
        assert refused.reason.endswith(
            f"key allow-snippet-annotations may not be patched (allowed: {KEY})"
        )
    finally:
        await coord.close()


async def test_a_configmap_changed_between_read_and_write_is_read_again(
    admin: client.ApiClient, ns: str, spec: ActionSpec[Any], wire: Intercepted
) -> None:
    await make_cm(admin, ns, {KEY: "198.51.100.0/24"})
    core = client.CoreV1Api(admin)

    async def another_writer() -> None:
        # An operator blocks a network of their own while the action is between its read
        # and its write.
        data = await cm_data(admin, ns)
        await core.patch_namespaced_config_map(CM, ns, {"data": {KEY: data[KEY] + ",192.0.2.0/24"}})

    wire.before_patch = [another_writer]
    outcome = await spec.execute(target(ns), params("203.0.113.7"), 1)
    first, second = wire.patches()  # the first was refused with 409, the second went through
    assert first.body["data"][KEY] == "198.51.100.0/24,203.0.113.7/32"
    assert second.body["data"][KEY] == "198.51.100.0/24,192.0.2.0/24,203.0.113.7/32"
    assert first.body["metadata"]["resourceVersion"] != second.body["metadata"]["resourceVersion"]
    assert outcome["conflicts"] == 1
    assert outcome["previous_value"] == "198.51.100.0/24,192.0.2.0/24"
    # The other writer's entry is kept: no lost update.
    assert (await cm_data(admin, ns))[KEY] == "198.51.100.0/24,192.0.2.0/24,203.0.113.7/32"


async def test_a_configmap_that_keeps_changing_is_retried_later(
    admin: client.ApiClient, ns: str, spec: ActionSpec[Any], wire: Intercepted
) -> None:
    await make_cm(admin, ns, {KEY: "198.51.100.0/24"})
    core = client.CoreV1Api(admin)
    bumps = 0

    async def busy_writer() -> None:
        nonlocal bumps
        bumps += 1
        await core.patch_namespaced_config_map(CM, ns, {"data": {"bumped": str(bumps)}})

    wire.before_patch = [busy_writer] * CONFLICT_ATTEMPTS
    with pytest.raises(KubernetesUnavailable, match="409 Conflict") as caught:
        await spec.execute(target(ns), params("203.0.113.7"), 1)
    assert caught.value.retriable is True  # the stage tries again later, checking first
    assert len(wire.patches()) == CONFLICT_ATTEMPTS
    assert (await cm_data(admin, ns))[KEY] == "198.51.100.0/24"
    assert await spec.check(target(ns), params("203.0.113.7")) is None
    # Later, once the ConfigMap is quiet, the retry adds it.
    assert (await spec.execute(target(ns), params("203.0.113.7"), 2))["added"] is True
    assert (await cm_data(admin, ns))[KEY] == "198.51.100.0/24,203.0.113.7/32"


async def run_stage(a: Actions, stage: ActionsStage) -> None:
    await relay_outbox(a.store, a.log)
    sub = a.log.subscribe([TOPIC_INCIDENTS, TOPIC_ACTIONS], CONSUMER_GROUP)
    for _ in range(100):
        batch = await sub.fetch(500, max_wait=0.01)
        if not batch:
            break
        await stage.handle(batch)
        await sub.commit()
    await sub.close()


async def test_the_stage_blocks_an_alerts_client_ip_once_approved_and_never_a_bad_one(
    tmp_path: Path, admin: client.ApiClient, ns: str, wire: Intercepted
) -> None:
    """A security breach whose alerts name client IPs: a playbook step takes the CIDR from
    the ``client_ip`` label (mode approve). The good address waits for a person and is
    blocked once approved; 10.0.0.0/8 is skipped with the reason, and nothing is sent."""
    await make_cm(admin, ns, {KEY: "198.51.100.0/24"})
    inventory = Inventory.model_validate(
        {"default_namespace": ns, "namespaces": {ns: {"configmaps": {CM: {"keys": [KEY]}}}}}
    )
    step = {
        "id": "block",
        "action": "kubernetes.block_ip",
        "params_from_labels": {"cidr": "client_ip"},
        "target": {"kind": "ConfigMap", "name": CM},
        "mode": "approve",
    }
    books = Playbooks.model_validate(
        {
            "playbooks": [
                {
                    "name": "breach",
                    "match": {"min_severity": "SEV-0", "impacts": ["security_breach"]},
                    "steps": [step],
                }
            ]
        }
    )
    alerts = [
        alert_json(f"b{i}", impact="security_breach", service="origin", client_ip=ip)
        for i, ip in enumerate(["203.0.113.7", "10.0.0.0/8"])
    ]

    async with open_actions(tmp_path) as a:

        def stage() -> ActionsStage:
            return ActionsStage(
                a.log,
                a.store,
                ledger=a.ledger,
                catalogue=kubernetes_catalogue(wire.factory),
                playbooks=books,
                inventory=inventory,
                guard=Guard(a.coordinator, Limits(), inventory),
                live=True,
                clock=Clock(),
            )

        await append_webhook(a.log, webhook('{}:{service="origin"}', *alerts))
        await drain(new_stage(a.log, a.store), a.log.subscribe([TOPIC_ALERTS], "cls"))
        await run_stage(a, stage())
        assert wire.patches() == []  # nothing before a person says so
        [waiting] = await a.store.list_actions(ActionQuery(state="awaiting_approval"))
        assert waiting.params == {"cidr": "203.0.113.7/32", "key": KEY}
        await a.store.decide_action(
            waiting.action_id,
            DecisionRequest("approved", "alice", datetime.now(UTC), "blocking the attacker"),
            source="/test",
        )
        await run_stage(a, stage())
        await run_stage(a, stage())  # delivered again: nothing twice
        events = [
            (r.envelope.type, ActionEventData.model_validate(r.envelope.data))
            for r in await records(a.log, TOPIC_ACTIONS)
        ]

    assert (await cm_data(admin, ns))[KEY] == "198.51.100.0/24,203.0.113.7/32"
    assert len(wire.patches()) == 1
    skipped = [d for t, d in events if t == "action.skipped"]
    assert len(skipped) == 1
    assert "cidr 10.0.0.0/8 is broader than /16" in (skipped[0].reason or "")
    [done] = [d for t, d in events if t == "action.succeeded"]
    assert done.actor == "alice"
    assert done.result["previous_value"] == "198.51.100.0/24"
    assert done.result["added"] is True
