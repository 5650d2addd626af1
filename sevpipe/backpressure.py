"""Backpressure between the receiver and the classifier of one process (``sevpipe run``).

Receiver and classifier share the process's cores, and per alert classifying costs about what
receiving does: at full rate the receiver would accept alerts faster than they become
incidents, and an alert's incident change would trail its 200 by more the longer the load
lasts. So a webhook waits before its append while the classifier is more than ``limit``
events behind, woken as each batch is done. The wait is bounded: past ``timeout`` the
webhook is appended anyway (an alert is never refused for being early; a stalled classifier
shows in its lag and /readyz), so Alertmanager only ever sees slower 200s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter


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
