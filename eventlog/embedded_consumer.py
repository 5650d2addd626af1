"""The embedded log's consumer: one member per group, woken by appends in this process."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import TYPE_CHECKING

from eventlog.base import LogClosed, LogUnavailable, Record

if TYPE_CHECKING:
    from eventlog.embedded import EmbeddedLog


class EmbeddedSubscription:
    """The only member of its group (the embedded log runs in one process)."""

    def __init__(self, log_: EmbeddedLog, topics: tuple[str, ...], group: str) -> None:
        self._log = log_
        self._topics = topics
        self._group = group
        self._position: int | None = None  # last seq fetched
        self._committed: int | None = None

    async def fetch(self, max_records: int = 500, max_wait: float = 1.0) -> list[Record]:
        lg = self._log
        if self._position is None:
            committed = await lg._in_reader(lambda: lg._committed(self._group, self._topics))
            self._position = self._committed = committed - 1 if committed else 0
        wakeup = lg._wakeup
        after = self._position
        records = await lg._in_reader(lambda: lg._select(self._topics, after, max_records))
        if not records and not lg._closed:
            # An append in this process wakes us at once; the timeout only covers writers
            # in other processes.
            try:
                await asyncio.wait_for(wakeup.wait(), max_wait)
            except TimeoutError:
                return []
            records = await lg._in_reader(lambda: lg._select(self._topics, after, max_records))
        if records:
            self._position = records[-1].offset
        return records

    async def commit(self) -> None:
        position = self._position
        if position is None or position == self._committed:
            return
        if self._log._closed:
            raise LogClosed("event log is closed; offsets not committed")
        try:
            await self._log._in_writer(
                lambda: self._log._commit(self._group, self._topics, position + 1)
            )
        except sqlite3.Error as exc:
            raise LogUnavailable(f"offset commit failed: {exc}") from exc
        self._committed = position

    def lag(self) -> dict[tuple[str, int], int]:
        """Offsets between this consumer and the newest event of its topics: 0 when it has
        them all (offsets are log-wide here, so other topics' events between count too)."""
        if self._position is None:
            return {}
        newest = max((self._log.last_of_topic.get(t, 0) for t in self._topics), default=0)
        return {(",".join(self._topics), 0): max(0, newest - self._position)}

    async def close(self) -> None:
        self._position = None
