"""The production pipeline (not a test): ``sevpipe ingest`` + ``sevpipe classify`` on Apache Kafka,
PostgreSQL and Redis.

1. Ingest throughput: alerts/s answered 200 by ``sevpipe ingest`` (Kafka, acks=all) while
   ``sevpipe classify`` consumes behind it, against bench/ingest.py's no-storage baseline
   server under the same load generator, in the same run; the ratio is the figure to watch.
   Afterwards the alerts topic is counted: every alert answered 200 must be in it.
2. Latency from a webhook's 200 to its ``incident.opened`` event on the incidents topic (read
   through a KafkaLog consumer group), at a steady offered load (default 1,000 alerts/s,
   10-alert webhooks, each a new incident), p50 and p99.

The servers come from ``SEVPIPE_KAFKA_BOOTSTRAP``, ``SEVPIPE_POSTGRES_DSN`` and
``SEVPIPE_REDIS_URL``; each part gets a topic prefix and a database of its own, removed after.

    scripts/with-services .venv/bin/python -m bench.pipeline            # 10 s per side
    scripts/with-services .venv/bin/python -m bench.pipeline --quick    # ~2 s smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench import ingest as ingest_bench
from bench.classify import _post_steady
from eventlog.kafka import KafkaLog
from schemas import TOPIC_ALERTS, TOPIC_INCIDENTS

TARGET_ALERTS_PER_S = 10_000
TARGET_P99_MS = 100.0
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


# -- 1. ingest throughput -------------------------------------------------------------------


def throughput(args: argparse.Namespace, workdir: Path) -> tuple[float, float, bool]:
    base = ingest_bench.Server(
        [sys.executable, ingest_bench.__file__, "--role", "baseline"], workdir, "baseline"
    )
    try:
        baseline = ingest_bench._measure("baseline", base, args)
    finally:
        base.stop(signal.SIGTERM)
    print(baseline.line(), flush=True)
    install = Install("ingest")
    with pipeline(install, workdir, classify=not args.ingest_only) as (ingest, classify):
        if classify is not None:
            wait_assigned(classify)
            cpu0, wall0 = classify.cpu_seconds(), time.perf_counter()
        sevpipe = ingest_bench._measure("sevpipe", ingest, args)
        print(sevpipe.line(), flush=True)
        if classify is not None:
            cpu = (classify.cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
            done = _classified(classify)
            print(
                f"classify  cpu {cpu:4.0%} meanwhile; {done:,.0f} of"
                f" {sevpipe.ok_alerts_total:,} alerts classified when the load ended"
            )
        logged = uvloop.run(install.count_alerts())
    durable = logged >= sevpipe.ok_alerts_total and sevpipe.errors == 0
    print(
        f"durability: {sevpipe.ok_alerts_total:,} alerts answered 200, {logged:,} events on"
        f" the alerts topic: {'OK' if durable else 'MISMATCH'}"
    )
    ratio = sevpipe.alerts_per_s / baseline.alerts_per_s
    print(f"ratio sevpipe/baseline: {ratio:.2f}", flush=True)
    return sevpipe.alerts_per_s, ratio, durable


# -- 2. latency to incident.opened ----------------------------------------------------------


@dataclass
class Watch:
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # assigned and positioned
    seen: dict[str, float] = field(default_factory=dict)  # key -> when it opened
    wanted: set[str] | None = None  # keys acknowledged, once the load is over
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    stop: bool = False


async def _watch(install: Install, watch: Watch) -> None:
    """Consume the incidents topic in a group of its own; the time each key first opened."""
    async with KafkaLog(install.bootstrap, topic_prefix=install.prefix) as log:
        sub = log.subscribe([TOPIC_INCIDENTS], f"{install.prefix}bench-watch")
        try:
            while not watch.stop:
                records = await sub.fetch(1000, max_wait=0.05)
                now = time.time()
                if len(sub.lag()) == 3:
                    watch.ready.set()
                for record in records:
                    if record.envelope.type == "incident.opened":
                        watch.seen.setdefault(record.envelope.data["incident"]["key"], now)
                if watch.wanted is not None and watch.wanted <= watch.seen.keys():
                    watch.caught_up.set()
        finally:
            await sub.close()


async def _latency(install: Install, url: str, rate: float, seconds: float) -> list[float]:
    watch = Watch()
    watcher = asyncio.create_task(_watch(install, watch))
    try:
        await asyncio.wait_for(watch.ready.wait(), READY_TIMEOUT)
        acked = await _post_steady(url, rate, seconds)
        watch.wanted = set(acked)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watch.caught_up.wait(), CATCH_UP_TIMEOUT)
    finally:
        watch.stop = True
        await watcher
    seen = watch.seen
    missing = len(set(acked) - set(seen))
    if missing:
        print(f"warning: {missing} acknowledged webhooks had no incident.opened in time")
    return [(seen[k] - t) * 1000 for k, t in acked.items() if k in seen]


def latency(args: argparse.Namespace, workdir: Path) -> list[float]:
    install = Install("latency")
    with pipeline(install, workdir) as (ingest, classify):
        assert classify is not None
        wait_assigned(classify)
        url = ingest.wait_url() + "/api/v1/alerts"
        return uvloop.run(_latency(install, url, args.rate, args.seconds))


# -- the run --------------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per side")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight in total")
    p.add_argument("--workers", type=int, default=1, help="load generator processes")
    p.add_argument("--groups", type=int, default=0, help="alert groups (0: one per webhook)")
    p.add_argument("--client", choices=("raw", "aiohttp"), default="raw", help="HTTP client")
    p.add_argument("--rate", type=float, default=1000.0, help="alerts/s offered for latency")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of latency load")
    p.add_argument(
        "--ingest-only", action="store_true", help="no classifier during the throughput part"
    )
    p.add_argument("--quick", action="store_true", help="~2 s per part")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.seconds = 2.0, 0.3, 2.0
    missing = [name for name in SERVICES if not os.environ.get(name)]
    if missing:
        print(f"set {', '.join(missing)} (scripts/with-services does)", file=sys.stderr)
        return 2
    print(
        f"{args.duration:g} s per side (+{args.warmup:g} s warm-up), {args.concurrency} in flight"
        f" over {args.workers} load process(es), {ingest_bench.ALERTS_PER_WEBHOOK} alerts per"
        f" webhook; `sevpipe ingest`{'' if args.ingest_only else ' + `sevpipe classify`'}"
        " on Kafka"
        f" {os.environ['SEVPIPE_KAFKA_BOOTSTRAP']}, PostgreSQL, Redis"
    )
    with tempfile.TemporaryDirectory(prefix="sevpipe-bench-pipeline-") as tmp:
        workdir = Path(tmp)
        rate, ratio, durable = throughput(args, workdir)
        lat = latency(args, workdir)
    p50, p99 = (statistics.median(lat), _pct(lat, 0.99)) if lat else (float("nan"),) * 2
    print(
        f"latency 200 -> incident.opened at {args.rate:,.0f} alerts/s: p50 {p50:.1f} ms,"
        f" p99 {p99:.1f} ms ({len(lat)} incidents)"
    )
    print(
        f"summary: ingest {rate:,.0f} alerts/s (target >= {TARGET_ALERTS_PER_S:,}:"
        f" {'met' if rate >= TARGET_ALERTS_PER_S else 'MISSED'}), ratio {ratio:.2f};"
        f" p99 {p99:.1f} ms (target <= {TARGET_P99_MS:.0f} ms:"
        f" {'met' if p99 <= TARGET_P99_MS else 'MISSED'})"
    )
    return 0 if durable and lat else 1


if __name__ == "__main__":
    sys.exit(main())
