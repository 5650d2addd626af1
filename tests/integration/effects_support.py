"""The effects ledger's backends for the tests: embedded (SQLite file) and PostgreSQL (a fresh
database per test), plus the holder subprocess that claims and then waits to be killed."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson
import pytest
from effects_holder import WHERE_ENV
from services import Services, fresh_database

from store.effects import Claim, EffectsLedger, InProgress
from store.effects_embedded import EmbeddedEffectsLedger
from store.effects_postgres import PostgresEffectsLedger

Kind = Literal["embedded", "postgres"]
HOLDER_SCRIPT = Path(__file__).with_name("effects_holder.py")


@dataclass(frozen=True)
class LedgerBackend:
    kind: Kind
    where: str
    """The SQLite file, or the PostgreSQL DSN."""

    def open(self) -> EmbeddedEffectsLedger | PostgresEffectsLedger:
        """A new ledger on this backend's data: two of them are two replicas."""
        if self.kind == "embedded":
            return EmbeddedEffectsLedger(Path(self.where))
        return PostgresEffectsLedger(self.where, max_size=4)


@pytest.fixture(name="backend", params=["embedded", "postgres"])
async def backend_fixture(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[LedgerBackend]:
    if request.param == "embedded":
        yield LedgerBackend("embedded", str(tmp_path / "effects.db"))
        return
    services: Services = request.getfixturevalue("services")
    async with fresh_database(services, "sevpipe_effects") as dsn:
        yield LedgerBackend("postgres", dsn)


@pytest.fixture(name="ledger")
async def ledger_fixture(
    backend: LedgerBackend,
) -> AsyncIterator[EmbeddedEffectsLedger | PostgresEffectsLedger]:
    async with backend.open() as opened:
        yield opened


async def claim_after_lease(
    ledger: EffectsLedger,
    effect_id: str,
    *,
    holder: str,
    lease: float,
    limit: float = 60.0,
) -> tuple[list[InProgress], Claim]:
    """Claim until the live lease on the effect has passed: the ``InProgress`` answers seen on
    the way, and the first other answer. ``limit`` only stops a hang."""
    waiting: list[InProgress] = []
    async with asyncio.timeout(limit):
        while True:
            claim = await ledger.claim(effect_id, holder=holder, lease=lease)
            if not isinstance(claim, InProgress):
                return waiting, claim
            waiting.append(claim)
            await asyncio.sleep(0.05)


class Holder:
    """``effects_holder.py`` in a subprocess: opens the ledger, says ``ready``, claims when
    told ``go`` and prints what it got, then waits until it is killed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, backend: LedgerBackend, effect_id: str, lease: float) -> Holder:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HOLDER_SCRIPT),
            backend.kind,
            effect_id,
            str(lease),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, WHERE_ENV: backend.where},
        )
        holder = cls(proc)
        assert await holder.read() == {"ready": True}
        return holder

    async def read(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        assert line, f"holder {self.proc.pid} exited with {await self.proc.wait()}"
        doc = orjson.loads(line)
        assert isinstance(doc, dict)
        return doc

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    async def kill(self) -> int:
        """SIGKILL: no finally, no atexit, no close of anything."""
        if self.proc.returncode is None:
            self.proc.kill()
        return await self.proc.wait()
