"""A server started before Kafka is up waits for it, says so, and then serves; it does not
exit (a deploy may start sevpipe before its dependencies are ready)."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import aiohttp
import orjson
from services import Services
from tcp_proxy import TcpProxy

from .backends import production
from .harness import _LISTENING, FIXTURES, SEVPIPE, clean_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _until(check: object, what: str, seconds: float = 60) -> None:
    assert callable(check)
    for _ in range(int(seconds / 0.1)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_ingest_waits_for_kafka_then_serves(services: Services, tmp_path: Path) -> None:
    port = _free_port()  # nothing listens here yet: "Kafka is not up"
    kafka_port = int(services.kafka_bootstrap.rsplit(":", 1)[1])
    stderr_path = tmp_path / "stderr"
    with production(services, label="wait") as prod:
        env = prod.with_env({"SEVPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"})
        with stderr_path.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *SEVPIPE,
                *("ingest", "--port", "0", "--data-dir", str(tmp_path / "d")),
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                stdin=asyncio.subprocess.DEVNULL,
                env=clean_env(env),
            )
        proxy = TcpProxy(kafka_port)
        try:
            await _until(lambda: b"waiting for kafka" in stderr_path.read_bytes(), "a waiting log")
            assert proc.returncode is None, "it must wait, not exit"

            proxy.port = port
            await proxy.start()  # "Kafka is up"
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            match = _LISTENING.match(line.decode().rstrip("\n"))
            assert match is not None, line
            body = (FIXTURES / "02_grafana_oncall_firing_3alerts.json").read_bytes()
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{match.group(1)}/api/v1/alerts",
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as resp,
            ):
                assert resp.status == 200, await resp.text()
                assert orjson.loads(await resp.read())["accepted"] == 3
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            await proxy.cut()
