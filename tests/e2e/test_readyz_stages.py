"""``/readyz`` of a stage-only process (``sevpipe classify``) follows its stage: 503 while the
stage waits out PostgreSQL, 200 again once it is back, by itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from tcp_proxy import TcpProxy

from .backends import Backend, backend_named
from .harness import Launcher, Server

pytestmark = pytest.mark.e2e

DEADLINE = 60.0


@pytest.fixture
def production(request: pytest.FixtureRequest) -> Any:
    with backend_named("production", request) as backend:
        yield backend


async def readyz(session: aiohttp.ClientSession, server: Server) -> tuple[int, Any]:
    async with session.get(f"{server.base_url}/readyz") as resp:
        return resp.status, await resp.json()


async def until_ready(session: aiohttp.ClientSession, server: Server, status: int) -> Any:
    async with asyncio.timeout(DEADLINE):
        while True:
            got, body = await readyz(session, server)
            if got == status:
                return body
            await asyncio.sleep(0.1)


async def test_a_classifier_waiting_out_postgres_is_not_ready_until_it_is_back(
    production: Backend, launcher: Launcher, tmp_path: Path
) -> None:
    dsn = urlsplit(production.env["SEVPIPE_POSTGRES_DSN"])
    proxy = TcpProxy(int(dsn.port or 5432))
    await proxy.start()
    proxied = dsn._replace(netloc=f"{dsn.username}@127.0.0.1:{proxy.port}").geturl()
    env = production.with_env({"SEVPIPE_POSTGRES_DSN": proxied})
    try:
        server = await asyncio.to_thread(
            launcher.start, tmp_path / "c", env=env, command="classify"
        )
        async with aiohttp.ClientSession() as session:
            body = await until_ready(session, server, 200)
            assert body["stages"] == {"classifier": "consuming"}

            await proxy.cut()  # PostgreSQL goes away: the stage backs off
            body = await until_ready(session, server, 503)
            assert body["stages"] == {"classifier": "waiting"}
            assert body["eventlog"] == "writable"  # the log is fine; the stage is not
            assert server.proc.poll() is None, "it waits, it does not exit"

            await proxy.start()  # back: the stage resumes by itself
            body = await until_ready(session, server, 200)
            assert body["stages"] == {"classifier": "consuming"}
        assert server.stop() == 0, server.stderr()
    finally:
        await proxy.cut()
