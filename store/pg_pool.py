"""The asyncpg pool both PostgreSQL backends (the store, the effects ledger) stand on.

One place decides what an asyncpg or network error means to a caller (retriable or not),
and how a pool opens (migrated before it is used) and closes (never hanging shutdown).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import ClassVar, Literal, Self

import asyncpg

from store.base import StoreConflict, StoreError, StoreUnavailable
from store.migrations import migrate

# The server or the network is (for now) not there: wait and try again.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, cannot connect now, timeouts
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.InterfaceError,  # the connection was closed under us
    OSError,  # ConnectionRefusedError, resets, and TimeoutError
)


SslMode = Literal["disable", "require", "verify-ca", "verify-full"]


class PgTlsError(StoreError):
    """TLS settings for PostgreSQL that cannot be used; the message names the setting."""


def pg_ssl(mode: SslMode | None, rootcert: Path | None = None) -> ssl.SSLContext | bool | None:
    """asyncpg's ``ssl`` for a libpq ``sslmode``: None leaves it to the DSN (asyncpg: prefer).

    ``require`` encrypts without checking the server's certificate (as libpq, it checks the
    CA when a root certificate is given); ``verify-ca`` checks it against ``rootcert`` (or
    the system's CAs); ``verify-full`` also checks that the host name matches it.
    """
    if mode is None:
        if rootcert is not None:
            raise PgTlsError("postgres_sslrootcert: needs postgres_sslmode")
        return None
    if mode == "disable":
        if rootcert is not None:
            raise PgTlsError("postgres_sslrootcert: not used with postgres_sslmode disable")
        return False
    try:
        context = ssl.create_default_context(cafile=rootcert)
    except (OSError, ssl.SSLError) as exc:
        raise PgTlsError(f"postgres_sslrootcert: cannot load {rootcert}: {exc}") from None
    context.check_hostname = mode == "verify-full"
    if mode == "require" and rootcert is None:
        context.verify_mode = ssl.CERT_NONE
    return context


@contextmanager
def translated() -> Iterator[None]:
    """asyncpg's and the network's errors as the store's (retriable or not)."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"postgres unavailable: {type(exc).__name__}: {exc}") from exc
    except asyncpg.exceptions.TransactionRollbackError as exc:
        # A deadlock or serialisation failure: the transaction wrote nothing; decide again.
        raise StoreConflict(f"postgres rolled back: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise StoreError(f"postgres: {type(exc).__name__}: {exc}") from exc


class PgPool:
    """What a PostgreSQL backend is beyond its queries: an asyncpg pool, opened on ``start``
    with the schema brought up to date, and closed without ever hanging shutdown.

    A backend extends it, names itself in ``NAME`` ("store is closed") and takes its
    connections from ``_connection``.
    """

    NAME: ClassVar[str]

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float = 5.0,
        migration_timeout: float = 300.0,
    ) -> None:
        self._dsn = dsn  # may hold a password: never logged
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout = command_timeout
        self._migration_timeout = migration_timeout
        self._pool: asyncpg.Pool | None = None
        self._ssl: ssl.SSLContext | bool | None = None

    def use_ssl(self, value: ssl.SSLContext | bool | None) -> Self:
        """Connect with asyncpg's ``ssl`` (``pg_ssl``) instead of what the DSN says; before
        ``start``. A method, not an argument, so every backend on this pool takes it."""
        self._ssl = value
        return self

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the pool and bring the schema up to date; ``StoreUnavailable`` if unreachable."""
        if self._pool is not None:
            return
        with translated():
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                command_timeout=self._command_timeout,
                timeout=self._command_timeout,  # connecting, too, must not hang the stage
                **({} if self._ssl is None else {"ssl": self._ssl}),
            )
        try:
            with translated():
                async with pool.acquire(timeout=self._command_timeout) as conn:
                    await migrate(conn, statement_timeout=self._migration_timeout)
        except BaseException:
            # Not handed out half-ready: a failed start leaves nothing open behind it.
            pool.terminate()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self._command_timeout)
        except UNAVAILABLE:  # TimeoutError is an OSError
            # Shutdown must finish: whatever did not close politely is cut.
            pool.terminate()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; errors inside the block come out translated."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable(f"{self.NAME} is closed")
        with translated():
            async with pool.acquire(timeout=self._command_timeout) as conn:
                yield conn
