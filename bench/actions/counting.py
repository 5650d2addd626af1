"""The counting action: ``bench.restart``, a mutating action that counts its runs, raw, and
awaits a delay; and any other action's runs counted the same way."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from actions.catalogue import ACTION_ID, ActionSpec, Outcome
from bench.actions.scenario import BENCH_ACTION
from schemas.actions import ApiRequest, Target


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class Runs:
    """Every run of a counted action, raw: nothing deduplicated."""

    delay: float = 0.0
    by_action: Counter[str] = field(default_factory=Counter)
    by_target: dict[str, list[float]] = field(default_factory=dict)  # target -> run starts
    entered: dict[str, float] = field(default_factory=dict)  # action id -> its first start
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_action.values())

    def starts(self) -> list[float]:
        return sorted(t for times in self.by_target.values() for t in times)

    def doubled(self) -> dict[str, int]:
        """Action id -> its runs, of those run more than once."""
        return {a: n for a, n in self.by_action.items() if n > 1}

    @contextlib.asynccontextmanager
    async def run(self, target: Target) -> AsyncIterator[None]:
        started = time.perf_counter()
        action_id = ACTION_ID.get() or "(no action id)"
        self.by_action[action_id] += 1
        self.by_target.setdefault(target.key(), []).append(started)
        self.entered.setdefault(action_id, started)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1


def counting_action(runs: Runs) -> ActionSpec[NoParams]:
    async def plan(target: Target, params: NoParams) -> tuple[ApiRequest, ...]:
        path = f"/bench/namespaces/{target.namespace}/deployments/{target.name}/restart"
        return (ApiRequest(method="POST", path=path),)

    async def execute(target: Target, params: NoParams, token: int) -> Outcome:
        async with runs.run(target):
            await asyncio.sleep(runs.delay)
        return {"restarted": target.name, "token": token}

    async def check(target: Target, params: NoParams) -> Outcome | None:
        action_id = ACTION_ID.get()
        found = action_id is not None and runs.by_action[action_id] > 0
        return {"restarted": target.name, "found": True} if found else None

    return ActionSpec(
        BENCH_ACTION, NoParams, "mutating", "Deployment", plan, execute, check, "counts its runs"
    )


def counted(spec: ActionSpec[Any], runs: Runs) -> ActionSpec[Any]:
    """``spec`` with its runs counted as ``counting_action`` counts its own."""
    inner = spec.execute

    async def execute(target: Target, params: Any, token: int) -> Outcome:
        async with runs.run(target):
            return await inner(target, params, token)

    return dataclasses.replace(spec, execute=execute)
