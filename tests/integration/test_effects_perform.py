"""runtime.effects.perform on both ledgers: what it does, checks and records, counted.

``do`` and ``check`` are fakes that count their calls; "the world" is what they return.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from effects_support import (
    LedgerBackend,
    backend_fixture,  # noqa: F401 - the fixture "backend"
    claim_after_lease,
    ledger_fixture,  # noqa: F401 - the fixture "ledger"
)

from runtime.effects import EffectInProgress, EffectLost, EffectResult, default_holder, perform
from store.effects import Claimed, EffectsLedger, Outcome, Unknown


class Flaky(Exception):
    """What a timeout or a reset looks like to the stage: retriable."""

    retriable = True


class Refused(Exception):
    """A 403: no retry will change it."""


@dataclass
class World:
    """Fake effect: counts ``do`` and ``check`` calls; ``check`` answers ``found``."""

    found: dict[str, Any] | None = None
    failures: list[BaseException] = field(default_factory=list)
    check_failures: list[BaseException] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    checks: int = 0
    gate: asyncio.Event | None = None
    """When set, ``do`` waits for it before it acts."""
    doing: asyncio.Event = field(default_factory=asyncio.Event)

    async def do(self, token: int) -> Outcome:
        self.tokens.append(token)
        self.doing.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        return {"restarted": "origin-backend", "token": token}

    async def check(self) -> Outcome | None:
        self.checks += 1
        if self.check_failures:
            raise self.check_failures.pop(0)
        return self.found


async def run(ledger: EffectsLedger, world: World, holder: str = "act-a") -> EffectResult:
    return await perform(
        ledger, "restart-1", holder=holder, lease=60, do=world.do, check=world.check
    )


async def test_a_first_perform_does_it_once_and_later_ones_return_the_record(
    ledger: EffectsLedger,
) -> None:
    world = World()
    first = await run(ledger, world)
    token = world.tokens[0]
    assert first == EffectResult(
        "restart-1", "succeeded", {"restarted": "origin-backend", "token": token}, "performed", 1
    )
    second = await run(ledger, world, holder="act-b")
    assert second == EffectResult("restart-1", "succeeded", first.outcome, "recorded", 1)
    assert (world.tokens, world.checks) == ([token], 0)
    record = await ledger.get("restart-1")
    assert record is not None
    assert (record.state, record.outcome) == ("succeeded", first.outcome)


async def test_a_dead_holder_whose_effect_took_place_is_not_redone(
    ledger: EffectsLedger,
) -> None:
    dead = await ledger.claim("restart-1", holder="dead", lease=0.2)
    assert isinstance(dead, Claimed)
    await asyncio.sleep(0.4)  # the dead holder's lease passes
    world = World(found={"annotation": "restartedAt=2026-03-01T12:00:00Z"})
    result = await run(ledger, world)
    assert result.source == "checked"
    assert (result.status, result.outcome, result.attempts) == ("succeeded", world.found, 2)
    assert (world.tokens, world.checks) == ([], 1)
    again = await run(ledger, world, holder="act-b")
    assert (again.source, again.outcome) == ("recorded", world.found)
    assert (world.tokens, world.checks) == ([], 1)


async def test_a_dead_holder_whose_effect_did_not_happen_is_done_once(
    ledger: EffectsLedger,
) -> None:
    dead = await ledger.claim("restart-1", holder="dead", lease=0.2)
    assert isinstance(dead, Claimed)
    await asyncio.sleep(0.4)
    world = World(found=None)
    result = await run(ledger, world)
    assert (result.source, result.attempts) == ("performed", 2)
    assert world.checks == 1
    assert len(world.tokens) == 1
    assert world.tokens[0] > dead.token


async def test_a_retriable_failure_gives_the_claim_back_and_the_retry_checks_first(
    ledger: EffectsLedger,
) -> None:
    world = World(failures=[Flaky("read timeout")])
    with pytest.raises(Flaky):
        await run(ledger, world)
    record = await ledger.get("restart-1")
    assert record is not None
    assert (record.state, record.error) == ("released", "Flaky: read timeout")
    result = await run(ledger, world)  # the check finds nothing: done again
    assert (result.source, result.attempts) == ("performed", 2)
    assert (len(world.tokens), world.checks) == (2, 1)


async def test_a_timeout_that_acted_anyway_is_found_by_the_retry(ledger: EffectsLedger) -> None:
    world = World(failures=[Flaky("read timeout")])
    with pytest.raises(Flaky):
        await run(ledger, world)
    world.found = {"posted": "ts=1700000000.0001"}
    result = await run(ledger, world)
    assert (result.source, result.outcome) == ("checked", world.found)
    assert (len(world.tokens), world.checks) == (1, 1)


async def test_a_non_retriable_failure_is_the_recorded_outcome(ledger: EffectsLedger) -> None:
    world = World(failures=[Refused("403 forbidden")])
    result = await run(ledger, world)
    failed = {"error": "403 forbidden", "type": "Refused"}
    assert result == EffectResult("restart-1", "failed", failed, "performed", 1)
    again = await run(ledger, world, holder="act-b")
    assert again == EffectResult("restart-1", "failed", failed, "recorded", 1)
    assert (len(world.tokens), world.checks) == (1, 0)


async def test_someone_elses_live_claim_is_a_retriable_in_progress(
    ledger: EffectsLedger,
) -> None:
    other = await ledger.claim("restart-1", holder="act-other", lease=60)
    assert isinstance(other, Claimed)
    world = World()
    with pytest.raises(EffectInProgress) as raised:
        await run(ledger, world)
    assert raised.value.retriable
    assert (raised.value.holder, raised.value.lease_until) == ("act-other", other.lease_until)
    assert (world.tokens, world.checks) == ([], 0)


async def test_a_failing_check_gives_the_claim_back_without_doing(ledger: EffectsLedger) -> None:
    dead = await ledger.claim("restart-1", holder="dead", lease=0.2)
    assert isinstance(dead, Claimed)
    await asyncio.sleep(0.4)
    world = World(check_failures=[Flaky("apiserver unreachable")])
    with pytest.raises(Flaky):
        await run(ledger, world)
    assert world.tokens == []
    record = await ledger.get("restart-1")
    assert record is not None
    assert record.state == "released"
    result = await run(ledger, world)  # released, yet the retry still checks first
    assert (result.source, world.checks, len(world.tokens)) == ("performed", 2, 1)


async def test_concurrent_performs_do_it_once(backend: LedgerBackend) -> None:
    world = World()
    async with backend.open() as one, backend.open() as two:

        async def attempt(i: int) -> EffectResult | BaseException:
            try:
                return await run((one, two)[i % 2], world, holder=f"h{i}")
            except EffectInProgress as exc:
                return exc

        results = await asyncio.gather(*(attempt(i) for i in range(20)))
        after = await run(one, world, holder="late")
    performed = [r for r in results if isinstance(r, EffectResult) and r.source == "performed"]
    assert len(performed) == 1
    rest = [r for r in results if not (isinstance(r, EffectResult) and r.source == "performed")]
    assert all(
        isinstance(r, EffectInProgress) or (isinstance(r, EffectResult) and r.source == "recorded")
        for r in rest
    )
    assert len(world.tokens) == 1
    assert (after.source, after.outcome) == ("recorded", performed[0].outcome)


async def test_a_holder_that_outlived_its_lease_cannot_record(ledger: EffectsLedger) -> None:
    gate = asyncio.Event()
    slow = World(gate=gate)
    task = asyncio.create_task(
        perform(ledger, "restart-1", holder="slow", lease=0.2, do=slow.do, check=slow.check)
    )
    await slow.doing.wait()  # it holds the claim and is acting
    _, taken = await claim_after_lease(ledger, "restart-1", holder="next", lease=60)
    assert isinstance(taken, Unknown)
    assert taken.previous_holder == "slow"
    gate.set()  # the slow do finishes after its claim was taken over
    with pytest.raises(EffectLost) as raised:
        await task
    assert raised.value.retriable
    record = await ledger.get("restart-1")
    assert record is not None
    assert (record.state, record.holder, record.token) == ("held", "next", taken.token)


async def test_an_outcome_json_cannot_hold_is_recorded_as_text(ledger: EffectsLedger) -> None:
    calls: list[int] = []

    async def do(token: int) -> Outcome:
        calls.append(token)
        return {"response": object()}

    async def check() -> Outcome | None:
        raise AssertionError("a first attempt does not check")

    result = await perform(ledger, "post-1", holder=default_holder(), lease=60, do=do, check=check)
    assert (result.status, result.source) == ("succeeded", "performed")
    assert result.outcome["unserialisable"].startswith("{'response': <object object at")
    again = await perform(ledger, "post-1", holder="act-b", lease=60, do=do, check=check)
    assert (again.source, again.outcome) == ("recorded", result.outcome)
    assert len(calls) == 1
    record = await ledger.get("post-1")
    assert record is not None
    assert record.outcome == result.outcome
    assert record.holder == default_holder()
