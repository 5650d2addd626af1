"""bench.actions' storm (bench/actions/storm.py) on the embedded backends, small: the guard's
limits hold and the bench's own accounting still works (so the benchmark cannot rot unnoticed)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: bench/

from actions.catalogue import ACTION_ID
from bench.actions import Runs, Storm, Watcher, judge, storm
from eventlog import EmbeddedLog
from schemas.actions import Target


async def test_a_storm_of_60_incidents_runs_10_actions_once_each(tmp_path: Path) -> None:
    result = await storm(
        "embedded", tmp_path, incidents=60, targets=20, rate=10, max_in_flight=1, delay=0.001
    )
    assert result.violations == []
    assert result.decided == 60
    assert result.executed == 10  # the rate limit binds: 20 targets, 10 an hour
    assert max(result.runs.values()) == 1  # raw runs per action id
    assert result.max_runs_in_an_hour <= 10
    assert result.seen_in_flight <= 1
    assert result.targets_run_twice == 0
    assert result.succeeded == result.started_events == 10
    assert sum(result.reasons.values()) == 50
    assert result.reasons["rate"] > 0
    assert result.reasons["cooldown"] > 0


async def test_the_bench_reports_a_double_run_and_a_broken_limit() -> None:
    """The checks themselves: a run counted twice and a limit exceeded are violations."""
    result = Storm("embedded", 1, 1, 1, rate=1, max_in_flight=1, cooldown=600.0)
    runs = Runs()
    target = Target(kind="Deployment", namespace="ns", name="web")
    for _ in range(2):
        token = ACTION_ID.set("a1")
        try:
            async with runs.run(target):
                pass
        finally:
            ACTION_ID.reset(token)
    judge(result, runs, Watcher(EmbeddedLog(Path("unused.db")), "unused"), {"inc-1"})
    said = "\n".join(result.violations)
    assert "rate limit exceeded: 2 runs" in said
    assert "run more than once: {'a1': 2}" in said
    assert "cooldown broken on Deployment/ns/web" in said
    assert "1 incidents undecided" in said
