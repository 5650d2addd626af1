"""Which backends a process uses, chosen by settings: embedded unless a server is named."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeVar

from tenacity import AsyncRetrying, retry_if_exception, wait_exponential

from eventlog import EmbeddedLog, EventLog
from sevpipe.settings import Settings
from store import Coordinator, EmbeddedStore, IncidentStore, LocalCoordinator, RedisCoordinator
from store.effects import EffectsLedger
from store.effects_embedded import EmbeddedEffectsLedger

log = logging.getLogger(__name__)


def describe(settings: Settings) -> str:
    log_kind = f"kafka {settings.kafka_bootstrap}" if settings.kafka_bootstrap else "embedded log"
    store_kind = "postgresql" if settings.postgres_dsn else "embedded store"
    redis_kind = "redis" if settings.redis_url else "in-process locks"
    return f"{log_kind}, {store_kind}, {redis_kind}"


def make_eventlog(settings: Settings, *, create: bool = True) -> EventLog:
    """The log the settings name; ``create=False`` refuses to make a new embedded log
    (readers such as replay), where Kafka topics are sevpipe's own and always made."""
    if settings.kafka_bootstrap:
        from eventlog.kafka import KafkaLog  # noqa: PLC0415 - aiokafka only when asked for

        return KafkaLog(
            settings.kafka_bootstrap,
            client_id="sevpipe",
            partitions=settings.kafka_partitions,
            replication=settings.kafka_replication,
            topic_prefix=settings.kafka_topic_prefix,
            alerts_retention_ms=int(settings.kafka_alerts_retention * 1000),
        )
    return EmbeddedLog(settings.eventlog_path, synchronous=settings.fsync, create=create)


def make_store(settings: Settings) -> IncidentStore:
    if settings.postgres_dsn:
        from store.postgres import PostgresStore  # noqa: PLC0415 - asyncpg only when asked for

        return PostgresStore(settings.postgres_dsn.get_secret_value())
    return EmbeddedStore(settings.store_path, synchronous=settings.fsync)


class _Backend(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


B = TypeVar("B", bound=_Backend)


@contextlib.asynccontextmanager
async def _opened(make: Callable[[], B], what: str, *, wait: bool) -> AsyncIterator[B]:
    """A backend, started for the block and closed after it."""
    backend = await _start(make, what, wait=wait)
    try:
        yield backend
    finally:
        await backend.close()


async def _start(make: Callable[[], B], what: str, *, wait: bool) -> B:
    """Start a backend; with ``wait``, wait out a server that is not up yet (a deploy where
    sevpipe starts before Kafka or PostgreSQL) instead of exiting at once."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(lambda e: wait and bool(getattr(e, "retriable", False))),
        wait=wait_exponential(multiplier=0.5, max=30),
        before_sleep=lambda rs: log.warning(
            "waiting for %s: %s", what, rs.outcome.exception() if rs.outcome else "?"
        ),
        reraise=True,
    ):
        with attempt:
            backend = make()
            try:
                await backend.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await backend.close()
                raise
            return backend
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.asynccontextmanager
async def open_eventlog(
    settings: Settings, *, create: bool = True, wait: bool = False
) -> AsyncIterator[EventLog]:
    """The log, started. ``wait`` (servers) waits for Kafka to be reachable."""
    async with _opened(
        lambda: make_eventlog(settings, create=create),
        "kafka" if settings.kafka_bootstrap else "the event log",
        wait=wait and bool(settings.kafka_bootstrap),
    ) as eventlog:
        yield eventlog


@contextlib.asynccontextmanager
async def open_store(settings: Settings, *, wait: bool = False) -> AsyncIterator[IncidentStore]:
    """The store, started. ``wait`` (servers) waits for PostgreSQL to be reachable."""
    async with _opened(
        lambda: make_store(settings),
        "postgresql" if settings.postgres_dsn else "the store",
        wait=wait and bool(settings.postgres_dsn),
    ) as store:
        yield store


def make_effects_ledger(settings: Settings) -> EffectsLedger:
    """PostgreSQL when a DSN is set (the replicas of a stage share it), else SQLite in the
    data dir. The embedded ledger is always fsynced fully, whatever ``settings.fsync`` says."""
    if settings.postgres_dsn:
        from store.effects_postgres import PostgresEffectsLedger  # noqa: PLC0415 - asyncpg

        return PostgresEffectsLedger(settings.postgres_dsn.get_secret_value())
    return EmbeddedEffectsLedger(settings.effects_path)


@contextlib.asynccontextmanager
async def open_effects_ledger(
    settings: Settings, *, wait: bool = False
) -> AsyncIterator[EffectsLedger]:
    """The effects ledger, started. ``wait`` (servers) waits for PostgreSQL to be reachable."""
    async with _opened(
        lambda: make_effects_ledger(settings),
        "postgresql" if settings.postgres_dsn else "the effects ledger",
        wait=wait and bool(settings.postgres_dsn),
    ) as ledger:
        yield ledger


@contextlib.asynccontextmanager
async def open_coordinator(settings: Settings, *, wait: bool = False) -> AsyncIterator[Coordinator]:
    """Locks, cooldowns and rate limits: on Redis when ``redis_url`` is set, else in-process."""
    url = settings.redis_url
    # Several installs on one Kafka cluster (kafka_topic_prefix) share Redis the same way.
    prefix = f"sevpipe:{settings.kafka_topic_prefix}"

    def make() -> Coordinator:
        return RedisCoordinator(url, prefix=prefix) if url else LocalCoordinator()

    async with _opened(make, "redis" if url else "the coordinator", wait=wait and bool(url)) as c:
        yield c
