"""The SQLite plumbing both embedded backends (the store, the effects ledger) stand on.

One connection, used only from one worker thread, so the event loop never waits on the disk
and SQLite's connection is never shared between threads. Every SQLite error is
``StoreUnavailable`` to the caller: a locked, full or vanished file may well come back.
"""

from __future__ import annotations

import asyncio
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar, Literal, Self, TypeVar

from store.base import StoreUnavailable

T = TypeVar("T")


class SqliteWorker(ABC):
    """What an embedded backend is beyond its queries: a WAL-mode SQLite file and the one
    thread that uses it.

    A backend extends it, names itself in ``NAME`` (errors) and ``THREAD`` (the thread),
    creates or upgrades its schema in ``_init_schema`` and runs its queries through ``_run``.
    """

    NAME: ClassVar[str]
    THREAD: ClassVar[str]

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["full", "normal"] = "full",
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = path
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=self.THREAD)
        self._conn: sqlite3.Connection | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abstractmethod
    def _init_schema(self, conn: sqlite3.Connection) -> None:
        """Create or upgrade the backend's tables; on the worker thread, once opened."""

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_timeout
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
        self._init_schema(conn)
        self._conn = conn

    async def start(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._open)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.NAME} {self.path}: {exc}") from exc

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, conn.close)
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """``fn`` on the worker thread; with ``write``, in one transaction of its own."""

        def call() -> T:
            conn = self._conn
            if conn is None:
                raise StoreUnavailable(f"{self.NAME} is closed")
            if not write:
                return fn(conn)
            # IMMEDIATE takes the write lock before reading, so two processes sharing the
            # file cannot both read the same state and both act on it (e.g. grant a claim).
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return result

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.NAME} {self.path}: {exc}") from exc
        except RuntimeError as exc:  # the thread was shut down: the owner is closed
            raise StoreUnavailable(f"{self.NAME} {self.path} is closed") from exc
