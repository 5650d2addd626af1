"""What each part found, and how it is printed: a part's lines as it ends, and the summary
table of every backend at the end."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from bench.actions.scenario import BENCH_ACTION, KUBE_ACTION
from bench.fold import pct

DESCRIBED: Final = {
    "embedded": "EmbeddedLog + EmbeddedStore + EmbeddedEffectsLedger + LocalCoordinator",
    "production": "KafkaLog + PostgresStore + PostgresEffectsLedger + RedisCoordinator",
}


def say(lines: Iterable[str]) -> None:
    for line in lines:
        print(line, flush=True)


def ms(values: Sequence[float]) -> str:
    return f"p50 {pct(values, 0.5):,.1f} / p99 {pct(values, 0.99):,.1f} ms"


@dataclass
class Latency:
    label: str
    stage_ms: list[float] = field(default_factory=list)  # appended -> first action.started
    run_ms: list[float] = field(default_factory=list)  # appended -> the action's run began
    baseline_ms: list[float] = field(default_factory=list)  # appended -> echoed
    violations: list[str] = field(default_factory=list)
    checked: str = ""  # what the apiserver showed afterwards (kube)

    def ratio(self, q: float) -> float:
        return pct(self.stage_ms, q) / pct(self.baseline_ms, q)

    def lines(self) -> list[str]:
        return [
            f"  latency [{self.label}], {len(self.stage_ms)} incidents one at a time:",
            f"    incident.opened appended -> 1st action.started seen  {ms(self.stage_ms)}",
            f"    incident.opened appended -> the action's run begins  {ms(self.run_ms)}",
            f"    baseline: appended -> echoed by the trivial stage     {ms(self.baseline_ms)}",
            f"    ratio stage/baseline: p50 {self.ratio(0.5):.2f}, p99 {self.ratio(0.99):.2f}",
            *([f"    {self.checked}"] if self.checked else []),
            *(f"    VIOLATION: {v}" for v in self.violations),
        ]


@dataclass
class Storm:
    backend: str
    replicas: int
    incidents: int
    targets: int
    rate: int
    max_in_flight: int
    cooldown: float
    seconds: float = float("nan")  # appended -> every action decided
    baseline_seconds: float = float("nan")  # appended -> every echo seen
    decided: int = 0
    runs: Counter[str] = field(default_factory=Counter)  # raw runs per action id
    max_runs_in_an_hour: int = 0
    seen_in_flight: int = 0
    targets_run_twice: int = 0
    succeeded: int = 0
    started_events: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # skipped, by the guard's reason
    per_replica: list[int] = field(default_factory=list)  # storm incidents, by partitions held
    rebalanced: bool = False  # the partitions changed hands during the storm
    joined: bool = False  # the last replica started only once the storm was under way
    repeated_events: int = 0  # events seen more than once (same id), raw
    violations: list[str] = field(default_factory=list)  # safety: the run exits 1
    anomalies: list[str] = field(default_factory=list)  # odd, not unsafe: printed

    @property
    def label(self) -> str:
        joined = ", the 2nd joining mid-storm" if self.joined else ""
        return f"{self.replicas} replica{'s' if self.replicas > 1 else ''}{joined}"

    @property
    def executed(self) -> int:
        return sum(self.runs.values())

    @property
    def most_runs(self) -> int:
        """The most runs of one action id."""
        return max(self.runs.values(), default=0)

    @property
    def ratio(self) -> float:
        return self.seconds / self.baseline_seconds

    @property
    def verdict(self) -> str:
        return "OK" if not self.violations else "VIOLATED"

    def lines(self) -> list[str]:
        skipped = sum(self.reasons.values())
        why = ", ".join(f"{k} {n}" for k, n in self.reasons.most_common())
        return [
            f"  storm [{self.backend}, {self.label}]: {self.incidents:,} incidents"
            f" in one append over {self.targets} targets; limits {self.rate}/h,"
            f" {self.max_in_flight} in flight, cooldown {self.cooldown / 60:g} min",
            f"    all {self.decided:,} decided in {self.seconds:.2f} s"
            f" ({self.decided / self.seconds:,.0f}/s); baseline (trivial stage, same batch)"
            f" {self.baseline_seconds:.2f} s; ratio {self.ratio:.1f}",
            f"    ran {self.executed} (limit {self.rate}/h; most in one hour"
            f" {self.max_runs_in_an_hour}); most runs of one action id {self.most_runs};"
            f" most in flight {self.seen_in_flight} (limit {self.max_in_flight});"
            f" targets run twice within the cooldown {self.targets_run_twice}",
            f"    events: {self.succeeded} succeeded, {self.started_events} started (raw),"
            f" {skipped} skipped by the guard ({why}); {self.repeated_events} seen twice",
            *([f"    {self.replication()}"] if self.replicas > 1 else []),
            f"    invariants: {self.verdict}",
            *(f"    VIOLATION: {v}" for v in self.violations),
            *(f"    NOTE: {a}" for a in self.anomalies),
        ]

    def replication(self) -> str:
        if self.joined:
            moved = "partitions moved" if self.rebalanced else "NO rebalance seen"
            return f"replica 2 joined after {self.rate // 5 or 1} runs: {moved} under the storm"
        held = f"storm incidents per replica (by the partitions each held) {self.per_replica}"
        return held + (", REBALANCED meanwhile" if self.rebalanced else "")


@dataclass
class BackendRun:
    backend: str
    latencies: list[Latency] = field(default_factory=list)
    storms: list[Storm] = field(default_factory=list)
    error: str = ""

    @property
    def violations(self) -> list[str]:
        found = [v for lat in self.latencies for v in lat.violations]
        return found + [v for s in self.storms for v in s.violations]


def summary(outcomes: Sequence[BackendRun]) -> None:
    rows: dict[str, dict[str, str]] = {}

    def put(row: str, backend: str, text: str) -> None:
        rows.setdefault(row, {})[backend] = text

    def p(values: Sequence[float]) -> str:
        return f"{pct(values, 0.5):.1f} / {pct(values, 0.99):.1f}"

    for out in outcomes:
        b = out.backend
        for lat in out.latencies:
            name = "kube-apiserver restart" if KUBE_ACTION in lat.label else BENCH_ACTION
            put(f"{name}: opened -> started, p50 / p99 ms", b, p(lat.stage_ms))
            put(f"{name}:   baseline (trivial stage), p50 / p99 ms", b, p(lat.baseline_ms))
            put(
                f"{name}:   ratio, p50 / p99",
                b,
                f"{lat.ratio(0.5):.2f} / {lat.ratio(0.99):.2f}",
            )
        for s in out.storms:
            tag = f"storm {s.incidents:,}, {s.label.replace('the 2nd joining', 'one joins')}"
            put(
                f"{tag}: all decided (baseline), s",
                b,
                f"{s.seconds:.2f} ({s.baseline_seconds:.2f})",
            )
            put(f"{tag}:   ratio", b, f"{s.ratio:.1f}")
            put(
                f"{tag}:   ran / limit; max per id; in flight",
                b,
                f"{s.executed}/{s.rate}; {s.most_runs}; {s.seen_in_flight}/{s.max_in_flight}",
            )
            notes = f" ({len(s.anomalies)} notes)" if s.anomalies else ""
            put(f"{tag}:   invariants", b, s.verdict + notes)
    backends = [o.backend for o in outcomes]
    width = max((len(r) for r in rows), default=10)
    print()
    print(f"{'actions stage':<{width}}  " + "  ".join(f"{b:>22}" for b in backends))
    for row, cells in rows.items():
        print(f"{row:<{width}}  " + "  ".join(f"{cells.get(b, '-'):>22}" for b in backends))
