"""The guard on both coordinators (in-process and Redis): cooldowns, rate limits, caps,
concurrency, and a dry-run that changes nothing. Two guards share one coordinator's state
("two replicas"); no timing asserts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from services import Services, unique_name

from actions.guard import Admitted, Guard, Limits, Refused
from actions.inventory import Inventory
from actions.playbooks import PlannedStep
from schemas.actions import Mode, Target
from store import Coordinator, LocalCoordinator, RedisCoordinator

NS = "origin-production"
INVENTORY = Inventory.model_validate(
    {
        "namespaces": {
            NS: {
                "deployments": {
                    "origin-backend": {
                        "max_replicas": 20,
                        "hpa": {"min": 3, "max": 12},
                        "emergency_image": "registry.example/origin-backend:stable",
                    },
                    "origin-frontend": {"max_replicas": 10},
                    **{f"app-{i}": {"max_replicas": 5} for i in range(50)},
                },
                "configmaps": {"origin-backend-config": {"keys": ["DB_POOL_MAX"]}},
            }
        }
    }
)
BACKEND = Target(kind="Deployment", namespace=NS, name="origin-backend")
FRONTEND = Target(kind="Deployment", namespace=NS, name="origin-frontend")
CONFIG = Target(kind="ConfigMap", namespace=NS, name="origin-backend-config")

Pair = tuple[Coordinator, Coordinator]


@pytest.fixture(params=["local", "redis"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    if request.param == "local":
        local = LocalCoordinator()
        yield local, local
        return
    services: Services = request.getfixturevalue("services")
    prefix = unique_name("sevpipe-guard") + ":"
    async with (
        RedisCoordinator(services.redis_url, prefix=prefix) as one,
        RedisCoordinator(services.redis_url, prefix=prefix) as two,
    ):
        yield one, two


def guards(pair: Pair, **limits: Any) -> tuple[Guard, Guard]:
    cfg = Limits.model_validate(limits)
    return Guard(pair[0], cfg, INVENTORY), Guard(pair[1], cfg, INVENTORY)


def step(action: str = "kubernetes.rollout_restart", mode: Mode = "auto") -> PlannedStep:
    return PlannedStep("sev0-outage", "restart", action, {}, mode, BACKEND)


def admitted(got: Admitted | Refused) -> Admitted:
    assert isinstance(got, Admitted), got
    return got


def refused(got: Admitted | Refused) -> str:
    assert isinstance(got, Refused), got
    return got.reason


async def test_a_cooldown_stops_a_second_restart(pair: Pair) -> None:
    one, two = guards(pair)
    first = admitted(await one.admit(step(), BACKEND, {}, "mutating", dry_run=False))
    await one.release(first)
    reason = refused(await two.admit(step(), BACKEND, {}, "mutating", dry_run=False))
    assert reason.startswith("kubernetes.rollout_restart on Deployment/origin-production/")
    assert "cooling down, it ran less than 10m ago" in reason
    # Per (action, target): another Deployment, or another action, is not cooling down.
    other = admitted(await two.admit(step(), FRONTEND, {}, "mutating", dry_run=False))
    await two.release(other)
    scale = step("kubernetes.scale")
    admitted(await two.admit(scale, BACKEND, {"replicas": 4}, "mutating", dry_run=False))
    # Reads have no cooldown by default.
    for _ in range(2):
        read = step("kubernetes.rollout_history")
        admitted(await one.admit(read, BACKEND, {}, "read_only", dry_run=False))


async def test_the_same_action_on_the_same_target_runs_once_at_a_time(pair: Pair) -> None:
    one, two = guards(pair, cooldown=0)
    results = await asyncio.gather(
        *(g.admit(step(), BACKEND, {}, "mutating", dry_run=False) for g in [one, two] * 5)
    )
    assert len([r for r in results if isinstance(r, Admitted)]) == 1


async def test_the_rate_limit_holds_under_50_concurrent_admits(pair: Pair) -> None:
    one, two = guards(pair, rate_per_hour=7, max_in_flight=50)
    targets = [Target(kind="Deployment", namespace=NS, name=f"app-{i}") for i in range(50)]
    results = await asyncio.gather(
        *(
            (one if i % 2 else two).admit(step(), t, {}, "mutating", dry_run=False)
            for i, t in enumerate(targets)
        )
    )
    let_in = [r for r in results if isinstance(r, Admitted)]
    assert len(let_in) == 7
    reasons = {
        r.reason.partition(": ")[2].partition(" (")[0] for r in results if isinstance(r, Refused)
    }
    assert reasons == {"rate limit of 7 kubernetes.rollout_restart per hour reached"}
    # A refused admit took no slot or lock: after releasing the 7, 50 slots are free again.
    for got in let_in:
        await one.release(got)


async def test_the_concurrency_limit_counts_mutations_in_flight(pair: Pair) -> None:
    one, two = guards(pair, max_in_flight=2, cooldown=0)
    a = admitted(await one.admit(step(), BACKEND, {}, "mutating", dry_run=False))
    b = admitted(await two.admit(step(), FRONTEND, {}, "mutating", dry_run=False))
    scale = step("kubernetes.scale")
    reason = refused(await one.admit(scale, BACKEND, {"replicas": 3}, "mutating", dry_run=False))
    assert reason.endswith("2 mutating actions already in flight")
    # Reads do not take a slot.
    read = step("kubernetes.rollout_history")
    admitted(await two.admit(read, BACKEND, {}, "read_only", dry_run=False))
    await one.release(a)
    c = admitted(await two.admit(scale, BACKEND, {"replicas": 3}, "mutating", dry_run=False))
    await two.release(b)
    await two.release(c)


async def test_caps_hold(pair: Pair) -> None:
    one, _ = guards(pair, cooldown=0)
    scale = step("kubernetes.scale")
    got = admitted(await one.admit(scale, BACKEND, {"replicas": 50}, "mutating", dry_run=False))
    assert got.params == {"replicas": 20}
    assert got.notes == ("replicas 50 capped to 20 (max_replicas 1..20)",)
    await one.release(got)

    hpa = step("kubernetes.emergency_hpa")
    params = {"min_replicas": 1, "max_replicas": 40, "cpu_percent": 50}
    got = admitted(await one.admit(hpa, BACKEND, params, "mutating", dry_run=False))
    assert got.params == {"min_replicas": 3, "max_replicas": 12, "cpu_percent": 50}
    await one.release(got)

    image = step("kubernetes.set_image", mode="approve")
    got = admitted(await one.admit(image, BACKEND, {}, "destructive", dry_run=False))
    assert got.params == {"image": "registry.example/origin-backend:stable"}
    await one.release(got)
    reason = refused(
        await one.admit(image, BACKEND, {"image": "evil:1"}, "destructive", dry_run=False)
    )
    assert reason.endswith("image evil:1 is not its emergency image")
    reason = refused(await one.admit(image, FRONTEND, {}, "destructive", dry_run=False))
    assert reason.endswith("the inventory allows it no emergency image")

    patch = step("kubernetes.patch_configmap")
    ok = admitted(
        await one.admit(
            patch, CONFIG, {"key": "DB_POOL_MAX", "value": "50"}, "mutating", dry_run=False
        )
    )
    await one.release(ok)
    reason = refused(
        await one.admit(patch, CONFIG, {"key": "SECRET", "value": "x"}, "mutating", dry_run=False)
    )
    assert reason.endswith("key SECRET may not be patched (allowed: DB_POOL_MAX)")


async def test_never_and_targets_outside_the_inventory_are_refused(pair: Pair) -> None:
    one, _ = guards(pair)
    never = step("kubernetes.set_image", mode="never")
    reason = refused(await one.admit(never, BACKEND, {}, "destructive", dry_run=True))
    assert "mode never" in reason
    evil = Target(kind="Deployment", namespace=NS, name="evil")
    reason = refused(await one.admit(step(), evil, {}, "mutating", dry_run=False))
    assert (
        reason
        == f"kubernetes.rollout_restart on Deployment/{NS}/evil: the target is not in the inventory"
    )


async def test_dry_run_is_admitted_and_consumes_nothing(pair: Pair) -> None:
    one, two = guards(pair, rate_per_hour=1, max_in_flight=1)
    scale = step("kubernetes.scale")
    for _ in range(3):
        got = admitted(await one.admit(scale, BACKEND, {"replicas": 99}, "mutating", dry_run=True))
        assert got.dry_run
        assert got.locks == ()
        assert got.params == {"replicas": 20}  # the capped request is what dry-run records
    # No cooldown started, no rate counted, no slot taken: live mode is still let through once.
    live = admitted(await two.admit(scale, BACKEND, {"replicas": 4}, "mutating", dry_run=False))
    # And a dry-run after a live run reports the cooldown live mode would meet.
    reason = refused(await one.admit(scale, BACKEND, {"replicas": 4}, "mutating", dry_run=True))
    assert "cooling down" in reason
    await two.release(live)


async def test_an_override_per_action(pair: Pair) -> None:
    one, _ = guards(pair, actions={"kubernetes.rollout_restart": {"cooldown": "1h"}})
    first = admitted(await one.admit(step(), BACKEND, {}, "mutating", dry_run=False))
    await one.release(first)
    assert "less than 1h ago" in refused(
        await one.admit(step(), BACKEND, {}, "mutating", dry_run=False)
    )
    limits = Limits.model_validate({"actions": {"kubernetes.rollout_restart": {"cooldown": "1h"}}})
    assert limits.cooldown_of("kubernetes.rollout_restart", "mutating") == 3600
    assert limits.cooldown == timedelta(minutes=10)
