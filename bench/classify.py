"""Classifier benchmarks (not a test): every figure with all alerts in ONE Alertmanager group
beside the same alerts over many groups, and the ratio one/many, measured in the same run.

1. Backtest throughput: alerts/s replayed from an embedded log through reading only (the
   baseline), the policy, the incident fold (one simulation fed in the live stage's batches)
   and ``backtest()`` as ``sevpipe backtest`` runs it (two policies side by side; the best of
   three runs). Each run is
   a subprocess of its own, so its peak RSS (getrusage) is its own; and ``backtest()`` alone
   over 100,000 alerts in one group, for its peak RSS with them all in one incident.
2. The storm through ``sevpipe run`` (embedded): ``--storm-alerts`` (100,000) alerts posted
   as 100-alert webhooks by 4 concurrent senders, into one group, then over ``--storm-groups``
   groups (200): fold rate (alerts answered 200 per second until the last is in an incident
   event), each alert's 200 -> its incident change p50/p99, bytes per alert on
   ``sevpipe.incidents``, the largest event, and the process's peak RSS (VmHWM) with all of
   them in one incident.
3. Latency at a steady offered load (``--rate``, 10-alert webhooks) through ``sevpipe run``:
   an alert's 200 -> the incident event carrying it, p50/p99, one group beside many.

    .venv/bin/python -m bench.classify [--alerts 200000] [--groups 5000,1]
        [--storm-alerts 100000] [--storm-groups 200] [--rate 1000] [--seconds 10]
    .venv/bin/python -m bench.classify --groups 1     # one group only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import orjson

from bench.fold import (
    TARGET_BYTES_PER_ALERT,
    EmbeddedWatcher,
    Fold,
    Row,
    Watcher,
    fold_of,
    pct,
    peak_rss_mb,
    print_table,
)
from bench.ingest import child_env, group_counts
from classifier.backtest import Simulation, alert_inputs, backtest
from classifier.classify import classify_alert
from classifier.policy import default_policy
from eventlog import EmbeddedLog
from schemas import TOPIC_ALERTS, Envelope, Webhook, event_type_for, normalise

BATCH = 500  # alerts fed at once for the one-simulation figure, as the live stage batches
IMPACTS = ["outage", "error_rate", "performance", "minor", "feature_degraded", "", "", ""]
TARGET_BACKTEST = 50_000.0
BACKTEST_RUNS = 3
TARGET_RATIO = 0.80
TARGET_RSS_MB = 300.0
RSS_ALERTS = 100_000  # the RSS target is for this many alerts in one incident
TARGET_P99_MS = 1000.0
STORM_PER_WEBHOOK = 100
STORM_SENDERS = 4
STORM_TIMEOUT = 300.0
CATCH_UP = 60.0
SELF = (sys.executable, "-m", "bench.classify")
BANNER = re.compile(r"listening on (http://\S+)")


def _many(groups: Sequence[int]) -> int | None:
    return next((g for g in groups if g != 1), None)


def _label(groups: int) -> str:
    return f"{groups:,} group" + ("s" if groups != 1 else "")


# -- 1. backtest -------------------------------------------------------------------------------


def _alert(i: int, group: int, rng: random.Random, start: datetime) -> dict[str, object]:
    labels = {
        "alertname": f"Alert{group % 50}",
        "namespace": "origin-production",
        "service": f"svc-{group}",
        "pod": f"pod-{i}",
        "severity": rng.choice(["critical", "warning", "info"]),
    }
    impact = rng.choice(IMPACTS)
    if impact:
        labels["impact"] = impact
    annotations = {"summary": f"alert {i}", "user_impact_pct": f"{rng.randint(0, 100)}%"}
    return {
        "status": "firing" if rng.random() < 0.8 else "resolved",
        "labels": labels,
        "annotations": annotations,
        "startsAt": (start + timedelta(seconds=i)).isoformat(),
    }


async def fill_log(path: Path, alerts: int, groups: int) -> None:
    """``alerts`` alert events over ``groups`` group keys (the same stream whatever ``groups``,
    but for the group each alert falls in)."""
    rng = random.Random(7)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with EmbeddedLog(path, synchronous="normal") as log:
        batch: list[Envelope] = []
        for i in range(alerts):
            group = rng.randrange(groups)
            body = {
                "status": "firing",
                "groupKey": f'{{}}:{{service="svc-{group}"}}',
                "receiver": "bench",
                "alerts": [_alert(i, group, rng, start)],
            }
            webhook = Webhook.model_validate(body)
            for data in normalise(webhook, webhook.incident_group_key(), start):
                env = Envelope.new(
                    event_type_for(data.status), "/bench", data.group.group_key, data
                )
                batch.append(env)
            if len(batch) >= 5000:
                await log.append(TOPIC_ALERTS, batch)
                batch = []
        if batch:
            await log.append(TOPIC_ALERTS, batch)


async def _throughput(path: Path) -> dict[str, float]:
    """alerts/s of: reading only; + policy; + the incident fold; ``backtest()`` itself."""
    policy = default_policy()
    out: dict[str, float] = {}
    async with EmbeddedLog(path, create=False) as log:
        t0 = time.perf_counter()
        n = 0
        async for _ in alert_inputs(log, None, None):
            n += 1
        out["read"] = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        async for item in alert_inputs(log, None, None):
            classify_alert(item.data, policy)
        out["classify"] = n / (time.perf_counter() - t0)
        sim = Simulation(policy)
        t0 = time.perf_counter()
        batch = []
        async for item in alert_inputs(log, None, None):
            batch.append(item)
            if len(batch) >= BATCH:
                sim.feed_batch(batch)
                batch = []
        sim.feed_batch(batch)
        out["fold"] = n / (time.perf_counter() - t0)
        out["incidents"] = len(sim.incidents)
        del sim
        # The best of a few runs, as timeit reports: this machine's noise only slows a run.
        best = 0.0
        for _ in range(BACKTEST_RUNS):
            t0 = time.perf_counter()
            report = await backtest(log, policy, default_policy())
            best = max(best, report.alerts / (time.perf_counter() - t0))
        out["backtest"] = best
    out["alerts"] = n
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


async def _backtest_only(path: Path) -> dict[str, float]:
    """``backtest()`` alone, as ``sevpipe backtest`` runs it: its rate and peak RSS."""
    policy = default_policy()
    async with EmbeddedLog(path, create=False) as log:
        t0 = time.perf_counter()
        report = await backtest(log, policy, default_policy())
        rate = report.alerts / (time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"alerts": report.alerts, "backtest": rate, "rss_mb": rss}


def backtest_in_subprocess(db: Path, role: str = "backtest") -> dict[str, float]:
    done = subprocess.run(
        [*SELF, "--role", role, "--db", str(db)],
        capture_output=True,
        check=True,
        env=child_env(),
    )
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def run_backtests(args: argparse.Namespace, workdir: Path) -> dict[int, dict[str, float]]:
    results = {}
    for groups in args.groups:
        db = workdir / f"backtest-{groups}" / "events.db"
        print(f"filling a log with {args.alerts:,} alert events over {_label(groups)} ...")
        asyncio.run(fill_log(db, args.alerts, groups))
        r = results[groups] = backtest_in_subprocess(db)
        print(
            f"  [{_label(groups)}] read+parse {r['read']:,.0f}/s, +policy {r['classify']:,.0f}/s,"
            f" +fold {r['fold']:,.0f}/s, backtest() {r['backtest']:,.0f} alerts/s"
            f" ({r['incidents']:,.0f} incidents; peak RSS {r['rss_mb']:,.0f} MB)",
            flush=True,
        )
    return results


def backtest_rss(alerts: int, workdir: Path) -> dict[str, float]:
    """Peak RSS of ``backtest()`` alone, over ``alerts`` alerts all in one group."""
    db = workdir / "backtest-rss" / "events.db"
    print(f"filling a log with {alerts:,} alert events in 1 group (backtest RSS) ...")
    asyncio.run(fill_log(db, alerts, 1))
    r = backtest_in_subprocess(db, "backtest-rss")
    print(
        f"  [1 group] backtest() alone: {r['backtest']:,.0f} alerts/s,"
        f" peak RSS {r['rss_mb']:,.0f} MB with {r['alerts']:,.0f} alerts in one incident",
        flush=True,
    )
    return r


# -- 2. the storm through `sevpipe run` --------------------------------------------------------


class SevpipeRun:
    """``sevpipe run`` on a fresh data dir; stdout/stderr to files."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True)
        self.out = data_dir.parent / f"{data_dir.name}.out"
        self.err = data_dir.parent / f"{data_dir.name}.err"
        argv = [sys.executable, "-m", "sevpipe", "run", "--data-dir", str(data_dir)]
        argv += ["--port", "0"]
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=child_env())
        deadline = time.monotonic() + 30
        while not (match := BANNER.search(self.out.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"sevpipe run did not start: {self.err.read_text()[-2000:]}")
            time.sleep(0.05)
        self.base_url = match.group(1)
        self.watcher = EmbeddedWatcher(data_dir / "events.db").start()

    def stop(self) -> None:
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        finally:
            self.watcher.stop()


def storm_body(w: int, groups: int, run: str) -> tuple[bytes, list[str]]:
    """Webhook ``w`` of the storm: 100 new alerts of group ``w % groups``."""
    g = w % groups
    service = f"storm-{g:03d}"
    alerts = []
    for n in range(w * STORM_PER_WEBHOOK, (w + 1) * STORM_PER_WEBHOOK):
        pod = f"origin-backend-7d9f8c6b5-{n:06d}"
        alerts.append(
            {
                "status": "firing",
                "labels": {
                    "alertname": "PodCrashLooping",
                    "service": service,
                    "namespace": "origin-production",
                    "pod": pod,
                    "severity": "warning",
                    "impact": "error_rate",
                },
                "annotations": {"summary": f"pod origin-production/{pod} is crash looping"},
                "startsAt": f"2026-03-04T02:{n // 60000 % 60:02d}:{n // 1000 % 60:02d}."
                f"{n % 1000:03d}Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": f"{run}{n:010x}",
            }
        )
    body = {
        "version": "4",
        "groupKey": f'{{}}:{{service="{service}"}}',
        "status": "firing",
        "receiver": "sevpipe",
        "groupLabels": {"service": service},
        "commonLabels": {"alertname": "PodCrashLooping", "service": service},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    }
    return orjson.dumps(body), [a["fingerprint"] for a in alerts]  # type: ignore[misc]


async def _post_storm(
    url: str, bodies: list[tuple[bytes, list[str]]]
) -> list[tuple[float, list[str]]]:
    """Post ``bodies`` from concurrent senders, retrying 5xx and transport errors."""
    acks: list[tuple[float, list[str]]] = []

    async def sender(c: int) -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for body, fps in bodies[c::STORM_SENDERS]:
                while True:
                    try:
                        async with session.post(url, data=body, headers=headers) as resp:
                            await resp.read()
                            status = resp.status
                    except (aiohttp.ClientError, TimeoutError):
                        status = 0
                    if status == 200:
                        acks.append((time.time(), fps))
                        break
                    if 400 <= status < 500:
                        raise RuntimeError(f"webhook refused with {status}")
                    await asyncio.sleep(0.1)

    async with asyncio.timeout(STORM_TIMEOUT):
        await asyncio.gather(*(sender(c) for c in range(STORM_SENDERS)))
    return acks


@dataclass
class Storm:
    groups: int
    fold: Fold
    rss_mb: float


def storm_load(base_url: str, watcher: Watcher, pid: int, alerts: int, groups: int) -> Storm:
    """Post the storm to ``base_url``, wait until ``watcher`` saw it all folded (or
    ``CATCH_UP`` s); the peak RSS of process ``pid`` then."""
    webhooks = alerts // STORM_PER_WEBHOOK
    run = f"{groups:06x}"
    bodies = [storm_body(w, groups, run) for w in range(webhooks)]
    start = time.time()
    acks = asyncio.run(_post_storm(f"{base_url}/api/v1/alerts", bodies))
    watcher.wait_for([fp for _, fps in acks for fp in fps], CATCH_UP)
    rss = peak_rss_mb(pid)
    fold = fold_of(acks, watcher.seen, start)
    print(f"  [{_label(groups)}] {fold.line()}; peak RSS {rss:,.0f} MB", flush=True)
    return Storm(groups, fold, rss)


def storm(args: argparse.Namespace, workdir: Path, groups: int) -> Storm:
    server = SevpipeRun(workdir / f"storm-{groups}")
    try:
        return storm_load(
            server.base_url, server.watcher, server.proc.pid, args.storm_alerts, groups
        )
    finally:
        server.stop()


def storm_rows(storms: dict[int, Storm], many: int, process: str) -> list[Row]:
    """The storm's figures, one group beside ``many``."""
    one_s, many_s = storms[1], storms[many]
    m = _label(many)
    one_bytes, many_bytes = one_s.fold.bytes_per_alert, many_s.fold.bytes_per_alert
    in_one = one_s.fold.folded
    return [
        Row(
            f"{process} storm fold rate ({m})",
            one_s.fold.fold_rate,
            many_s.fold.fold_rate,
            "alerts/s",
            "1/many >= 0.80",
            one_s.fold.fold_rate / many_s.fold.fold_rate >= TARGET_RATIO,
        ),
        Row(
            f"{process} storm p99 200 -> change ({m})",
            pct(one_s.fold.latencies_ms, 0.99),
            pct(many_s.fold.latencies_ms, 0.99),
            "ms",
            "-",
            None,
            ratio=False,
        ),
        Row(
            f"sevpipe.incidents bytes/alert, storm ({m})",
            one_bytes,
            many_bytes,
            "B",
            "<= 2,048 B",
            max(one_bytes, many_bytes) <= TARGET_BYTES_PER_ALERT,
            ratio=False,
        ),
        Row(
            f"{process} peak RSS, {in_one:,} alerts in 1 incident ({m})",
            one_s.rss_mb,
            many_s.rss_mb,
            "MB",
            "< 300 MB at 100k in 1",
            one_s.rss_mb < TARGET_RSS_MB if in_one >= RSS_ALERTS else None,
            ratio=False,
        ),
    ]


# -- 3. latency at a steady offered load -------------------------------------------------------


def _webhook(i: int, groups: int, run: str) -> tuple[bytes, list[str]]:
    """Webhook ``i``: 10 new alerts, of group ``i % groups`` (0: a group of its own)."""
    g = i % groups if groups else i
    fps = [f"{run}{i:08x}{j:02x}" for j in range(10)]
    body = {
        "version": "4",
        "status": "firing",
        "receiver": "bench",
        "groupKey": f'{{}}:{{run="{run}",g="{g}"}}',
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "Latency", "n": str(i), "pod": f"p{j}", "impact": "minor"},
                "annotations": {"summary": "latency bench"},
                "startsAt": "2026-01-01T00:00:00Z",
                "fingerprint": fps[j],
            }
            for j in range(10)
        ],
    }
    return orjson.dumps(body), fps


async def _post_steady(
    url: str, rate: float, seconds: float, groups: int = 0, run: str = "0"
) -> dict[str, float]:
    """10-alert webhooks at ``rate`` alerts/s; returns fingerprint -> the time of its 200."""
    acked: dict[str, float] = {}
    interval = 10 / rate
    async with aiohttp.ClientSession() as session:

        async def one(body: bytes, fps: list[str]) -> None:
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                await resp.read()
                if resp.status == 200:
                    now = time.time()
                    acked.update(dict.fromkeys(fps, now))

        tasks = []
        start = time.perf_counter()
        i = 0
        while time.perf_counter() - start < seconds:
            tasks.append(asyncio.create_task(one(*_webhook(i, groups, run))))
            i += 1
            await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
        await asyncio.gather(*tasks)
    return acked


def steady(args: argparse.Namespace, workdir: Path, groups: int) -> Fold:
    server = SevpipeRun(workdir / f"latency-{groups}")
    try:
        start = time.time()
        url = f"{server.base_url}/api/v1/alerts"
        acked = asyncio.run(_post_steady(url, args.rate, args.seconds, groups, f"{groups:x}g"))
        server.watcher.wait_for(list(acked), CATCH_UP)
    finally:
        server.stop()
    fold = fold_of([(t, [fp]) for fp, t in acked.items()], server.watcher.seen, start)
    lat = fold.latencies_ms
    print(
        f"  [{_label(groups) if groups else '1 group/webhook'}] 200 -> incident change at"
        f" {args.rate:,.0f} alerts/s: p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms"
        f" ({fold.folded:,} of {fold.acked:,} alerts folded)",
        flush=True,
    )
    return fold


# -- the run -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--alerts", type=int, default=200_000, help="alerts in the backtest log")
    p.add_argument(
        "--groups",
        type=group_counts,
        default=[5000, 1],
        help="backtest group counts, each measured in turn (default 5000,1); 1: one group",
    )
    p.add_argument("--storm-alerts", type=int, default=100_000, help="alerts of the storm")
    p.add_argument("--storm-groups", type=int, default=200, help="the storm's many groups")
    p.add_argument("--rate", type=float, default=1000.0, help="offered alerts/s for latency")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of steady load")
    p.add_argument("--skip", action="append", default=[], choices=("backtest", "storm", "steady"))
    p.add_argument(
        "--role",
        choices=("bench", "backtest", "backtest-rss"),
        default="bench",
        help=argparse.SUPPRESS,
    )
    p.add_argument("--db", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "backtest":
        print(json.dumps(asyncio.run(_throughput(Path(args.db)))))
        return 0
    if args.role == "backtest-rss":
        print(json.dumps(asyncio.run(_backtest_only(Path(args.db)))))
        return 0
    one_only = args.groups == [1]
    storm_groups = [1] if one_only else [1, args.storm_groups]
    steady_groups = [1] if one_only else [1, 0]
    rows: list[Row] = []
    many = _many(args.groups)
    with tempfile.TemporaryDirectory(prefix="sevpipe-bench-") as tmp:
        workdir = Path(tmp)
        if "backtest" not in args.skip:
            print("1. backtest")
            bt = run_backtests(args, workdir)
            if 1 in bt and many is not None:
                one, other = bt[1], bt[many]
                rows.append(
                    Row(
                        f"backtest() fold rate ({_label(many)})",
                        one["backtest"],
                        other["backtest"],
                        "alerts/s",
                        ">= 50,000; 1/many >= 0.80",
                        min(one["backtest"], other["backtest"]) >= TARGET_BACKTEST
                        and one["backtest"] / other["backtest"] >= TARGET_RATIO,
                    )
                )
                rows.append(
                    Row(
                        f"  one simulation, live batches ({_label(many)})",
                        one["fold"],
                        other["fold"],
                        "alerts/s",
                        "-",
                        None,
                    )
                )
                rows.append(
                    Row(
                        f"  read+parse baseline ({_label(many)})",
                        one["read"],
                        other["read"],
                        "alerts/s",
                        "-",
                        None,
                    )
                )
                rows.append(
                    Row(
                        f"backtest peak RSS ({args.alerts:,} alerts)",
                        one["rss_mb"],
                        other["rss_mb"],
                        "MB",
                        "-",
                        None,
                        ratio=False,
                    )
                )
            rss = backtest_rss(RSS_ALERTS, workdir)
            rows.append(
                Row(
                    f"backtest() peak RSS, {rss['alerts']:,.0f} alerts in 1 incident",
                    rss["rss_mb"],
                    math.nan,
                    "MB",
                    "< 300 MB at 100k in 1",
                    rss["rss_mb"] < TARGET_RSS_MB,
                    ratio=False,
                )
            )
        if "storm" not in args.skip:
            print(
                f"2. storm: {args.storm_alerts:,} alerts as {STORM_PER_WEBHOOK}-alert webhooks"
                f" from {STORM_SENDERS} senders through `sevpipe run`"
            )
            storms = {g: storm(args, workdir, g) for g in storm_groups}
            if len(storms) == 2:
                rows += storm_rows(storms, args.storm_groups, "sevpipe run")
        if "steady" not in args.skip:
            print(f"3. steady load: {args.rate:,.0f} alerts/s for {args.seconds:g} s")
            folds = {g: steady(args, workdir, g) for g in steady_groups}
            if len(folds) == 2:
                one_p99 = pct(folds[1].latencies_ms, 0.99)
                many_p99 = pct(folds[0].latencies_ms, 0.99)
                rows.append(
                    Row(
                        f"p99 200 -> change at {args.rate:,.0f}/s (1 group/webhook)",
                        one_p99,
                        many_p99,
                        "ms",
                        "<= 1,000 ms",
                        max(one_p99, many_p99) <= TARGET_P99_MS,
                        ratio=False,
                    )
                )
    if rows:
        print_table(rows, many_label="many")
    return 0 if all(not math.isnan(r.one) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
