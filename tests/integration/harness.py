"""The receiver as the process serves it: real aiohttp app, over a real EmbeddedLog in a temp
dir (``open_harness``) or any log a test gives (``open_receiver``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from eventlog import EmbeddedLog, EventLog, Record
from ingest import Credentials, Receiver, ReceiverConfig, ReceiverMetrics
from sevpipe.http import build_app

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "alertmanager"
FIXTURE_NAMES = tuple(sorted(p.name for p in FIXTURE_DIR.glob("*.json")))
JSON_HEADERS = {"Content-Type": "application/json"}
LogT = TypeVar("LogT", bound=EventLog)


def fixture_bytes(name: str) -> bytes:
    return (FIXTURE_DIR / name).read_bytes()


def fixture_json(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(fixture_bytes(name))
    return body


@dataclass
class ReceiverHarness(Generic[LogT]):
    log: LogT
    client: TestClient[web.Request, web.Application]

    async def post(
        self, body: bytes, *, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any], ClientResponse]:
        """POST a webhook body; the status, the JSON answer and the response."""
        async with self.client.post(
            "/api/v1/alerts", data=body, headers=JSON_HEADERS if headers is None else headers
        ) as resp:
            answer = await resp.json(content_type=None)
            assert isinstance(answer, dict), answer
            return resp.status, answer, resp

    async def records(self) -> list[Record]:
        return [r async for r in self.log.read()]

    async def count(self) -> int:
        return len(await self.records())

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """GET /metrics, parsed: (sample name, sorted labels) -> value."""
        async with self.client.get("/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out


Harness = ReceiverHarness[EmbeddedLog]


@asynccontextmanager
async def open_harness(
    data_dir: Path,
    *,
    credentials: Credentials | None = None,
    max_body_bytes: int = 1024 * 1024,
    busy_timeout: float = 2.0,
    synchronous: Literal["full", "normal"] = "full",
) -> AsyncIterator[Harness]:
    log = EmbeddedLog(data_dir / "events.db", synchronous=synchronous, busy_timeout=busy_timeout)
    async with open_receiver(log, credentials=credentials, max_body_bytes=max_body_bytes) as h:
        yield h


@asynccontextmanager
async def open_receiver(
    log: LogT,
    *,
    credentials: Credentials | None = None,
    max_body_bytes: int = 1024 * 1024,
) -> AsyncIterator[ReceiverHarness[LogT]]:
    """The receiver over ``log`` (not started yet); the log is closed afterwards."""
    await log.start()
    registry = CollectorRegistry()
    config = ReceiverConfig(credentials=credentials or Credentials(), max_body_bytes=max_body_bytes)
    receiver = Receiver(config, log, ReceiverMetrics(registry))
    app = build_app(receiver.routes(), log, registry, max_body_bytes)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield ReceiverHarness(log, client)
    finally:
        await client.close()
        await log.close()
