"""Ingest throughput: ``sevpipe run`` (embedded log, fsync=full) against a no-storage baseline.

Both servers run in their own subprocess on uvloop. The baseline is an aiohttp app that parses
the same bodies with the same pydantic ``Webhook`` model and answers 200 without storing; the
ratio sevpipe/baseline is the figure to watch, since the machine's absolute speed (and whoever
else is using it) moves both sides alike.

The load comes from separate worker processes, each keeping its share of ``--concurrency``
requests in flight on keep-alive connections, with bodies pre-serialised into a template that
gets fresh fingerprints and startsAt per request (nothing is a repeat). After the sevpipe run
the server is killed with SIGKILL and the SQLite log is counted: every alert answered 200
must be in it.

    .venv/bin/python bench/ingest.py            # 10 s per side
    .venv/bin/python bench/ingest.py --quick    # ~2 s smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import orjson
import uvloop
from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

from schemas import TOPIC_ALERTS, AlertEventData, Envelope, Webhook

ALERTS_PER_WEBHOOK = 10
TARGET_RATIO = 0.5
TARGET_ALERTS_PER_S = 20_000
BANNER = re.compile(r"listening on (http://\S+?)[\s(]")
STARTUP_TIMEOUT = 30.0

# -- realistic bodies ------------------------------------------------------------------------

_KINDS = [
    ("KubePodCrashLooping", "critical", "service_failure", "Pod is crash looping."),
    ("KubeDeploymentReplicasMismatch", "warning", "partial_degradation", "Replicas mismatch."),
    ("KubeContainerWaiting", "warning", "performance", "Container has been waiting too long."),
    ("HTTPErrorRateHigh", "critical", "error_rate", "5xx ratio above 5% for 10 minutes."),
]
_NAMESPACES = ["origin-production", "payments", "checkout", "search"]
_SERVICES = ["origin-backend", "origin-frontend", "checkout-api", "search-indexer"]


def _slot(name: str) -> str:
    return f"@@{name}@@"


def _webhook_template(variant: int) -> bytes:
    """A 10-alert body with ``%(name)s`` slots: group ``g``, startsAt ``sN``, fingerprint ``fN``.

    Grouped as Alertmanager's ``group_by: [alertname, namespace, deployment]`` would send it.
    """
    alertname, severity, impact, summary = _KINDS[variant % len(_KINDS)]
    namespace = _NAMESPACES[(variant // len(_KINDS)) % len(_NAMESPACES)]
    service = _SERVICES[variant % len(_SERVICES)]
    deployment = f"{service}-{_slot('g')}"
    group = {"alertname": alertname, "namespace": namespace, "deployment": deployment}
    common = {
        **group,
        "severity": severity,
        "cluster": "prod-eu-west-1",
        "prometheus": "monitoring/k8s",
        "service": service,
        "impact": impact,
    }
    alerts = []
    for i in range(ALERTS_PER_WEBHOOK):
        pod = f"{deployment}-7d9f8c6b5-{i:x}q{i * 7 % 10}z"
        labels = {
            **common,
            "container": service,
            "pod": pod,
            "instance": f"10.42.{variant % 250}.{i + 10}:8080",
            "job": "kube-state-metrics",
            "endpoint": "http",
            "user_impact_pct": str(5 + i * 3),
        }
        alerts.append(
            {
                "status": "firing",
                "labels": labels,
                "annotations": {
                    "summary": summary,
                    "description": f"Pod {namespace}/{pod} ({service}): {summary}",
                    "runbook_url": "https://runbooks.prometheus-operator.dev/runbooks/"
                    f"kubernetes/{alertname.lower()}",
                },
                "startsAt": _slot(f"s{i}"),
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.monitoring:9090/graph?g0.expr="
                f"kube_pod_container_status_restarts_total%7Bnamespace%3D%22{namespace}%22%7D",
                "fingerprint": _slot(f"f{i}"),
            }
        )
    group_key = ", ".join(f'{k}="{v}"' for k, v in group.items())
    body = {
        "receiver": "sevpipe",
        "status": "firing",
        "alerts": alerts,
        "groupLabels": group,
        "commonLabels": common,
        "commonAnnotations": {"summary": summary},
        "externalURL": "http://alertmanager.monitoring:9093",
        "version": "4",
        "groupKey": f'{{}}/{{severity="{severity}"}}:{{{group_key}}}',
        "truncatedAlerts": 0,
    }
    raw = orjson.dumps(body).replace(b"%", b"%%")
    return re.sub(rb"@@(\w+)@@", rb"%(\1)s", raw)


class Bodies:
    """Pre-serialised webhook bodies; ``next()`` fills a template's slots with fresh values.

    Every alert gets a fingerprint and startsAt of its own (nothing is a repeat). Webhooks
    cycle through ``groups`` alert groups (incidents), or each is a group of its own if 0.
    """

    def __init__(self, worker: int, groups: int = 0, variants: int = 16) -> None:
        self.worker = worker
        self.groups = groups
        self.templates = [_webhook_template(v) for v in range(variants)]
        self.seq = 0
        self.base = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=worker)
        self.starts_keys = [b"s%d" % i for i in range(ALERTS_PER_WEBHOOK)]
        self.fingerprint_keys = [b"f%d" % i for i in range(ALERTS_PER_WEBHOOK)]

    def next(self) -> bytes:
        self.seq += 1
        seq = self.seq
        group = seq % self.groups if self.groups else seq
        # startsAt to the millisecond by sequence, plus the alert's index in microseconds
        millis = (self.base + timedelta(milliseconds=seq)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        values = {b"g": b"%02x%06x" % (self.worker, group)}
        for i, (s, f) in enumerate(zip(self.starts_keys, self.fingerprint_keys, strict=True)):
            values[s] = b"%s%03dZ" % (millis.encode(), i)
            values[f] = b"%02x%012x%02x" % (self.worker, seq, i)
        return self.templates[seq % len(self.templates)] % values


# -- the load worker -------------------------------------------------------------------------


class _HttpConnection(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 client: one request at a time, Content-Length bodies."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.buffer[:end]).lower()
        match = re.search(rb"\r\ncontent-length: *(\d+)", head)
        if match is None:
            self.waiter.set_exception(ConnectionError("response without Content-Length"))
            return
        total = end + 4 + int(match.group(1))
        if len(self.buffer) >= total:
            del self.buffer[:total]
            self.waiter.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    async def request(self, data: bytes) -> int:
        assert self.transport is not None
        if self.transport.is_closing():
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


Sender = Callable[[bytes], Awaitable[int]]


async def _raw_sender(host: str, port: int, path: str) -> tuple[Sender, Callable[[], None]]:
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    conn: list[_HttpConnection] = []

    async def connect() -> _HttpConnection:
        _, proto = await asyncio.get_running_loop().create_connection(_HttpConnection, host, port)
        return proto

    async def send(body: bytes) -> int:
        if not conn or conn[0].transport is None or conn[0].transport.is_closing():
            conn[:] = [await connect()]
        return await conn[0].request(
            b"%sContent-Length: %d\r\n\r\n%s" % (head.encode(), len(body), body)
        )

    def close() -> None:
        for c in conn:
            if c.transport is not None:
                c.transport.close()

    return send, close


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    url: str = args.url
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    bodies = Bodies(args.worker, args.groups)
    latencies: list[float] = []
    counts = {"ok": 0, "ok_alerts_total": 0, "errors": 0}
    session: ClientSession | None = None
    if args.client == "aiohttp":
        session = ClientSession(
            connector=TCPConnector(limit=args.concurrency),
            timeout=ClientTimeout(total=30),
            headers={"Content-Type": "application/json"},
        )
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    measure_from = t0 + args.warmup
    stop = measure_from + args.duration
    last_end = measure_from

    async def client() -> None:
        nonlocal last_end
        if session is None:
            send, close = await _raw_sender(host, int(port), path)
        else:
            sess = session

            async def send(body: bytes) -> int:
                async with sess.post(url, data=body) as resp:
                    await resp.read()
                    return resp.status

            def close() -> None:
                pass

        try:
            while (started := time.perf_counter()) < stop:
                body = bodies.next()
                try:
                    status = await send(body)
                except (ClientError, OSError, TimeoutError):
                    status = 0
                ended = time.perf_counter()
                if status == 200:
                    counts["ok_alerts_total"] += ALERTS_PER_WEBHOOK
                if started < measure_from:
                    continue
                if status == 200:
                    counts["ok"] += 1
                    latencies.append(ended - started)
                    last_end = max(last_end, ended)
                else:
                    counts["errors"] += 1
        finally:
            close()

    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    if session is not None:
        await session.close()
    elapsed = last_end - measure_from
    return {
        **counts,
        "elapsed": elapsed,
        "latencies": latencies,
        "cpu": (time.process_time() - cpu0) / max(time.perf_counter() - t0, 1e-9),
    }


# -- the baseline server ---------------------------------------------------------------------


async def _baseline(args: argparse.Namespace) -> None:
    async def handle(request: web.Request) -> web.Response:
        webhook = Webhook.model_validate_json(await request.read())
        return web.Response(
            body=orjson.dumps({"accepted": len(webhook.alerts)}), content_type="application/json"
        )

    app = web.Application(client_max_size=1024 * 1024)
    app.add_routes([web.post("/api/v1/alerts", handle)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    sys.stdout.write(f"baseline listening on http://{host}:{port} (no storage)\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


# -- the orchestration -----------------------------------------------------------------------


@dataclass
class Result:
    name: str
    ok: int
    ok_alerts_total: int
    errors: int
    elapsed: float
    latencies: list[float]
    server_cpu: float
    client_cpu: float

    @property
    def alerts_per_s(self) -> float:
        return self.ok * ALERTS_PER_WEBHOOK / self.elapsed if self.elapsed else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def line(self) -> str:
        return (
            f"{self.name:<9} alerts/s {self.alerts_per_s:>8,.0f}"
            f"  req/s {self.requests_per_s:>7,.0f}"
            f"  p50 {self.percentile_ms(0.50):6.1f} ms  p99 {self.percentile_ms(0.99):6.1f} ms"
            f"  errors {self.errors}  server cpu {self.server_cpu:4.0%}"
            f"  client cpu {self.client_cpu:4.0%}"
        )


class Server:
    """A server subprocess whose stdout/stderr go to files; ready when it prints its URL."""

    def __init__(self, argv: list[str], workdir: Path, name: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEVPIPE_")}
        self.out = workdir / f"{name}.out"
        self.err = workdir / f"{name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        self.wall0 = time.perf_counter()

    def wait_url(self) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            match = BANNER.search(self.out.read_text())
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(f"server did not start: {self.err.read_text()[-2000:]}")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)


def _run_load(url: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sevpipe-bench-load-") as tmp:
        return _run_load_in(url, args, Path(tmp))


def _run_load_in(url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    start_at = time.time() + 1.0  # all workers import and connect, then start together
    procs = []
    outs = [workdir / f"load{w}.json" for w in range(args.workers)]
    for w, out in enumerate(outs):
        share = args.concurrency // args.workers + (w < args.concurrency % args.workers)
        argv = [sys.executable, __file__, "--role", "load", "--url", f"{url}/api/v1/alerts"]
        argv += ["--worker", str(w), "--concurrency", str(share), "--start-at", str(start_at)]
        argv += ["--duration", str(args.duration), "--warmup", str(args.warmup)]
        argv += ["--client", args.client, "--groups", str(args.groups), "--out", str(out)]
        procs.append(subprocess.Popen(argv))
    parts = []
    for p, out in zip(procs, outs, strict=True):
        if p.wait() != 0:
            raise RuntimeError(f"load worker failed with exit code {p.returncode}")
        parts.append(json.loads(out.read_bytes()))
    return {
        "start_at": start_at,
        "ok": sum(p["ok"] for p in parts),
        "ok_alerts_total": sum(p["ok_alerts_total"] for p in parts),
        "errors": sum(p["errors"] for p in parts),
        "elapsed": max(p["elapsed"] for p in parts),
        "latencies": [x for p in parts for x in p["latencies"]],
        "client_cpu": sum(p["cpu"] for p in parts),
    }


def _measure(name: str, server: Server, args: argparse.Namespace) -> Result:
    url = server.wait_url()
    cpu0 = server.cpu_seconds()
    load = _run_load(url, args)
    cpu = (server.cpu_seconds() - cpu0) / (time.time() - load.pop("start_at"))
    return Result(name, server_cpu=cpu, **load)


def _count_log(db: Path) -> tuple[int, int]:
    """Events on the alerts topic, and how many distinct dedup keys; checks a sample's shape."""
    conn = sqlite3.connect(db)
    try:
        count, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT dedup_key) FROM events WHERE topic = ?",
            (TOPIC_ALERTS,),
        ).fetchone()
        for (blob,) in conn.execute(
            "SELECT envelope FROM events WHERE topic = ? ORDER BY random() LIMIT 20",
            (TOPIC_ALERTS,),
        ):
            AlertEventData.model_validate(Envelope.model_validate_json(blob).data)
    finally:
        conn.close()
    return int(count), int(distinct)


def _round(args: argparse.Namespace, workdir: Path, n: int) -> tuple[Result, Result, bool]:
    base = Server([sys.executable, __file__, "--role", "baseline"], workdir, f"baseline{n}")
    try:
        baseline = _measure("baseline", base, args)
    finally:
        base.stop(signal.SIGTERM)
    print(baseline.line(), flush=True)

    data_dir = workdir / f"sevpipe{n}"
    argv = [sys.executable, "-m", "sevpipe", args.command, "--data-dir", str(data_dir)]
    argv += ["--port", "0"]
    sev = Server(argv, workdir, f"sevpipe{n}")
    try:
        sevpipe = _measure("sevpipe", sev, args)
    finally:
        sev.stop(signal.SIGKILL)  # no graceful close: a 200 must already be committed
    print(sevpipe.line(), flush=True)

    logged, distinct = _count_log(data_dir / "events.db")
    durable = logged == distinct == sevpipe.ok_alerts_total
    verdict = "OK" if durable else "MISMATCH"
    print(
        f"durability: {sevpipe.ok_alerts_total:,} alerts answered 200, {logged:,} events "
        f"({distinct:,} distinct keys) in the log after kill -9: {verdict}"
    )
    print(f"ratio sevpipe/baseline: {sevpipe.alerts_per_s / baseline.alerts_per_s:.2f}", flush=True)
    return baseline, sevpipe, durable


def _load_only(args: argparse.Namespace) -> int:
    """``--target URL``: only the load, against a server someone else started (profiling)."""
    load = _run_load(args.target.rstrip("/"), args)
    load.pop("start_at")
    result = Result("target", server_cpu=float("nan"), **load)
    print(result.line())
    return 0 if result.errors == 0 else 1


def _bench(args: argparse.Namespace) -> int:
    if args.target:
        return _load_only(args)
    print(
        f"{args.duration:g} s per side (+{args.warmup:g} s warm-up), {args.concurrency} in flight"
        f" over {args.workers} load process(es), {ALERTS_PER_WEBHOOK} alerts per webhook"
        f" ({'one group each' if not args.groups else f'{args.groups} groups'}),"
        f" client={args.client}; `sevpipe {args.command}` on the embedded log, fsync=full"
    )
    ratios: list[float] = []
    rates: list[float] = []
    all_durable = True
    with tempfile.TemporaryDirectory(prefix="sevpipe-bench-") as tmp:
        for n in range(args.rounds):
            if args.rounds > 1:
                print(f"-- round {n + 1}/{args.rounds}")
            baseline, sevpipe, durable = _round(args, Path(tmp), n)
            all_durable &= durable and sevpipe.errors == 0
            ratios.append(sevpipe.alerts_per_s / baseline.alerts_per_s)
            rates.append(sevpipe.alerts_per_s)
    ratio, rate = statistics.median(ratios), statistics.median(rates)
    print(
        f"summary: sevpipe {rate:,.0f} alerts/s (target >= {TARGET_ALERTS_PER_S:,}:"
        f" {'met' if rate >= TARGET_ALERTS_PER_S else 'MISSED'}), ratio {ratio:.2f}"
        f" (target >= {TARGET_RATIO:.2f}: {'met' if ratio >= TARGET_RATIO else 'MISSED'})"
        + (f", median of {args.rounds} rounds" if args.rounds > 1 else "")
    )
    if not all_durable:
        print("FAILED: errors, or alerts answered 200 that are not in the log")
        return 1
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per side")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight in total")
    p.add_argument("--workers", type=int, default=1, help="load generator processes")
    p.add_argument("--rounds", type=int, default=1, help="baseline+sevpipe pairs (median)")
    p.add_argument(
        "--groups", type=int, default=0, help="alert groups to cycle through (0: one per webhook)"
    )
    p.add_argument(
        "--command", choices=("run", "ingest"), default="run", help="sevpipe command to measure"
    )
    p.add_argument("--client", choices=("raw", "aiohttp"), default="raw", help="HTTP client")
    p.add_argument("--target", help="only send load to this running server (base URL)")
    p.add_argument("--quick", action="store_true", help="~2 s smoke run")
    p.add_argument(
        "--role", choices=("bench", "load", "baseline"), default="bench", help=argparse.SUPPRESS
    )
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.duration, args.warmup, args.rounds = 2.0, 0.3, 1
    if args.role == "load":
        result = uvloop.run(_load(args))
        Path(args.out).write_bytes(orjson.dumps(result))
        return 0
    if args.role == "baseline":
        uvloop.run(_baseline(args))
        return 0
    return _bench(args)


if __name__ == "__main__":
    sys.exit(main())
