"""Which backends a process uses, chosen by settings: embedded unless a server is named."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from eventlog import EmbeddedLog, EventLog
from sevpipe.settings import Settings
from store import EmbeddedStore, IncidentStore

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
        )
    return EmbeddedLog(settings.eventlog_path, synchronous=settings.fsync, create=create)


def make_store(settings: Settings) -> IncidentStore:
    if settings.postgres_dsn:
        from store.postgres import PostgresStore  # noqa: PLC0415 - asyncpg only when asked for

        return PostgresStore(settings.postgres_dsn.get_secret_value())
    return EmbeddedStore(settings.store_path, synchronous=settings.fsync)


@contextlib.asynccontextmanager
async def open_eventlog(settings: Settings, *, create: bool = True) -> AsyncIterator[EventLog]:
    eventlog = make_eventlog(settings, create=create)
    await eventlog.start()
    try:
        yield eventlog
    finally:
        await eventlog.close()


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[IncidentStore]:
    store = make_store(settings)
    await store.start()
    try:
        yield store
    finally:
        await store.close()
