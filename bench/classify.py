"""Classifier benchmarks (not a test).

1. Backtest throughput: alerts/s through the policy, replayed from an embedded log, against
   a baseline that reads and parses the same events without classifying (same run).
2. Latency from a webhook's 200 to its ``incident.opened`` event in the log, p50/p99, with
   ``sevpipe run`` on the embedded default at a steady offered load (default 1,000 alerts/s).

    .venv/bin/python bench/classify.py [--alerts 200000] [--rate 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import orjson

from classifier.backtest import Simulation, alert_inputs
from classifier.classify import classify_alert
from classifier.policy import default_policy
from eventlog import EmbeddedLog
from schemas import TOPIC_ALERTS, TOPIC_INCIDENTS, Envelope, Webhook, event_type_for, normalise

IMPACTS = ["outage", "error_rate", "performance", "minor", "feature_degraded", "", "", ""]


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


async def throughput(path: Path) -> tuple[float, float, float, int]:
    """alerts/s of: reading only; reading + policy; reading + policy + incident lifecycle."""
    policy = default_policy()
    async with EmbeddedLog(path, create=False) as log:
        t0 = time.perf_counter()
        n = 0
        async for _ in alert_inputs(log, None, None):
            n += 1
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        async for item in alert_inputs(log, None, None):
            classify_alert(item.data, policy)
        classify_s = time.perf_counter() - t0
        sim = Simulation(policy)
        t0 = time.perf_counter()
        async for item in alert_inputs(log, None, None):
            sim.feed(item)
        backtest_s = time.perf_counter() - t0
    return n / read_s, n / classify_s, n / backtest_s, len(sim.incidents)


def _webhook(i: int) -> bytes:
    body = {
        "version": "4",
        "status": "firing",
        "receiver": "bench",
        "groupKey": f'{{}}:{{run="{os.getpid()}",n="{i}"}}',
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "Latency", "n": str(i), "pod": f"p{j}", "impact": "minor"},
                "annotations": {"summary": "latency bench"},
                "startsAt": "2026-01-01T00:00:00Z",
            }
            for j in range(10)
        ],
    }
    return orjson.dumps(body)


async def _post_steady(url: str, rate: float, seconds: float) -> dict[str, float]:
    """10-alert webhooks, each a new group, at ``rate`` alerts/s; returns groupKey -> 200 time."""
    acked: dict[str, float] = {}
    interval = 10 / rate
    async with aiohttp.ClientSession() as session:

        async def one(i: int, body: bytes) -> None:
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                await resp.read()
                if resp.status == 200:
                    acked[f'{{}}:{{run="{os.getpid()}",n="{i}"}}'] = time.time()

        tasks = []
        start = time.perf_counter()
        i = 0
        while time.perf_counter() - start < seconds:
            tasks.append(asyncio.create_task(one(i, _webhook(i))))
            i += 1
            await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
        await asyncio.gather(*tasks)
    return acked


async def _watch_incidents(
    db: Path, acked: dict[str, float], posted: asyncio.Event, caught_up: asyncio.Event
) -> dict[str, float]:
    """Poll the log from this process (the embedded log wakes only in-process readers)."""
    seen: dict[str, float] = {}
    async with EmbeddedLog(db, create=False) as log:
        offset = 1
        while not caught_up.is_set():
            async for record in log.read([TOPIC_INCIDENTS], from_offset=offset):
                offset = record.offset + 1
                if record.envelope.type == "incident.opened":
                    key = record.envelope.data["incident"]["key"]
                    seen.setdefault(key, time.time())
            if posted.is_set() and not set(acked) - set(seen):
                caught_up.set()
            await asyncio.sleep(0.001)
    return seen


async def _start_server(data_dir: Path) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sevpipe",
        "run",
        "--data-dir",
        str(data_dir),
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    while True:
        line = (await proc.stdout.readline()).decode()
        if not line:
            raise RuntimeError("sevpipe run exited before listening")
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return proc, match.group(1) + "/api/v1/alerts"


async def latency(rate: float, seconds: float, workdir: Path) -> list[float]:
    data_dir = workdir / "latency"
    proc, url = await _start_server(data_dir)
    try:
        acked: dict[str, float] = {}
        posted, caught_up = asyncio.Event(), asyncio.Event()
        watcher = asyncio.create_task(
            _watch_incidents(data_dir / "events.db", acked, posted, caught_up)
        )
        acked.update(await _post_steady(url, rate, seconds))
        posted.set()
        try:
            await asyncio.wait_for(caught_up.wait(), 10)
        except TimeoutError:
            caught_up.set()
        seen = await watcher
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    missing = len(set(acked) - set(seen))
    if missing:
        print(f"warning: {missing} acknowledged groups had no incident.opened within 10 s")
    return [(seen[k] - t) * 1000 for k, t in acked.items() if k in seen]


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--alerts", type=int, default=200_000)
    p.add_argument("--groups", type=int, default=5_000)
    p.add_argument("--rate", type=float, default=1000.0, help="offered alerts/s for latency")
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sevpipe-bench-") as tmp:
        workdir = Path(tmp)
        db = workdir / "backtest" / "events.db"
        print(f"filling a log with {args.alerts:,} alert events over {args.groups:,} groups ...")
        await fill_log(db, args.alerts, args.groups)
        read_rate, classify_rate, backtest_rate, incidents = await throughput(db)
        print(f"baseline  read+parse only            {read_rate:>10,.0f} alerts/s")
        print(
            f"policy    read+classify              {classify_rate:>10,.0f} alerts/s"
            f"  ratio {classify_rate / read_rate:.2f}"
        )
        print(
            f"backtest  read+classify+lifecycle    {backtest_rate:>10,.0f} alerts/s"
            f"  ratio {backtest_rate / read_rate:.2f} ({incidents:,} incidents)"
        )
        lat = await latency(args.rate, args.seconds, workdir)
        if lat:
            print(
                f"latency   200 -> incident.opened at {args.rate:,.0f} alerts/s: "
                f"p50 {statistics.median(lat):.1f} ms, p99 {_pct(lat, 0.99):.1f} ms "
                f"({len(lat)} incidents)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
