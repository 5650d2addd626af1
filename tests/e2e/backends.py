"""The two backend sets the end-to-end suites run on (DESIGN, "Two ways to run").

``embedded``: no ``SEVPIPE_*`` backend setting, so the SQLite log and store in the data dir.
``production``: Apache Kafka, PostgreSQL and Redis from the session's ``services``, isolated
per test: a unique topic (and consumer group) prefix, and a database of its own, dropped with
the test's topics afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from services import Services, unique_name

log = logging.getLogger(__name__)

BACKENDS = ("embedded", "production")
ADMIN_TIMEOUT = 30.0
T = TypeVar("T")


@dataclass(frozen=True)
class Backend:
    """A backend set: ``env`` is what every ``sevpipe`` process of the test gets."""

    name: str
    env: Mapping[str, str]
    topic_prefix: str = ""

    @property
    def embedded(self) -> bool:
        return self.name == "embedded"

    def with_env(self, extra: Mapping[str, str]) -> dict[str, str]:
        return {**self.env, **extra}


EMBEDDED = Backend("embedded", {})


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a loop of its own in a thread, whether or not a loop runs here."""
    with ThreadPoolExecutor(1, thread_name_prefix="e2e-backend-admin") as pool:
        return pool.submit(asyncio.run, coro).result(ADMIN_TIMEOUT)


async def _sql(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=ADMIN_TIMEOUT)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _delete_topics(bootstrap: str, prefix: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
        return len(mine)
    finally:
        await admin.close()


@contextlib.contextmanager
def production(services: Services, *, label: str = "e2e") -> Iterator[Backend]:
    """Kafka + PostgreSQL + Redis with a fresh topic prefix and a fresh database."""
    prefix = unique_name(f"sevpipe-{label}") + "."
    database = unique_name(f"sevpipe_{label}").replace("-", "_")
    run_async(_sql(services.postgres_dsn, f'CREATE DATABASE "{database}"'))
    dsn = urlsplit(services.postgres_dsn)._replace(path=f"/{database}").geturl()
    env = {
        "SEVPIPE_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
        "SEVPIPE_KAFKA_TOPIC_PREFIX": prefix,
        "SEVPIPE_POSTGRES_DSN": dsn,
        "SEVPIPE_REDIS_URL": services.redis_url,
    }
    try:
        yield Backend("production", env, prefix)
    finally:
        try:
            drop = f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'
            run_async(_sql(services.postgres_dsn, drop))
        finally:
            try:
                run_async(_delete_topics(services.kafka_bootstrap, prefix))
            except (KafkaError, OSError) as exc:  # leftovers are harmless: names are unique
                log.warning("could not delete topics %s*: %s", prefix, exc)


@contextlib.contextmanager
def backend_named(name: str, request: pytest.FixtureRequest) -> Iterator[Backend]:
    """``embedded``, or ``production`` on the session's services (started when needed)."""
    if name == "embedded":
        yield EMBEDDED
        return
    with production(request.getfixturevalue("services")) as prod:
        yield prod
