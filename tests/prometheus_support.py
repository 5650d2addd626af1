"""A real Prometheus for the tests: Debian's ``/usr/bin/prometheus`` (package ``prometheus``),
started once per session on a free port with its TSDB in a temp dir, scraping every second an
exporter served here (aiohttp, ``/metrics`` rendered by prometheus_client).

The exporter serves:

- ``sevpipe_test_scrapes_total`` (a counter): +1 at each scrape, so its value at a scrape is
  the number of scrapes so far and its rate is about one per second;
- ``sevpipe_test_shard_load{shard="00".."29"}`` (a gauge): shard N has the value N.

The fixture returns once Prometheus holds at least :data:`READY_SAMPLES` samples of the
counter. A missing binary or a Prometheus that does not come up fails the test that needs it:
nothing is skipped.

Both run outside the tests' event loops (the exporter on a thread of its own, Prometheus as a
process), so one session-scoped instance serves every test module: import ``prometheus``
from here into a test module to use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

T = TypeVar("T")

PROMETHEUS: Final = os.environ.get("SEVPIPE_PROMETHEUS_BIN") or "/usr/bin/prometheus"
SCRAPES: Final = "sevpipe_test_scrapes_total"
SHARD_LOAD: Final = "sevpipe_test_shard_load"
SHARDS: Final = 30
JOB: Final = "sevpipe-test"
READY_SAMPLES: Final = 10
"""Samples of the counter Prometheus holds before the fixture returns (one a second): a range
query reaching 6 s back from the last whole (or even) second lies after the first sample."""
START_TIMEOUT: Final = 60.0
# The exposition format Prometheus 2.42 reads (prometheus_client's own default names 1.0.0).
TEXT_FORMAT: Final = "text/plain; version=0.0.4; charset=utf-8"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Exporter:
    """The scrape target: an aiohttp server on a thread with its own event loop."""

    port: int = field(default_factory=free_port)
    scrapes: int = 0
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        self.counter = Counter(
            SCRAPES.removesuffix("_total"), "scrapes served", registry=self.registry
        )
        self.gauge = Gauge(SHARD_LOAD, "load per shard", ["shard"], registry=self.registry)
        for shard in range(SHARDS):
            self.gauge.labels(shard=f"{shard:02d}").set(shard)

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        self.counter.inc()
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": TEXT_FORMAT}
        )

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.run(self._serve())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run CORO on the exporter's loop (from any other thread) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self._runner is not None:
            self.run(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self.loop.close()


@dataclass
class PrometheusServer:
    url: str
    exporter: Exporter
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def instance(self) -> str:
        """The ``instance`` label of the exporter's series."""
        return f"127.0.0.1:{self.exporter.port}"

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "prometheus.log").read_text(errors="replace")[-3000:]
        return ""

    async def _get(self, path: str) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{self.url}{path}") as resp,
        ):
            body = await resp.json() if resp.content_type == "application/json" else None
            return resp.status, body

    async def _samples(self) -> int:
        status, body = await self._get(f"/api/v1/query?query=count_over_time({SCRAPES}[1m])")
        if status != 200 or not body["data"]["result"]:
            return 0
        return int(body["data"]["result"][0]["value"][1])

    def wait_ready(self) -> None:
        """Until Prometheus answers and holds READY_SAMPLES of the counter; else fail."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited:\n{self.log_tail()}", pytrace=False)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                if self.exporter.run(self._samples()) >= READY_SAMPLES:
                    return
            time.sleep(0.25)
        pytest.fail(
            f"prometheus did not scrape {READY_SAMPLES} samples in {START_TIMEOUT:g}s:\n"
            f"{self.log_tail()}",
            pytrace=False,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.exporter.stop()


CONFIG: Final = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: {job}
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


def start_prometheus(workdir: Path) -> PrometheusServer:
    """Prometheus and its exporter, ready (see ``wait_ready``)."""
    if not (os.path.isfile(PROMETHEUS) and os.access(PROMETHEUS, os.X_OK)):
        pytest.fail(
            f"{PROMETHEUS} is missing: install Debian's prometheus "
            "(apt-get install --no-install-recommends prometheus)",
            pytrace=False,
        )
    exporter = Exporter()
    exporter.start()
    config = workdir / "prometheus.yml"
    config.write_text(CONFIG.format(job=JOB, port=exporter.port))
    port = free_port()
    with (workdir / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", exporter, process, workdir)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


_shared: PrometheusServer | None = None


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """One Prometheus for the session, whichever test modules import this fixture."""
    global _shared  # noqa: PLW0603 - one server however many modules import the fixture
    if _shared is None or _shared.process.poll() is not None:
        _shared = start_prometheus(tmp_path_factory.mktemp("prometheus"))
    server = _shared
    yield server
    if _shared is server:
        _shared = None
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
