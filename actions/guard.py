"""The guard: whether one planned step may run now on one target, through the ``Coordinator``
(in-process or Redis), so its limits hold across replicas.

In order, ``admit`` checks:

1. the step's mode is not ``never``, and the target is one the inventory holds;
2. the inventory's caps on the params (by parameter name, whatever the action):
   ``replicas`` above the Deployment's ``max_replicas`` is CAPPED to it (not refused; the
   admission's ``notes`` say so, for the action's events); ``min_replicas``/``max_replicas``
   are kept within the Deployment's HPA bounds the same way; ``image`` must be the
   Deployment's ``emergency_image`` (an absent or null ``image`` is filled with it; no
   ``emergency_image``: refused); ``key`` on a ConfigMap must be one of its patchable keys;
3. the cooldown per (action, target) (default 10 min for mutating and destructive actions,
   none for reads);
4. (live only) one run at a time per (action, target), a free concurrency slot (at most
   ``max_in_flight`` mutating actions at once, as ``max_in_flight`` coordinator locks), and
   the hourly rate limit per action (default 20 for mutations, 600 for reads). The cooldown
   starts at admission: an action that then fails still cools down, which errs on doing less.

Dry-run is checked the same way up to the cooldown, which it reads but never starts; it takes
no locks and does not count against rate limits: dry-run changes nothing.

Each refusal's reason is a sentence fit for an ``action.skipped`` event. An admitted live
mutation holds locks until ``release`` (``extend`` keeps a long one).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from actions.inventory import DeploymentEntry, Inventory
from actions.playbooks import PlannedStep
from schemas.actions import Risk, Target
from schemas.durations import Duration, format_duration
from store.coordination import Coordinator, LockToken

HOUR = 3600.0
SET_IMAGE = "kubernetes.set_image"


class ActionLimits(BaseModel):
    """One action's own limits, instead of the defaults for its risk."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cooldown: Duration | None = None
    rate_per_hour: int | None = Field(None, ge=1)


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cooldown: Duration = Field(timedelta(minutes=10), description="mutating and destructive")
    read_only_cooldown: Duration = timedelta(0)
    rate_per_hour: int = Field(20, ge=1, description="per action, mutating and destructive")
    read_only_rate_per_hour: int = Field(600, ge=1)
    max_in_flight: int = Field(3, ge=1, description="mutating actions running at once")
    lock_ttl: Duration = Field(timedelta(minutes=15), description="a lapsed holder's locks end")
    actions: dict[str, ActionLimits] = Field(default_factory=dict)

    def cooldown_of(self, action: str, risk: Risk) -> float:
        own = self.actions.get(action)
        if own is not None and own.cooldown is not None:
            return own.cooldown.total_seconds()
        base = self.read_only_cooldown if risk == "read_only" else self.cooldown
        return base.total_seconds()

    def rate_of(self, action: str, risk: Risk) -> int:
        own = self.actions.get(action)
        if own is not None and own.rate_per_hour is not None:
            return own.rate_per_hour
        return self.read_only_rate_per_hour if risk == "read_only" else self.rate_per_hour


@dataclass(frozen=True)
class Admitted:
    step: PlannedStep
    target: Target
    params: dict[str, Any]
    """The params to run with: capped where the inventory caps them."""
    dry_run: bool
    notes: tuple[str, ...] = ()
    """What the guard changed, e.g. "replicas 50 capped to max_replicas 20"."""
    locks: tuple[LockToken, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Refused:
    reason: str


def _seconds(value: float) -> str:
    return format_duration(timedelta(seconds=max(1, round(value))))


class Guard:
    def __init__(self, coordinator: Coordinator, limits: Limits, inventory: Inventory) -> None:
        self._coord = coordinator
        self._limits = limits
        self._inventory = inventory

    async def admit(
        self,
        step: PlannedStep,
        target: Target,
        params: Mapping[str, Any],
        risk: Risk,
        *,
        dry_run: bool,
        action_id: str = "",
    ) -> Admitted | Refused:
        """Admit the action or say why not. ``action_id``: an attempt of this very action
        that was admitted before (and died before the effects ledger knew of it) is resumed:
        the cooldown and rate it consumed are its own, not a reason to refuse it."""
        ask = self._ask(step, target, params, risk, action_id)
        if isinstance(ask, Refused):
            return ask
        if not dry_run and ask.marked and await self._coord.cooldown_remaining(ask.mark) > 0:
            return self.resume(step, target, params)
        left = await self._coord.cooldown_remaining(ask.key) if ask.cooldown > 0 else 0.0
        if left > 0:
            return Refused(f"{ask.what}: {ask.cooling()} ({_seconds(left)} left)")
        if dry_run:
            return Admitted(step, target, ask.args, True, ask.notes)
        return await self._take(ask)

    def _ask(
        self,
        step: PlannedStep,
        target: Target,
        params: Mapping[str, Any],
        risk: Risk,
        action_id: str,
    ) -> _Ask | Refused:
        """What admitting the action asks of the coordinator, or why it cannot be asked."""
        what = f"{step.action} on {target.key()}"
        if step.mode == "never":
            return Refused(f"{what}: step {step.step} is never run automatically (mode never)")
        if not self._inventory.contains(target):
            return Refused(f"{what}: the target is not in the inventory")
        capped = self._caps(step.action, target, dict(params))
        if isinstance(capped, Refused):
            return Refused(f"{what}: {capped.reason}")
        cooldown = self._limits.cooldown_of(step.action, risk)
        return _Ask(step, target, *capped, risk, cooldown, action_id)

    def resume(
        self, step: PlannedStep, target: Target, params: Mapping[str, Any]
    ) -> Admitted | Refused:
        """An action an earlier attempt was admitted for and began (a crash, a redelivery):
        the same caps, and neither cooldown nor rate asked again, since that attempt
        consumed them; its check decides whether it already took effect."""
        if not self._inventory.contains(target):
            return Refused(f"{step.action} on {target.key()}: the target is not in the inventory")
        capped = self._caps(step.action, target, dict(params))
        if isinstance(capped, Refused):
            return capped
        args, notes = capped
        return Admitted(step, target, args, False, notes)

    async def _take(self, ask: _Ask) -> Admitted | Refused:
        ttl = self._limits.lock_ttl.total_seconds()
        held: list[LockToken] = []
        try:
            if ask.risk != "read_only":
                # One at a time per (action, target): the cooldown check and start are atomic.
                mine = await self._coord.acquire_lock(ask.key, ttl)
                if mine is None:
                    return Refused(f"{ask.what}: already running")
                held.append(mine)
                if await self._coord.cooldown_remaining(ask.key) > 0:
                    return Refused(f"{ask.what}: {ask.cooling()}")
                slot = await self._slot(ttl)
                if slot is None:
                    n = self._limits.max_in_flight
                    return Refused(f"{ask.what}: {n} mutating actions already in flight")
                held.append(slot)
            action = ask.step.action
            limit = self._limits.rate_of(action, ask.risk)
            rate = await self._coord.rate_limit(f"actions:rate:{action}", limit, HOUR)
            if not rate.allowed:
                return Refused(
                    f"{ask.what}: rate limit of {limit} {action} per hour reached "
                    f"(next in {_seconds(rate.retry_after)})"
                )
            if ask.marked:
                # Before the cooldown, after the rate: a crash between them leaves an attempt
                # that may be resumed without a cooldown, never one resumed past the rate.
                await self._coord.start_cooldown(ask.mark, max(ask.cooldown, ttl))
            await self._coord.start_cooldown(ask.key, ask.cooldown)
            admitted = Admitted(ask.step, ask.target, ask.args, False, ask.notes, tuple(held))
            held = []
            return admitted
        finally:
            for token in held:
                await self._coord.release_lock(token)

    async def _slot(self, ttl: float) -> LockToken | None:
        n = self._limits.max_in_flight
        first = random.randrange(n)  # noqa: S311 - spreads contention, not security
        for i in range(n):
            token = await self._coord.acquire_lock(f"actions:inflight:{(first + i) % n}", ttl)
            if token is not None:
                return token
        return None

    async def hold(self, action_id: str, ttl: float) -> LockToken | None:
        """The one worker of an action id, for ``ttl`` at most, or None while another is
        (the same event handled twice at once: partitions moving between replicas)."""
        return await self._coord.acquire_lock(f"actions:id:{action_id}", ttl)

    async def let_go(self, token: LockToken) -> None:
        await self._coord.release_lock(token)

    async def release(self, admitted: Admitted) -> None:
        """The action is done: free its concurrency slot and its (action, target) lock."""
        for token in admitted.locks:
            await self._coord.release_lock(token)

    async def extend(self, admitted: Admitted) -> bool:
        """Hold the locks another ``lock_ttl``; False if one lapsed (the action ran too long)."""
        ttl = self._limits.lock_ttl.total_seconds()
        results = [await self._coord.extend_lock(t, ttl) for t in admitted.locks]
        return all(results)

    def _caps(
        self, action: str, target: Target, args: dict[str, Any]
    ) -> tuple[dict[str, Any], tuple[str, ...]] | Refused:
        notes: list[str] = []
        deployment = self._inventory.deployment(target)
        if deployment is not None:
            refused = _deployment_caps(action, deployment, args, notes)
            if refused is not None:
                return refused
        elif any(k in args for k in ("replicas", "min_replicas", "max_replicas", "image")):
            return Refused(f"a {target.kind} has no replica or image caps in the inventory")
        configmap = self._inventory.configmap(target)
        if configmap is not None and "key" in args and args["key"] not in configmap.keys:
            allowed = ", ".join(configmap.keys)
            return Refused(f"key {args['key']} may not be patched (allowed: {allowed})")
        return args, tuple(notes)


@dataclass(frozen=True)
class _Ask:
    step: PlannedStep
    target: Target
    args: dict[str, Any]
    notes: tuple[str, ...]
    risk: Risk
    cooldown: float
    action_id: str = ""

    @property
    def key(self) -> str:
        """Cooldowns and one-at-a-time are per (action, target), and per value of params an
        alert's labels gave (blocking one client IP does not cool down blocking another)."""
        variant = f"|{self.step.variant}" if self.step.variant else ""
        return f"actions:{self.step.action}:{self.target.key()}{variant}"

    @property
    def marked(self) -> bool:
        """An action with an id whose admission consumes something (a cooldown)."""
        return bool(self.action_id) and self.cooldown > 0

    @property
    def mark(self) -> str:
        """Set when this action id is admitted live: its later attempts are resumes."""
        return f"actions:admitted:{self.action_id}"

    @property
    def what(self) -> str:
        return f"{self.step.action} on {self.target.key()}"

    def cooling(self) -> str:
        return f"cooling down, it ran less than {_seconds(self.cooldown)} ago"


def _deployment_caps(
    action: str, deployment: DeploymentEntry, args: dict[str, Any], notes: list[str]
) -> Refused | None:
    """Caps ``args`` in place (saying so in ``notes``), or why they cannot be run."""
    bounds = deployment.hpa_bounds()
    caps = {
        "replicas": (1, deployment.max_replicas, "max_replicas"),
        "min_replicas": (bounds.min, bounds.max, "hpa bounds"),
        "max_replicas": (bounds.min, bounds.max, "hpa bounds"),
    }
    for name, (low, high, why) in caps.items():
        if name not in args:
            continue
        value = args[name]
        if not isinstance(value, int) or isinstance(value, bool):
            return Refused(f"{name} {value!r} is not a whole number")
        kept = min(max(value, low), high)
        if kept != value:
            args[name] = kept
            notes.append(f"{name} {value} capped to {kept} ({why} {low}..{high})")
    if args.get("min_replicas", bounds.min) > args.get("max_replicas", bounds.max):
        return Refused("min_replicas is above max_replicas")
    emergency = deployment.emergency_image
    if action == SET_IMAGE and args.get("image") is None and emergency is not None:
        # Absent, or None as a params model dumps a param not given.
        args["image"] = emergency
        notes.append(f"image is the inventory's emergency image {emergency}")
    if action == SET_IMAGE and emergency is None:
        return Refused("the inventory allows it no emergency image")
    if "image" in args and args["image"] != emergency:
        return Refused(f"image {args['image']} is not its emergency image")
    return None
