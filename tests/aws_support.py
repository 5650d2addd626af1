"""The AWS API emulator for the tests: a real moto server (``moto_server``, from moto[server]
in the venv) as a subprocess on a free 127.0.0.1 port, not moto's in-process mocks.

``moto_server`` (session fixture, registered in ``tests/conftest.py``) starts one for the
session and kills it at the end; ``start_moto`` starts another one (a test that needs IAM
enforced, which is server-wide). Each server records every request it receives (moto's
recorder): ``MotoServer.received()`` reads them back as (service, operation), so a test
asserts on what reached the server, not on what a client says it sent.

``FaultProxy`` sits between a client and a server and answers the next requests itself with
a chosen error (a 400 ``Throttling``, a 503) or after a delay (a read timeout), as AWS does
under load; then it relays again. It can also hold the server's answer to one operation
(``hold``): the request is relayed and acted on, the client not told yet (a kill lands
after the effect and before the client knows of it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from services import unique_name

from actions.aws_client import AwsClients
from actions.aws_config import AwsConfig

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
REGION = "us-east-1"
START_WITHIN = 30.0


@dataclass(frozen=True)
class Received:
    """One request a server received: its service (from the signature's scope) and operation."""

    service: str
    operation: str
    method: str
    path: str
    params: dict[str, list[str]]


@dataclass
class MotoServer:
    url: str
    recording: Path
    log: Path
    process: subprocess.Popen[bytes]

    def config(self, **overrides: Any) -> AwsConfig:
        """Settings for the actions' clients: this endpoint, dummy credentials."""
        values: dict[str, Any] = {
            "region": REGION,
            "endpoint_url": self.url,
            "access_key_id": "testing",
            "secret_access_key": "testing",
            "timeout": 5,
            "max_attempts": 3,
        }
        return AwsConfig.model_validate({**values, **overrides})

    def _post(self, path: str, body: bytes = b"") -> bytes:
        request = urllib.request.Request(  # noqa: S310 - our own http://127.0.0.1 server
            self.url + path, data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return bytes(answer.read())

    def reset_recording(self) -> None:
        self._post("/moto-api/recorder/reset-recording")

    def enforce_iam(self) -> None:
        """From now on every request is authenticated and authorised against moto's IAM."""
        self._post("/moto-api/reset-auth", b"0")

    def received(self, service: str | None = None) -> list[Received]:
        """What the server received since the last ``reset_recording``, oldest first."""
        found = []
        if not self.recording.exists():
            return []
        text = self.recording.read_text(encoding="utf-8")
        # moto writes an entry, then its newline: the last line may still be being written.
        for line in text.split("\n")[:-1]:
            if not line.strip():
                continue
            entry = json.loads(line)
            one = _received(entry)
            if one is not None and (service is None or one.service == service):
                found.append(one)
        return found

    def operations(self, service: str) -> list[str]:
        return [r.operation for r in self.received(service)]


def _received(entry: dict[str, Any]) -> Received | None:
    headers = {k.lower(): v for k, v in entry.get("headers", {}).items()}
    scope = headers.get("authorization", "").split("Credential=")[-1].split(",")[0].split("/")
    if len(scope) < 4:
        return None  # moto's own API, unsigned
    body = entry.get("body") or ""
    if entry.get("body_encoded"):
        body = base64.b64decode(body).decode("utf-8", errors="replace")
    url = urlsplit(entry["url"])
    method, path = entry["method"], url.path
    params = parse_qs(body) if "Action=" in body else parse_qs(url.query)
    if "Action" in params:
        operation = params["Action"][0]
    elif "x-amz-target" in headers:
        operation = headers["x-amz-target"].rsplit(".", 1)[-1]
    elif "/operation/" in path:
        operation = path.rsplit("/", 1)[-1]
    else:
        operation = _rest_operation(method, path)
    return Received(scope[3], operation, method, path, params)


def _rest_operation(method: str, path: str) -> str:
    """CloudFront's REST calls by their method and path."""
    parts = path.strip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "invalidation" and method == "GET":
        return "GetInvalidation"
    if parts[-1] == "invalidation":
        return {"POST": "CreateInvalidation", "GET": "ListInvalidations"}.get(method, method)
    return f"{method} {path}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/moto-api/data.json", timeout=2) as answer:  # noqa: S310
            return bool(answer.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def start_moto(directory: Path) -> Iterator[MotoServer]:
    """A moto server of its own, recording into DIRECTORY; killed on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    recording, log = directory / "moto-recording.jsonl", directory / "moto.log"
    env = {
        **os.environ,
        "MOTO_ENABLE_RECORDING": "true",
        "MOTO_RECORDER_FILEPATH": str(recording),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = MotoServer(f"http://127.0.0.1:{port}", recording, log, process)
    try:
        deadline = time.monotonic() + START_WITHIN
        while not _answers(server.url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"moto_server did not answer on {server.url}: see {log}\n"
                    + log.read_text(errors="replace")[-2000:]
                )
            time.sleep(0.1)
        server.reset_recording()
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """The session's moto server; tests share it, so each names its resources uniquely."""
    with start_moto(tmp_path_factory.mktemp("moto")) as server:
        yield server


@dataclass
class Fault:
    """What the proxy answers instead of relaying: STATUS with an AWS error CODE, or a
    relay after DELAY seconds (longer than the client's read timeout: a timeout)."""

    status: int = 400
    code: str = "Throttling"
    delay: float = 0.0


@dataclass
class FaultProxy:
    """An HTTP relay to TARGET answering the next requests with ``faults`` (one each)."""

    target: str
    faults: list[Fault] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    """Every request that reached the proxy, as its Action (query protocol) or path."""
    url: str = ""
    hold: dict[str, float] = field(default_factory=dict)
    """Operation (as ``MotoServer.received`` names it) -> seconds: the next such request is
    relayed, and the server's answer kept that long before the client gets it."""
    held: list[str] = field(default_factory=list)
    """The operations whose answers were kept, from the moment the server had answered."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        action = parse_qs(body.decode(errors="replace")).get("Action", [request.path])[0]
        self.seen.append(action)
        operation = action if action != request.path else _rest_operation(request.method, action)
        if self.faults:
            fault = self.faults.pop(0)
            if fault.delay:
                await asyncio.sleep(fault.delay)
            else:
                return web.Response(
                    status=fault.status,
                    content_type="text/xml",
                    text=(
                        "<ErrorResponse><Error><Type>Sender</Type>"
                        f"<Code>{fault.code}</Code><Message>injected by the test</Message>"
                        "</Error><RequestId>fault</RequestId></ErrorResponse>"
                    ),
                )
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.target + request.path_qs, data=body, headers=headers
            ) as answer,
        ):
            relayed = await answer.read()
        if (hold := self.hold.pop(operation, 0.0)) > 0:
            self.held.append(operation)
            await asyncio.sleep(hold)
        return web.Response(
            status=answer.status,
            body=relayed,
            headers={"Content-Type": answer.headers.get("Content-Type", "text/xml")},
        )


@contextlib.asynccontextmanager
async def fault_proxy(target: str) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(target)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy._handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    proxy.url = f"http://127.0.0.1:{port}"
    try:
        yield proxy
    finally:
        await runner.cleanup()


async def create_distribution(admin: AwsClients, comment: str = "origin-cdn") -> str:
    """A CloudFront distribution in the emulator; its id."""
    async with admin.cloudfront() as cf:
        made = await cf.create_distribution(
            DistributionConfig={
                "CallerReference": unique_name("dist"),
                "Origins": {
                    "Quantity": 1,
                    "Items": [
                        {
                            "Id": "origin",
                            "DomainName": "origin.example.com",
                            "CustomOriginConfig": {
                                "HTTPPort": 80,
                                "HTTPSPort": 443,
                                "OriginProtocolPolicy": "https-only",
                            },
                        }
                    ],
                },
                "DefaultCacheBehavior": {
                    "TargetOriginId": "origin",
                    "ViewerProtocolPolicy": "redirect-to-https",
                },
                "Comment": comment,
                "Enabled": True,
            }
        )
    dist_id: str = made["Distribution"]["Id"]
    return dist_id
