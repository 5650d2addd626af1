"""The production pipeline (not a test): ``sevpipe ingest`` + ``sevpipe classify`` on Apache Kafka,
PostgreSQL and Redis.

1. Ingest throughput: alerts/s answered 200 by ``sevpipe ingest`` (Kafka, acks=all) while
   ``sevpipe classify`` consumes behind it, against bench/ingest.py's no-storage baseline
   server under the same load generator, in the same run; the ratio is the figure to watch.
   Folding meanwhile, from the incidents topic read raw: the share of the alerts answered 200
   that were in an incident event when the load ended (target >= 95 %), the fold rate, each
   alert's 200 -> its incident change, bytes per alert on the topic, and the classifier
   process's peak RSS (VmHWM). Afterwards the alerts topic is counted: every alert answered
   200 must be in it.
2. Latency from an alert's 200 to the incident event carrying it, at a steady offered load
   (default 1,000 alerts/s, 10-alert webhooks), p50 and p99.
3. The storm: ``--storm-alerts`` (100,000) alerts as 100-alert webhooks from 4 concurrent
   senders, all in one group, then over ``--storm-groups`` (200): fold rate, bytes per alert,
   and the classifier's peak RSS with all of them in one incident (target < 300 MB).

Both parts run with each ``--groups`` count in turn (default 0,1: every webhook a group of
its own, then every alert in ONE Alertmanager group) and print the one-group figure beside
the many-group one.

The servers come from ``SEVPIPE_KAFKA_BOOTSTRAP``, ``SEVPIPE_POSTGRES_DSN`` and
``SEVPIPE_REDIS_URL``; each part gets a topic prefix and a database of its own, removed after.

    scripts/with-services .venv/bin/python -m bench.pipeline            # 10 s per side
    scripts/with-services .venv/bin/python -m bench.pipeline --quick    # ~2 s smoke run
    scripts/with-services .venv/bin/python -m bench.pipeline --groups 1 # one group only
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench import ingest as ingest_bench
from bench.classify import RSS_ALERTS, Storm, _post_steady, storm_load, storm_rows
from bench.fold import (
    TARGET_BYTES_PER_ALERT,
    Fold,
    KafkaWatcher,
    Row,
    fold_of,
    pct,
    peak_rss_mb,
    print_table,
)
from schemas import TOPIC_ALERTS

TARGET_ALERTS_PER_S = 10_000
TARGET_P99_MS = 100.0
TARGET_FOLDED = 0.95  # of the alerts answered 200, folded when the load ends (issue 7)
TARGET_RSS_MB = 300.0
READY_TIMEOUT = 60.0
CATCH_UP_TIMEOUT = 30.0
_LAG = re.compile(r'^sevpipe_consumer_lag\{[^}]*topic="sevpipe\.alerts"', re.M)
_CLASSIFIED = re.compile(r"^sevpipe_classifier_alerts_total (\S+)$", re.M)
SERVICES = ("SEVPIPE_KAFKA_BOOTSTRAP", "SEVPIPE_POSTGRES_DSN", "SEVPIPE_REDIS_URL")


# -- one isolated install on the shared servers ---------------------------------------------


class Install:
    """A topic prefix and a fresh database: what one pipeline of this run works on."""

    def __init__(self, label: str) -> None:
        token = uuid.uuid4().hex[:10]
        self.prefix = f"sevpipe-bench-{label}-{token}."
        self.database = f"sevpipe_bench_{label}_{token}"
        self.bootstrap = os.environ["SEVPIPE_KAFKA_BOOTSTRAP"]
        self.admin_dsn = os.environ["SEVPIPE_POSTGRES_DSN"]
        dsn = urlsplit(self.admin_dsn)._replace(path=f"/{self.database}").geturl()
        self.env = {
            "SEVPIPE_KAFKA_BOOTSTRAP": self.bootstrap,
            "SEVPIPE_KAFKA_TOPIC_PREFIX": self.prefix,
            "SEVPIPE_POSTGRES_DSN": dsn,
            "SEVPIPE_REDIS_URL": os.environ["SEVPIPE_REDIS_URL"],
            "SEVPIPE_LOG_LEVEL": "warning",
        }

    async def _sql(self, statement: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def create(self) -> None:
        await self._sql(f'CREATE DATABASE "{self.database}"')

    async def remove(self) -> None:
        await self._sql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if t.startswith(self.prefix)]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()

    async def count_alerts(self) -> int:
        """Events on the alerts topic: the sum of its partitions' end offsets."""
        name = self.prefix + TOPIC_ALERTS
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([name])
        finally:
            await admin.close()
        tps = [TopicPartition(name, p["partition"]) for p in described["partitions"]]
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await consumer.start()
        try:
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        return int(sum(ends.values()))


class Process(ingest_bench.Server):
    """A ``sevpipe`` subprocess with the install's settings (the baseline's parent class
    strips every ``SEVPIPE_*`` variable)."""

    def __init__(self, command: str, install: Install, workdir: Path, name: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEVPIPE_")}
        env.update(install.env)
        argv = [sys.executable, "-m", "sevpipe", command, "--port", "0"]
        argv += ["--data-dir", str(workdir / name)]
        self.out = workdir / f"{name}.out"
        self.err = workdir / f"{name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        self.wall0 = time.perf_counter()


@contextlib.contextmanager
def pipeline(
    install: Install, workdir: Path, *, classify: bool = True
) -> Iterator[tuple[Process, Process | None]]:
    """``sevpipe ingest`` and ``sevpipe classify``, stopped with SIGTERM afterwards."""
    uvloop.run(install.create())
    procs: list[Process] = []
    try:
        procs.append(Process("ingest", install, workdir, f"ingest-{install.database}"))
        if classify:
            procs.append(Process("classify", install, workdir, f"classify-{install.database}"))
        yield procs[0], procs[1] if classify else None
    finally:
        for proc in procs:
            if proc.proc.poll() is None:
                proc.stop(signal.SIGTERM)
        uvloop.run(install.remove())


def _get(base_url: str, path: str) -> str:
    host, port = base_url.split("//", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def _classified(classify: Process) -> float:
    match = _CLASSIFIED.search(_get(classify.wait_url(), "/metrics"))
    return float(match.group(1)) if match else float("nan")


def wait_assigned(classify: Process) -> None:
    """Until the classifier holds every partition of the alerts topic (its lag gauges)."""
    base = classify.wait_url()
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if len(_LAG.findall(_get(base, "/metrics"))) == 3:
                return
        time.sleep(0.1)
    raise RuntimeError(f"classifier not assigned: {classify.err.read_text()[-2000:]}")


# -- 1. ingest throughput and folding ---------------------------------------------------------


def measure_baseline(args: argparse.Namespace, workdir: Path) -> ingest_bench.Result:
    base = ingest_bench.Server([*ingest_bench.SELF, "--role", "baseline"], workdir, "baseline")
    try:
        baseline = ingest_bench._measure("baseline", base, args).result
    finally:
        base.stop(signal.SIGTERM)
    print(baseline.line(), flush=True)
    return baseline


@dataclass
class Run:
    """``sevpipe ingest`` + ``sevpipe classify`` under full load with ``groups`` groups."""

    groups: int
    result: ingest_bench.Result
    ratio: float  # against the baseline
    fold: Fold | None  # None with --ingest-only
    classify_rss_mb: float
    durable: bool


def throughput(
    args: argparse.Namespace, workdir: Path, groups: int, baseline: ingest_bench.Result
) -> Run:
    install = Install(f"ingest{groups}")
    label = ingest_bench.groups_label(groups)
    with pipeline(install, workdir, classify=not args.ingest_only) as (ingest, classify):
        watcher = None
        if classify is not None:
            wait_assigned(classify)
            watcher = KafkaWatcher(install.bootstrap, install.prefix).start()
            cpu0, wall0 = classify.cpu_seconds(), time.perf_counter()
        try:
            measured = ingest_bench._measure("sevpipe", ingest, args, groups)
            sevpipe = measured.result
            print(f"{sevpipe.line()}  [{label}]", flush=True)
            fold, rss = None, math.nan
            if classify is not None and watcher is not None:
                cpu = (classify.cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
                done = _classified(classify)
                print(
                    f"classify  cpu {cpu:4.0%} meanwhile; {done:,.0f} of"
                    f" {sevpipe.ok_alerts_total:,} alerts classified when the load ended"
                )
                watcher.wait_for([fp for _, fps in measured.acks for fp in fps], args.catch_up)
                rss = peak_rss_mb(classify.proc.pid)
        finally:
            seen = watcher.stop() if watcher is not None else None
        if seen is not None:
            fold = fold_of(measured.acks, seen, measured.start_at)
            print(f"{fold.line()}; classifier peak RSS {rss:,.0f} MB", flush=True)
        logged = uvloop.run(install.count_alerts())
    durable = logged >= sevpipe.ok_alerts_total and sevpipe.errors == 0
    print(
        f"durability: {sevpipe.ok_alerts_total:,} alerts answered 200, {logged:,} events on"
        f" the alerts topic: {'OK' if durable else 'MISMATCH'}"
    )
    ratio = sevpipe.alerts_per_s / baseline.alerts_per_s
    print(f"ratio sevpipe/baseline: {ratio:.2f}", flush=True)
    return Run(groups, sevpipe, ratio, fold, rss, durable)


# -- 2. latency to the incident change -------------------------------------------------------


def latency(args: argparse.Namespace, workdir: Path, groups: int) -> list[float]:
    """An alert's 200 -> the incident event carrying it, at a steady offered load."""
    install = Install(f"latency{groups}")
    with pipeline(install, workdir) as (ingest, classify):
        assert classify is not None
        wait_assigned(classify)
        watcher = KafkaWatcher(install.bootstrap, install.prefix).start()
        try:
            url = ingest.wait_url() + "/api/v1/alerts"
            start = time.time()
            run = f"{groups:x}g"
            acked = uvloop.run(_post_steady(url, args.rate, args.seconds, groups, run))
            watcher.wait_for(list(acked), CATCH_UP_TIMEOUT)
        finally:
            seen = watcher.stop()
    fold = fold_of([(t, [fp]) for fp, t in acked.items()], seen, start)
    if fold.folded < fold.acked:
        print(f"warning: {fold.acked - fold.folded} acknowledged alerts not folded in time")
    lat = fold.latencies_ms
    print(
        f"latency   200 -> incident change at {args.rate:,.0f} alerts/s"
        f" [{ingest_bench.groups_label(groups)}]: p50 {pct(lat, 0.5):.1f} ms,"
        f" p99 {pct(lat, 0.99):.1f} ms ({fold.folded:,} alerts)",
        flush=True,
    )
    return lat


# -- 3. the storm ---------------------------------------------------------------------------


def storm(args: argparse.Namespace, workdir: Path, groups: int) -> Storm:
    """``--storm-alerts`` alerts as 100-alert webhooks from concurrent senders, in ``groups``
    groups; the classifier's peak RSS once they are folded."""
    install = Install(f"storm{groups}")
    with pipeline(install, workdir) as (ingest, classify):
        assert classify is not None
        wait_assigned(classify)
        watcher = KafkaWatcher(install.bootstrap, install.prefix).start()
        try:
            base = ingest.wait_url()
            return storm_load(base, watcher, classify.proc.pid, args.storm_alerts, groups)
        finally:
            watcher.stop()


# -- the run --------------------------------------------------------------------------------


def _table(
    runs: dict[int, Run], lat: dict[int, list[float]], rate: float, storms: list[Row]
) -> None:
    if 1 not in runs or len(runs) < 2:
        if storms:
            print_table(storms, many_label="many")
        return
    many = next(g for g in runs if g != 1)
    one_r, many_r = runs[1], runs[many]
    rows = [
        Row(
            "ingest alerts/s (200s)",
            one_r.result.alerts_per_s,
            many_r.result.alerts_per_s,
            "alerts/s",
            f">= {TARGET_ALERTS_PER_S:,}",
            min(one_r.result.alerts_per_s, many_r.result.alerts_per_s) >= TARGET_ALERTS_PER_S,
        )
    ]
    if one_r.fold is not None and many_r.fold is not None:
        one_f, many_f = one_r.fold, many_r.fold
        rows += [
            Row(
                "folded when the load ended",
                100 * one_f.share_at_load_end,
                100 * many_f.share_at_load_end,
                "%",
                ">= 95 %",
                min(one_f.share_at_load_end, many_f.share_at_load_end) >= TARGET_FOLDED,
                ratio=False,
            ),
            Row("fold rate", one_f.fold_rate, many_f.fold_rate, "alerts/s", "-", None),
            Row(
                "p99 200 -> incident change, full load",
                pct(one_f.latencies_ms, 0.99),
                pct(many_f.latencies_ms, 0.99),
                "ms",
                "-",
                None,
                ratio=False,
            ),
            Row(
                "sevpipe.incidents bytes per alert",
                one_f.bytes_per_alert,
                many_f.bytes_per_alert,
                "B",
                "<= 2,048 B",
                max(one_f.bytes_per_alert, many_f.bytes_per_alert) <= TARGET_BYTES_PER_ALERT,
                ratio=False,
            ),
            Row(
                f"classifier peak RSS ({one_f.folded:,} alerts in 1 incident)",
                one_r.classify_rss_mb,
                many_r.classify_rss_mb,
                "MB",
                "< 300 MB at 100k in 1",
                one_r.classify_rss_mb < TARGET_RSS_MB if one_f.folded >= RSS_ALERTS else None,
                ratio=False,
            ),
        ]
    if 1 in lat and many in lat:
        rows.append(
            Row(
                f"p99 200 -> incident change at {rate:,.0f}/s",
                pct(lat[1], 0.99),
                pct(lat[many], 0.99),
                "ms",
                f"<= {TARGET_P99_MS:.0f} ms",
                max(pct(lat[1], 0.99), pct(lat[many], 0.99)) <= TARGET_P99_MS,
                ratio=False,
            )
        )
    print_table(rows + storms, many_label=ingest_bench.groups_label(many))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per side")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight in total")
    p.add_argument("--workers", type=int, default=1, help="load generator processes")
    p.add_argument(
        "--groups",
        type=ingest_bench.group_counts,
        default=[0, 1],
        help="alert groups the load cycles through, measured in turn (default 0,1: each"
        " webhook a group of its own, then every alert in one group); 1: one group only",
    )
    p.add_argument("--client", choices=("raw", "aiohttp"), default="raw", help="HTTP client")
    p.add_argument("--rate", type=float, default=1000.0, help="alerts/s offered for latency")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of latency load")
    p.add_argument(
        "--catch-up",
        type=float,
        default=60.0,
        help="seconds to wait, after the load, for every alert to be folded",
    )
    p.add_argument(
        "--ingest-only", action="store_true", help="no classifier during the throughput part"
    )
    p.add_argument(
        "--storm-alerts",
        type=int,
        default=100_000,
        help="alerts of the storm part (100-alert webhooks; 0: no storm)",
    )
    p.add_argument("--storm-groups", type=int, default=200, help="the storm's many groups")
    p.add_argument("--quick", action="store_true", help="~2 s per part")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.seconds = 2.0, 0.3, 2.0
        args.storm_alerts = min(args.storm_alerts, 10_000)
    missing = [name for name in SERVICES if not os.environ.get(name)]
    if missing:
        print(f"set {', '.join(missing)} (scripts/with-services does)", file=sys.stderr)
        return 2
    print(
        f"{args.duration:g} s per side (+{args.warmup:g} s warm-up), {args.concurrency} in flight"
        f" over {args.workers} load process(es), {ingest_bench.ALERTS_PER_WEBHOOK} alerts per"
        f" webhook ({', then '.join(ingest_bench.groups_label(g) for g in args.groups)});"
        f" `sevpipe ingest`{'' if args.ingest_only else ' + `sevpipe classify`'} on Kafka"
        f" {os.environ['SEVPIPE_KAFKA_BOOTSTRAP']}, PostgreSQL, Redis"
    )
    runs: dict[int, Run] = {}
    lat: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="sevpipe-bench-pipeline-") as tmp:
        workdir = Path(tmp)
        baseline = measure_baseline(args, workdir)
        for groups in args.groups:
            runs[groups] = throughput(args, workdir, groups, baseline)
        storm_table: list[Row] = []
        if not args.ingest_only:
            for groups in args.groups:
                lat[groups] = latency(args, workdir, groups)
            if args.storm_alerts:
                print(
                    f"storm: {args.storm_alerts:,} alerts as 100-alert webhooks from 4 senders,"
                    f" in 1 group then over {args.storm_groups}"
                )
                storms = {g: storm(args, workdir, g) for g in (1, args.storm_groups)}
                storm_table = storm_rows(storms, args.storm_groups, "classify")
    first = runs[args.groups[0]]
    p99 = pct(lat.get(args.groups[0], []), 0.99)
    print(
        f"summary ({ingest_bench.groups_label(first.groups)}): ingest"
        f" {first.result.alerts_per_s:,.0f} alerts/s (target >= {TARGET_ALERTS_PER_S:,}:"
        f" {'met' if first.result.alerts_per_s >= TARGET_ALERTS_PER_S else 'MISSED'}),"
        f" ratio {first.ratio:.2f}; p99 {p99:.1f} ms (target <= {TARGET_P99_MS:.0f} ms:"
        f" {'met' if p99 <= TARGET_P99_MS else 'MISSED'})"
    )
    _table(runs, lat, args.rate, storm_table)
    durable = all(r.durable for r in runs.values())
    return 0 if durable and (args.ingest_only or all(lat.values())) else 1


if __name__ == "__main__":
    sys.exit(main())
