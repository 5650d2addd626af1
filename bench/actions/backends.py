"""One part's isolated backends, embedded or production, and the clients a process opens on
them."""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from eventlog import EmbeddedLog, EventLog
from eventlog.kafka import KafkaLog
from store import (
    Coordinator,
    EmbeddedStore,
    IncidentStore,
    LocalCoordinator,
    PostgresStore,
    RedisCoordinator,
)
from store.effects import EffectsLedger
from store.effects_embedded import EmbeddedEffectsLedger
from store.effects_postgres import PostgresEffectsLedger

SERVICES: Final = ("SEVPIPE_KAFKA_BOOTSTRAP", "SEVPIPE_POSTGRES_DSN", "SEVPIPE_REDIS_URL")


@dataclass
class Clients:
    """One process's backends."""

    log: EventLog
    store: IncidentStore
    ledger: EffectsLedger
    coordinator: Coordinator

    @property
    def backends(self) -> tuple[EventLog, IncidentStore, EffectsLedger, Coordinator]:
        return (self.log, self.store, self.ledger, self.coordinator)

    async def start(self) -> None:
        # One after another: the two PostgreSQL backends migrate the same fresh database.
        for backend in self.backends:
            await backend.start()

    async def close(self) -> None:
        for backend in self.backends:
            with contextlib.suppress(Exception):
                await backend.close()


class Install:
    """One part's isolated backends: a temp dir (embedded), or a topic and consumer-group
    prefix, a database and a Redis key prefix (production). ``open`` gives a process's
    clients: embedded, one set shared by all (one process); production, a new set each call."""

    def __init__(self, backend: str, label: str, workdir: Path) -> None:
        self.backend = backend
        token = uuid.uuid4().hex[:10]
        self.prefix = f"sevpipe-bench-actions-{label}-{token}"
        self.groups = self.prefix + "."
        self.dir = workdir / f"{label}-{token}"
        self.database = self.prefix.replace("-", "_")
        self._opened: list[Clients] = []
        self._env = {name: os.environ.get(name, "") for name in SERVICES}

    @property
    def production(self) -> bool:
        return self.backend == "production"

    @property
    def dsn(self) -> str:
        admin = self._env["SEVPIPE_POSTGRES_DSN"]
        return urlsplit(admin)._replace(path=f"/{self.database}").geturl()

    async def __aenter__(self) -> Install:
        if self.production:
            await _sql(self._env["SEVPIPE_POSTGRES_DSN"], f'CREATE DATABASE "{self.database}"')
        else:
            self.dir.mkdir(parents=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for clients in self._opened:
            await clients.close()
        if self.production:
            await self._remove()

    async def open(self) -> Clients:
        if not self.production and self._opened:
            return self._opened[0]
        clients = self._production() if self.production else self._embedded()
        await clients.start()
        self._opened.append(clients)
        return clients

    def _embedded(self) -> Clients:
        return Clients(
            EmbeddedLog(self.dir / "events.db"),
            EmbeddedStore(self.dir / "store.db"),
            EmbeddedEffectsLedger(self.dir / "effects.db"),
            LocalCoordinator(),
        )

    def _production(self) -> Clients:
        return Clients(
            KafkaLog(
                self._env["SEVPIPE_KAFKA_BOOTSTRAP"],
                client_id="sevpipe-bench",
                topic_prefix=self.prefix + ".",
            ),
            PostgresStore(self.dsn),
            PostgresEffectsLedger(self.dsn),
            RedisCoordinator(self._env["SEVPIPE_REDIS_URL"], prefix=self.prefix + ":"),
        )

    async def _remove(self) -> None:
        with contextlib.suppress(Exception):
            drop = f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'
            await _sql(self._env["SEVPIPE_POSTGRES_DSN"], drop)
        with contextlib.suppress(Exception):
            admin = AIOKafkaAdminClient(bootstrap_servers=self._env["SEVPIPE_KAFKA_BOOTSTRAP"])
            await admin.start()
            try:
                mine = [t for t in await admin.list_topics() if t.startswith(self.prefix)]
                if mine:
                    await admin.delete_topics(mine)
            finally:
                await admin.close()
        with contextlib.suppress(Exception):
            redis = aioredis.from_url(self._env["SEVPIPE_REDIS_URL"])
            try:
                keys = [k async for k in redis.scan_iter(match=self.prefix + ":*", count=1000)]
                if keys:
                    await redis.delete(*keys)
            finally:
                await redis.aclose()


async def _sql(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()
