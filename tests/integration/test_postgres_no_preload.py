"""``postgres.slow_queries`` on a PostgreSQL whose ``shared_preload_libraries`` lacks
pg_stat_statements: the shared test server preloads it, so this module starts a server of its
own (Debian's PostgreSQL, as ``scripts/test-services`` does: initdb and pg_ctl as the
``postgres`` user, on a Unix socket in a private directory, no TCP), and stops it after.

There ``CREATE EXTENSION pg_stat_statements`` succeeds but reading the view fails (SQLSTATE
55000); the action answers ``available: false`` and why, as a success.
"""

from __future__ import annotations

import asyncio
import glob
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from actions.databases import database_catalogue
from actions.inventory import Inventory
from actions.postgres_queries import NOT_PRELOADED
from schemas.actions import Target

TARGET = Target(kind="Database", name="origin-db")
PORT = 5432  # the socket's name only: the server listens on no TCP port


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    assert found, "PostgreSQL server binaries not found (scripts/test-services installs them)"
    return Path(found[-1]).parent


def _as_postgres(*args: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A DSN of the private server's ``postgres`` database, as its superuser."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="sevpipe-nopreload-"))
    shutil.chown(root, "postgres", "postgres")
    data, log = root / "data", root / "postgres.log"
    _as_postgres(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust")
    options = f"-p {PORT} -k {root} -c listen_addresses='' -c fsync=off"
    try:
        _as_postgres(
            str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o", options, "start"
        )
        try:
            yield f"postgresql://postgres@/postgres?host={root}&port={PORT}"
        finally:
            _as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _sql(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def _slow_queries(tmp_path: Path, dsn: str) -> dict[str, Any]:
    secret = tmp_path / f"dsn-{uuid.uuid4().hex[:8]}"
    secret.write_text(dsn)
    inventory = Inventory.model_validate({"databases": {"origin-db": {"dsn_file": str(secret)}}})
    spec = database_catalogue(inventory).get("postgres.slow_queries")
    return dict(await spec.execute(TARGET, spec.params.model_validate({}), 1))


async def test_created_but_not_preloaded_is_said_so(server: str, tmp_path: Path) -> None:
    name = f"withext_{uuid.uuid4().hex[:8]}"
    await _sql(server, f"CREATE DATABASE {name}")
    dsn = server.replace("/postgres?", f"/{name}?")
    await _sql(dsn, "CREATE EXTENSION pg_stat_statements")
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError):  # the server's own answer
        await _sql(dsn, "SELECT count(*) FROM pg_stat_statements")
    result = await _slow_queries(tmp_path, dsn)
    assert result["available"] is False
    assert result["why"] == NOT_PRELOADED
    assert result["shared_preload_libraries"] is False
    assert result["statements"] == []


async def test_neither_created_nor_preloaded_names_both(server: str, tmp_path: Path) -> None:
    result = await _slow_queries(tmp_path, server)
    assert result["available"] is False
    assert "not created in database postgres" in result["why"]
    assert "not in shared_preload_libraries" in result["why"]
    assert result["shared_preload_libraries"] is False


def test_the_private_server_really_lacks_the_preload(server: str) -> None:
    async def show() -> str:
        conn = await asyncpg.connect(server)
        try:
            return str(await conn.fetchval("SHOW shared_preload_libraries"))
        finally:
            await conn.close()

    assert "pg_stat_statements" not in asyncio.run(show())
