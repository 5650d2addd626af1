"""Which backends a process uses, chosen by settings: embedded unless a server is named."""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from tenacity import AsyncRetrying, retry_if_exception, wait_exponential

from eventlog import EmbeddedLog, EventLog
from sevpipe.settings import Settings, SettingsError
from store import Coordinator, EmbeddedStore, IncidentStore, LocalCoordinator, RedisCoordinator
from store.effects import EffectsLedger
from store.effects_embedded import EmbeddedEffectsLedger

if TYPE_CHECKING:
    from eventlog.kafka_security import KafkaSecurity

log = logging.getLogger(__name__)


def describe(settings: Settings) -> str:
    log_kind = f"kafka {settings.kafka_bootstrap}" if settings.kafka_bootstrap else "embedded log"
    store_kind = "postgresql" if settings.postgres_dsn else "embedded store"
    redis_kind = "redis" if settings.redis_url else "in-process locks"
    return f"{log_kind}, {store_kind}, {redis_kind}"


def kafka_security(settings: Settings) -> KafkaSecurity:
    """The Kafka clients' TLS and SASL; a combination that does not fit fails naming the key."""
    from eventlog.kafka_security import KafkaSecurity, KafkaSecurityError  # noqa: PLC0415

    password = settings.kafka_sasl_password
    secret: str | None = password.get_secret_value() if password is not None else None
    if secret is None and settings.kafka_sasl_password_file is not None:
        path = settings.kafka_sasl_password_file
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(
                f"kafka_sasl_password_file: cannot read {path}: {exc.strerror}"
            ) from None
    security = KafkaSecurity(
        protocol=settings.kafka_security_protocol,
        sasl_mechanism=settings.kafka_sasl_mechanism,
        sasl_username=settings.kafka_sasl_username,
        sasl_password=secret,
        ssl_cafile=settings.kafka_ssl_cafile,
        ssl_certfile=settings.kafka_ssl_certfile,
        ssl_keyfile=settings.kafka_ssl_keyfile,
    )
    try:
        security.client_args()  # checks the combination and reads the files
    except KafkaSecurityError as exc:
        raise SettingsError(str(exc)) from None
    return security


def postgres_ssl(settings: Settings) -> ssl.SSLContext | bool | None:
    """What asyncpg's ``ssl`` gets from postgres_sslmode; None leaves it to the DSN."""
    from store.pg_pool import PgTlsError, pg_ssl  # noqa: PLC0415 - asyncpg only when asked for

    try:
        return pg_ssl(settings.postgres_sslmode, settings.postgres_sslrootcert)
    except PgTlsError as exc:
        raise SettingsError(str(exc)) from None


def redis_ca_file(settings: Settings) -> Path | None:
    """The CA file for Redis over TLS, checked against the URL."""
    ca_file = settings.redis_ca_file
    if ca_file is None:
        return None
    if not (settings.redis_url or "").startswith("rediss://"):
        raise SettingsError("redis_ca_file: only used with a rediss:// (TLS) redis_url")
    if not ca_file.is_file():
        raise SettingsError(f"redis_ca_file: {ca_file} is not a file")
    return ca_file


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
            security=kafka_security(settings),
        )
    return EmbeddedLog(settings.eventlog_path, synchronous=settings.fsync, create=create)


def make_store(settings: Settings) -> IncidentStore:
    if settings.postgres_dsn:
        from store.postgres import PostgresStore  # noqa: PLC0415 - asyncpg only when asked for

        dsn = settings.postgres_dsn.get_secret_value()
        return PostgresStore(dsn).use_ssl(postgres_ssl(settings))
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

        dsn = settings.postgres_dsn.get_secret_value()
        return PostgresEffectsLedger(dsn).use_ssl(postgres_ssl(settings))
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

    ca_file = redis_ca_file(settings)

    def make() -> Coordinator:
        return RedisCoordinator(url, prefix=prefix, ca_file=ca_file) if url else LocalCoordinator()

    async with _opened(make, "redis" if url else "the coordinator", wait=wait and bool(url)) as c:
        yield c
