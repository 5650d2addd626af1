"""The read-only Prometheus actions of the catalogue (``register_prometheus``, which
``actions.probes.probes_catalogue`` calls):

- ``prometheus.query`` (Prometheus; ``names``, ``max_series``): the inventory entry's named
  queries as instant queries (``/api/v1/query``, evaluated at Prometheus's now).
- ``prometheus.query_range`` (Prometheus; ``names``, ``range`` default 1h, ``step`` default
  1m, ``max_series``, ``max_points``): the same over a window (``/api/v1/query_range``)
  ending at the run's clock aligned down to the step.

Only the entry's named queries run, by name (default: all of them): an alert's labels or a
playbook's params cannot make Prometheus evaluate PromQL the inventory does not hold. Results
are bounded (series, points per series, and :data:`MAX_TOTAL_POINTS` in all) and shaped as
JSON by :func:`actions.prometheus_api.shape`. Errors are those of
:mod:`actions.prometheus_api`: one query refused fails the action (not retried); a 5xx or a
timeout is retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actions.catalogue import ActionSpec, Catalogue, Outcome
from actions.inventory import Inventory
from actions.inventory_services import Name, PrometheusEntry
from actions.prometheus_api import (
    MAX_RANGE_POINTS,
    PrometheusApi,
    PrometheusError,
    query_url,
    raise_first_error,
    range_url,
    range_window,
    shape,
    shown_url,
)
from schemas.actions import ApiRequest, Target
from schemas.durations import Duration, format_duration

MAX_SERIES: Final = 50
MAX_POINTS: Final = 1000
MAX_TOTAL_POINTS: Final = 5000
"""Points one outcome carries at most, shared evenly by its queries: an action event stays
well under the log's 256 KB."""
CONCURRENCY: Final = 4
"""Queries in flight at once against one server."""


class QueryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    names: tuple[Name, ...] | None = Field(
        None, description="the entry's named queries to run; default: all of them"
    )
    max_series: int = Field(10, ge=1, le=MAX_SERIES, description="series kept per query")


class RangeParams(QueryParams):
    range: Duration = Field(timedelta(hours=1), description="how far back the window reaches")
    step: Duration = Field(timedelta(minutes=1), description="the resolution")
    max_points: int = Field(120, ge=1, le=MAX_POINTS, description="latest points kept a series")

    @model_validator(mode="after")
    def _sane_window(self) -> RangeParams:
        if self.step < timedelta(seconds=1):
            raise ValueError("step must be at least 1s")
        if self.range < self.step:
            raise ValueError("range must be at least one step")
        if self.range / self.step >= MAX_RANGE_POINTS:
            raise ValueError(
                f"range / step must stay under {MAX_RANGE_POINTS} points (Prometheus's limit)"
            )
        return self


def chosen_queries(
    target: Target, entry: PrometheusEntry, names: tuple[str, ...] | None
) -> list[tuple[str, str]]:
    """(name, PromQL) of the queries asked for, in the order asked (default: the entry's)."""
    if not entry.queries:
        raise PrometheusError(f"prometheus {target.name} has no named queries in the inventory")
    if names is None:
        return list(entry.queries.items())
    unknown = [n for n in names if n not in entry.queries]
    if unknown:
        raise PrometheusError(
            f"prometheus {target.name} has no query named {', '.join(unknown)} "
            f"(it has: {', '.join(sorted(entry.queries))})"
        )
    return [(n, entry.queries[n]) for n in dict.fromkeys(names)]


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


class PrometheusActions:
    """query and query_range over the inventory's Prometheus servers; ``clock`` is the run's
    time (seconds since the epoch) the range window ends at."""

    def __init__(self, inventory: Inventory, clock: Callable[[], float] = time.time) -> None:
        self.inventory = inventory
        self.clock = clock

    def _entry(self, target: Target) -> PrometheusEntry:
        entry = self.inventory.entry("Prometheus", target.name)
        if not isinstance(entry, PrometheusEntry):
            raise PrometheusError(f"prometheus {target.name!r} is not in the inventory")
        return entry

    def _window(self, params: RangeParams) -> tuple[float, float, float]:
        step = params.step.total_seconds()
        start, end = range_window(self.clock(), params.range.total_seconds(), step)
        return start, end, step

    # query

    async def plan_query(self, target: Target, params: QueryParams) -> tuple[ApiRequest, ...]:
        entry = self._entry(target)
        base = shown_url(entry.url)
        return tuple(
            ApiRequest(method="GET", path=query_url(base, promql))
            for _, promql in chosen_queries(target, entry, params.names)
        )

    async def query(self, target: Target, params: QueryParams, token: int) -> Outcome:
        entry = self._entry(target)
        chosen = chosen_queries(target, entry, params.names)
        async with PrometheusApi(entry.url, entry.timeout.total_seconds()) as api:
            answers = await _all(chosen, api.query)
        budget = MAX_TOTAL_POINTS // len(chosen)
        return {
            "prometheus": target.name,
            "url": shown_url(entry.url),
            "queries": [
                {"name": name, "query": promql, **shape(data, params.max_series, 1, budget)}
                for (name, promql), data in zip(chosen, answers, strict=True)
            ],
        }

    # query_range

    async def plan_range(self, target: Target, params: RangeParams) -> tuple[ApiRequest, ...]:
        entry = self._entry(target)
        base = shown_url(entry.url)
        start, end, step = self._window(params)
        return tuple(
            ApiRequest(method="GET", path=range_url(base, promql, start, end, step))
            for _, promql in chosen_queries(target, entry, params.names)
        )

    async def query_range(self, target: Target, params: RangeParams, token: int) -> Outcome:
        entry = self._entry(target)
        chosen = chosen_queries(target, entry, params.names)
        start, end, step = self._window(params)
        async with PrometheusApi(entry.url, entry.timeout.total_seconds()) as api:
            answers = await _all(chosen, lambda q: api.query_range(q, start, end, step))
        budget = MAX_TOTAL_POINTS // len(chosen)
        return {
            "prometheus": target.name,
            "url": shown_url(entry.url),
            "start": _iso(start),
            "end": _iso(end),
            "range": format_duration(params.range),
            "step": format_duration(params.step),
            "queries": [
                {
                    "name": name,
                    "query": promql,
                    **shape(data, params.max_series, params.max_points, budget),
                }
                for (name, promql), data in zip(chosen, answers, strict=True)
            ],
        }


async def _all(
    chosen: list[tuple[str, str]], run: Callable[[str], Awaitable[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Every chosen query's data, at most CONCURRENCY at once; the first error raised (a
    query's name added to its message)."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(name: str, promql: str) -> dict[str, Any]:
        async with gate:
            try:
                return await run(promql)
            except PrometheusError as exc:
                raise type(exc)(f"query {name}: {exc}") from None

    results = await asyncio.gather(*(one(n, q) for n, q in chosen), return_exceptions=True)
    raise_first_error(results)
    return [r for r in results if isinstance(r, dict)]


async def no_check(target: Target, params: BaseModel) -> Outcome | None:
    """A read has no effect to find: after a crash it simply runs again."""
    return None


def register_prometheus(
    cat: Catalogue, inventory: Inventory, clock: Callable[[], float] = time.time
) -> Catalogue:
    """``prometheus.query`` and ``prometheus.query_range`` over INVENTORY, in CAT."""
    prom = PrometheusActions(inventory, clock)
    cat.register(
        ActionSpec(
            name="prometheus.query",
            params=QueryParams,
            risk="read_only",
            target_kind="Prometheus",
            plan=prom.plan_query,
            execute=prom.query,
            check=no_check,
            description="the server's named queries, instant (/api/v1/query), bounded",
        )
    )
    cat.register(
        ActionSpec(
            name="prometheus.query_range",
            params=RangeParams,
            risk="read_only",
            target_kind="Prometheus",
            plan=prom.plan_range,
            execute=prom.query_range,
            check=no_check,
            description="the server's named queries over a window (/api/v1/query_range), bounded",
        )
    )
    return cat
