"""Backpressure between the receiver and the classifier.

In one process (``sevpipe run``) receiver and classifier share the process's cores, and per
alert classifying costs about what receiving does: at full rate the receiver would accept
alerts faster than they become incidents, and an alert's incident change would trail its 200
by more the longer the load lasts. So a webhook waits before its append while the classifier
is more than ``limit`` events behind, woken as each batch is done. The wait is bounded: past
``timeout`` the webhook is appended anyway (an alert is never refused for being early; a
stalled classifier shows in its lag and /readyz), so Alertmanager only ever sees slower 200s.

A receiver of its own (``sevpipe ingest``) reads the classifier group's committed lag from
the log instead (``LagWatch``): the processes of one machine share its cores just the same,
and on many machines the log then holds what the classifiers can take, not an ever longer
backlog. It paces only to a classifier that is consuming: when the group's commits have not
moved for ``stall_after`` seconds (none deployed, or stalled), webhooks are not held at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from eventlog import EventLogError, GroupLag

log = logging.getLogger(__name__)


class Backpressure:
    def __init__(
        self,
        lag: Callable[[], int],
        registry: CollectorRegistry,
        *,
        limit: int,
        timeout: float,
    ) -> None:
        self._lag = lag
        self.limit = limit
        self.timeout = timeout
        self._progress = asyncio.Event()
        self.held = Counter(
            "sevpipe_ingest_held_total",
            "Webhooks held before their append while the classifier caught up",
            registry=registry,
        )
        self.held_seconds = Counter(
            "sevpipe_ingest_held_seconds_total",
            "Time webhooks were held while the classifier caught up",
            registry=registry,
        )
        self.released = Counter(
            "sevpipe_ingest_held_timeouts_total",
            "Held webhooks appended anyway when the wait ran out (classifier stalled)",
            registry=registry,
        )

    def progressed(self) -> None:
        """The classifier finished a batch: waiters look at the lag again."""
        self._progress.set()
        self._progress = asyncio.Event()

    async def admit(self) -> None:
        """Return when the classifier is close enough behind, or ``timeout`` has passed."""
        if self._lag() <= self.limit:
            return
        self.held.inc()
        started = time.monotonic()
        deadline = started + self.timeout
        try:
            while self._lag() > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.released.inc()
                    return
                try:
                    await asyncio.wait_for(self._progress.wait(), left)
                except TimeoutError:
                    continue
        finally:
            self.held_seconds.inc(time.monotonic() - started)


class LagWatch:
    """The classifier group's lag as the log tells it, for a receiver in another process."""

    def __init__(
        self,
        read: Callable[[], Awaitable[GroupLag]],
        registry: CollectorRegistry,
        *,
        every: float = 0.25,
        stall_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._clock = clock
        self.every = every
        self.stall_after = stall_after
        self.behind = 0
        """What the receiver paces to: the group's lag while it consumes, else 0."""
        self.on_read: Callable[[], None] | None = None
        self._committed: int | None = None
        self._moved_at = -math.inf
        self._consuming = False
        self.lag = Gauge(
            "sevpipe_ingest_classifier_lag",
            "Events the classifier group had not committed past when the receiver last looked",
            registry=registry,
        )

    async def poll(self) -> None:
        try:
            seen = await self._read()
        except EventLogError as exc:
            # Cannot tell: the append itself will find out whether the log is there.
            log.debug("classifier lag unknown: %s", exc)
            self.behind = 0
        else:
            now = self._clock()
            if self._committed is not None and seen.committed != self._committed:
                self._moved_at = now
            self._committed = seen.committed
            consuming = now - self._moved_at <= self.stall_after
            if consuming != self._consuming:
                self._consuming = consuming
                log.info(
                    "classifier %s: webhooks %s",
                    "consuming" if consuming else "not consuming",
                    "paced to its lag" if consuming else "not held",
                )
            self.behind = seen.behind if consuming else 0
            self.lag.set(seen.behind)
        if self.on_read is not None:
            self.on_read()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)
