"""Ingest throughput: ``sevpipe run`` (embedded log, fsync=full) against a no-storage baseline.

Both servers run in their own subprocess on uvloop. The baseline is an aiohttp app that parses
the same bodies with the same pydantic ``Webhook`` model and answers 200 without storing; the
ratio sevpipe/baseline is the figure to watch, since the machine's absolute speed (and whoever
else is using it) moves both sides alike.

The load comes from separate worker processes, each keeping its share of ``--concurrency``
requests in flight on keep-alive connections, with bodies pre-serialised into a template that
gets fresh fingerprints and startsAt per request (nothing is a repeat). With ``sevpipe run``
the classifier folds behind the receiver at its full rate: the incidents topic is watched
(bench/fold.py) for the fold rate, each alert's 200 -> its incident change (p99 target
<= 1 s), the share folded when the load ended, bytes per alert and the peak RSS, once per
``--groups`` count, and the one-group figures are printed beside the many-group ones. After
each sevpipe run (and its catch-up) the server is killed with SIGKILL and the SQLite log is
counted: every alert answered 200 must be in it.

    .venv/bin/python -m bench.ingest            # 10 s per side, many groups then one
    .venv/bin/python -m bench.ingest --quick    # ~2 s smoke run
    .venv/bin/python -m bench.ingest --groups 1 # every alert in one Alertmanager group
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
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

from bench.fold import (
    TARGET_BYTES_PER_ALERT,
    EmbeddedWatcher,
    Fold,
    Row,
    fingerprint_of,
    fold_of,
    pct,
    peak_rss_mb,
    print_table,
)
from schemas import TOPIC_ALERTS, AlertEventData, Envelope, Webhook

ALERTS_PER_WEBHOOK = 10
TARGET_RATIO = 0.5
TARGET_ALERTS_PER_S = 20_000
TARGET_FOLD_RATIO = 0.80  # one group against many (issue 7)
TARGET_P99_CHANGE_MS = 1000.0
REPO = Path(__file__).resolve().parents[1]
SELF = (sys.executable, "-m", "bench.ingest")  # the load workers and the baseline server
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


def _webhook_template(variant: int, *, fixed_groups: bool = False) -> bytes:
    """A 10-alert body with ``%(name)s`` slots: group ``g``, startsAt ``sN``, fingerprint ``fN``.

    Grouped as Alertmanager's ``group_by: [alertname, namespace, deployment]`` would send it;
    with ``fixed_groups``, as ``group_by: [bench_group]``: group ``g`` is one group whatever
    the alert (``--groups 1`` puts every alert of every worker into one group).
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
    if fixed_groups:
        group = {"bench_group": _slot("g")}
        common = {**common, **group}
        for alert in alerts:
            alert["labels"] = {**alert["labels"], **group}  # type: ignore[dict-item]
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
        "groupKey": f"{{}}:{{{group_key}}}"
        if fixed_groups
        else f'{{}}/{{severity="{severity}"}}:{{{group_key}}}',
        "truncatedAlerts": 0,
    }
    raw = orjson.dumps(body).replace(b"%", b"%%")
    return re.sub(rb"@@(\w+)@@", rb"%(\1)s", raw)


class Bodies:
    """Pre-serialised webhook bodies; ``next()`` fills a template's slots with fresh values.

    Every alert gets a fingerprint and startsAt of its own (nothing is a repeat). Webhooks
    cycle through ``groups`` alert groups (incidents), the same ones in every worker, or each
    is a group of its own if 0. The fingerprint of alert ``i`` of webhook ``seq`` is
    ``bench.fold.fingerprint_of(worker, seq, i)``.
    """

    def __init__(self, worker: int, groups: int = 0, variants: int = 16) -> None:
        self.worker = worker
        self.groups = groups
        self.templates = [_webhook_template(v, fixed_groups=groups > 0) for v in range(variants)]
        self.seq = 0
        self.base = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=worker)
        self.starts_keys = [b"s%d" % i for i in range(ALERTS_PER_WEBHOOK)]
        self.fingerprint_keys = [b"f%d" % i for i in range(ALERTS_PER_WEBHOOK)]

    def next(self) -> bytes:
        self.seq += 1
        seq = self.seq
        # startsAt to the millisecond by sequence, plus the alert's index in microseconds
        millis = (self.base + timedelta(milliseconds=seq)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        if self.groups:
            values = {b"g": b"%06x" % (seq % self.groups)}
        else:
            values = {b"g": b"%02x%06x" % (self.worker, seq)}
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
    bodies = Bodies(args.worker, args.groups[0])
    latencies: list[float] = []
    acks: list[tuple[int, float]] = []  # (seq, wall time of its 200): for bench.fold
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
                seq = bodies.seq
                try:
                    status = await send(body)
                except (ClientError, OSError, TimeoutError):
                    status = 0
                ended = time.perf_counter()
                if status == 200:
                    counts["ok_alerts_total"] += ALERTS_PER_WEBHOOK
                    acks.append((seq, time.time()))
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
        "acks": acks,
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


def child_env() -> dict[str, str]:
    """The environment of a child process: no ``SEVPIPE_*`` setting, and ``bench`` importable
    (it is no installed package)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEVPIPE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class Server:
    """A server subprocess whose stdout/stderr go to files; ready when it prints its URL."""

    def __init__(self, argv: list[str], workdir: Path, name: str) -> None:
        env = child_env()
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


def _run_load(url: str, args: argparse.Namespace, groups: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sevpipe-bench-load-") as tmp:
        return _run_load_in(url, args, Path(tmp), groups)


def _run_load_in(url: str, args: argparse.Namespace, workdir: Path, groups: int) -> dict[str, Any]:
    start_at = time.time() + 1.0  # all workers import and connect, then start together
    procs = []
    outs = [workdir / f"load{w}.json" for w in range(args.workers)]
    for w, out in enumerate(outs):
        share = args.concurrency // args.workers + (w < args.concurrency % args.workers)
        argv = [*SELF, "--role", "load", "--url", f"{url}/api/v1/alerts"]
        argv += ["--worker", str(w), "--concurrency", str(share), "--start-at", str(start_at)]
        argv += ["--duration", str(args.duration), "--warmup", str(args.warmup)]
        argv += ["--client", args.client, "--groups", str(groups), "--out", str(out)]
        procs.append(subprocess.Popen(argv, env=child_env()))
    parts = []
    for p, out in zip(procs, outs, strict=True):
        if p.wait() != 0:
            raise RuntimeError(f"load worker failed with exit code {p.returncode}")
        parts.append(json.loads(out.read_bytes()))
    acks = [
        (t, [fingerprint_of(w, seq, i) for i in range(ALERTS_PER_WEBHOOK)])
        for w, part in enumerate(parts)
        for seq, t in part["acks"]
    ]
    return {
        "start_at": start_at,
        "acks": acks,
        "ok": sum(p["ok"] for p in parts),
        "ok_alerts_total": sum(p["ok_alerts_total"] for p in parts),
        "errors": sum(p["errors"] for p in parts),
        "elapsed": max(p["elapsed"] for p in parts),
        "latencies": [x for p in parts for x in p["latencies"]],
        "client_cpu": sum(p["cpu"] for p in parts),
    }


@dataclass
class Measured:
    result: Result
    start_at: float
    acks: list[tuple[float, list[str]]]
    """(wall time of a 200, the fingerprints of that webhook's alerts), warm-up included."""


def _measure(name: str, server: Server, args: argparse.Namespace, groups: int = 0) -> Measured:
    url = server.wait_url()
    cpu0 = server.cpu_seconds()
    load = _run_load(url, args, groups)
    start_at, acks = load.pop("start_at"), load.pop("acks")
    cpu = (server.cpu_seconds() - cpu0) / (time.time() - start_at)
    return Measured(Result(name, server_cpu=cpu, **load), start_at, acks)


def _count_log(db: Path) -> tuple[int, int]:
    """Events on the alerts topic, and how many distinct alerts; checks a sample's shape."""
    conn = sqlite3.connect(db)
    try:
        count, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT COALESCE(dedup_key, latest_key)) FROM events"
            " WHERE topic = ?",
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


def groups_label(groups: int) -> str:
    return "1 group/webhook" if groups == 0 else f"{groups:,} group" + ("s" if groups > 1 else "")


@dataclass
class Run:
    """One ``sevpipe run`` under load with ``groups`` alert groups."""

    groups: int
    result: Result
    fold: Fold
    rss_mb: float
    ratio: float  # alerts/s against the round's baseline
    durable: bool


def _sevpipe_run(
    args: argparse.Namespace, workdir: Path, name: str, groups: int, baseline: Result
) -> Run:
    """``sevpipe run`` at full rate; then until every alert answered 200 is folded (or
    ``--catch-up`` s), its peak RSS, kill -9, and the log counted."""
    data_dir = workdir / name
    argv = [sys.executable, "-m", "sevpipe", args.command, "--data-dir", str(data_dir)]
    argv += ["--port", "0"]
    sev = Server(argv, workdir, name)
    sev.wait_url()  # the log and its tables are there
    watcher = EmbeddedWatcher(data_dir / "events.db").start()
    try:
        measured = _measure("sevpipe", sev, args, groups)
        if args.command == "run":
            watcher.wait_for([fp for _, fps in measured.acks for fp in fps], args.catch_up)
        rss = peak_rss_mb(sev.proc.pid)
    finally:
        sev.stop(signal.SIGKILL)  # no graceful close: a 200 must already be committed
        seen = watcher.stop()
    sevpipe = measured.result
    print(f"{sevpipe.line()}  [{groups_label(groups)}]", flush=True)
    fold = fold_of(measured.acks, seen, measured.start_at)
    if args.command == "run":
        print(f"{fold.line()}; peak RSS {rss:,.0f} MB", flush=True)

    logged, distinct = _count_log(data_dir / "events.db")
    durable = logged == distinct == sevpipe.ok_alerts_total
    verdict = "OK" if durable else "MISMATCH"
    print(
        f"durability: {sevpipe.ok_alerts_total:,} alerts answered 200, {logged:,} events "
        f"({distinct:,} distinct alerts) in the log after kill -9: {verdict}"
    )
    ratio = sevpipe.alerts_per_s / baseline.alerts_per_s
    print(f"ratio sevpipe/baseline: {ratio:.2f}", flush=True)
    return Run(groups, sevpipe, fold, rss, ratio, durable and sevpipe.errors == 0)


def _round(args: argparse.Namespace, workdir: Path, n: int) -> list[Run]:
    base = Server([*SELF, "--role", "baseline"], workdir, f"baseline{n}")
    try:
        baseline = _measure("baseline", base, args).result
    finally:
        base.stop(signal.SIGTERM)
    print(baseline.line(), flush=True)
    return [
        _sevpipe_run(args, workdir, f"sevpipe{n}-{groups}", groups, baseline)
        for groups in args.groups
    ]


def _load_only(args: argparse.Namespace) -> int:
    """``--target URL``: only the load, against a server someone else started (profiling)."""
    load = _run_load(args.target.rstrip("/"), args, args.groups[0])
    load.pop("start_at")
    load.pop("acks")
    result = Result("target", server_cpu=float("nan"), **load)
    print(result.line())
    return 0 if result.errors == 0 else 1


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _table(args: argparse.Namespace, rounds: list[list[Run]]) -> None:
    """One group beside many (the first other ``--groups``), medians over the rounds."""
    if 1 not in args.groups or len(set(args.groups)) < 2:
        return
    # the many-group side: the first count of several groups, else a group per webhook
    many_groups = next((g for g in args.groups if g > 1), 0)

    def med(groups: int, figure: Callable[[Run], float]) -> float:
        return _median([figure(r) for runs in rounds for r in runs if r.groups == groups])

    def both(figure: Callable[[Run], float]) -> tuple[float, float]:
        return med(1, figure), med(many_groups, figure)

    rows = [
        Row(
            "sevpipe run receiver alerts/s (200s)",
            *both(lambda r: r.result.alerts_per_s),
            "alerts/s",
            "-",
            None,
        ),
    ]
    if args.command == "run":
        one, many = both(lambda r: r.fold.fold_rate)
        rows.append(
            Row(
                "sevpipe run fold rate",
                one,
                many,
                "alerts/s",
                "one/many >= 0.80",
                one / many >= TARGET_FOLD_RATIO if many else False,
            )
        )
        one, many = both(lambda r: pct(r.fold.latencies_ms, 0.99))
        rows.append(
            Row(
                "sevpipe run p99 200 -> incident change",
                one,
                many,
                "ms",
                "<= 1,000 ms",
                max(one, many) <= TARGET_P99_CHANGE_MS,
                ratio=False,
            )
        )
        one, many = both(lambda r: 100 * r.fold.share_at_load_end)
        rows.append(Row("folded when the load ended", one, many, "%", "-", None, ratio=False))
        one, many = both(lambda r: r.fold.bytes_per_alert)
        rows.append(
            Row(
                "sevpipe.incidents bytes per alert",
                one,
                many,
                "B",
                "<= 2,048 B",
                max(one, many) <= TARGET_BYTES_PER_ALERT,
                ratio=False,
            )
        )
        one, many = both(lambda r: r.rss_mb)
        alerts = med(1, lambda r: r.fold.folded)
        rows.append(
            Row(
                f"sevpipe run peak RSS ({alerts:,.0f} alerts in 1 group)",
                one,
                many,
                "MB",
                "-",
                None,
                ratio=False,
            )
        )
    print_table(rows, many_label=groups_label(many_groups))


def _bench(args: argparse.Namespace) -> int:
    if args.target:
        return _load_only(args)
    print(
        f"{args.duration:g} s per side (+{args.warmup:g} s warm-up), {args.concurrency} in flight"
        f" over {args.workers} load process(es), {ALERTS_PER_WEBHOOK} alerts per webhook"
        f" ({', then '.join(groups_label(g) for g in args.groups)}),"
        f" client={args.client}; `sevpipe {args.command}` on the embedded log, fsync=full"
    )
    rounds: list[list[Run]] = []
    with tempfile.TemporaryDirectory(prefix="sevpipe-bench-") as tmp:
        for n in range(args.rounds):
            if args.rounds > 1:
                print(f"-- round {n + 1}/{args.rounds}")
            rounds.append(_round(args, Path(tmp), n))
    first = args.groups[0]
    mine = [r for runs in rounds for r in runs if r.groups == first]
    ratio = _median([r.ratio for r in mine])
    rate = _median([r.result.alerts_per_s for r in mine])
    print(
        f"summary ({groups_label(first)}): sevpipe {rate:,.0f} alerts/s (target >="
        f" {TARGET_ALERTS_PER_S:,}: {'met' if rate >= TARGET_ALERTS_PER_S else 'MISSED'}),"
        f" ratio {ratio:.2f} (target >= {TARGET_RATIO:.2f}:"
        f" {'met' if ratio >= TARGET_RATIO else 'MISSED'})"
        + (f", median of {args.rounds} rounds" if args.rounds > 1 else "")
    )
    _table(args, rounds)
    if not all(r.durable for runs in rounds for r in runs):
        print("FAILED: errors, or alerts answered 200 that are not in the log")
        return 1
    return 0


def group_counts(text: str) -> list[int]:
    """``--groups``: one count, or several separated by commas (each measured in turn)."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of group counts: {text!r}") from None
    if not counts or any(c < 0 for c in counts):
        raise argparse.ArgumentTypeError(f"group counts are >= 0: {text!r}")
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per side")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight in total")
    p.add_argument("--workers", type=int, default=1, help="load generator processes")
    p.add_argument("--rounds", type=int, default=1, help="baseline+sevpipe pairs (median)")
    p.add_argument(
        "--groups",
        type=group_counts,
        default=[0, 200, 1],
        help="alert groups the load cycles through, measured in turn (default 0,200,1: each"
        " webhook a group of its own, then 200 groups, then every alert in ONE group; the"
        " table sets one group beside 200); 1: one group only",
    )
    p.add_argument(
        "--catch-up",
        type=float,
        default=60.0,
        help="seconds to wait, after the load, for every alert to be folded",
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
