"""The stage runtime: the one poll loop every consuming stage runs on.

A stage is a ``Handler``: its name, its topics, and ``handle(records)``, which decides,
stores and appends its outputs. The runtime owns the rest:

- one long-lived subscription, polled in one loop. A fetch in flight is never cancelled (a
  cancelled aiokafka ``getmany`` leaks its fetch context and defeats max_poll_interval):
  shutdown sets the stop event, and the loop ends when the fetch returns (within
  ``max_wait``) and the batch in hand is handled and committed.
- commit only after ``handle`` returned, so outputs are durable first (at-least-once).
- an error with ``retriable = True`` (a backend away) is retried with jittered exponential
  backoff, for as long as it lasts; the stage is not ready meanwhile.
- any other error means some input is bad: the batch is split in halves until the records
  that fail are found, the good ones are handled in order, and each failing one goes to
  ``sevpipe.deadletter``; then the stage commits past them. One poison record never stops a
  pipeline.

``handle`` may see a record again: after a crash (at-least-once), and while a batch is
split (a failed call may have done part of its work). Stages are idempotent by design
(DESIGN, delivery semantics), so a second look finds the work done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar, Token
from typing import Protocol, TypeVar, runtime_checkable

import orjson
from prometheus_client import CollectorRegistry
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_random_exponential,
)

from eventlog import EventLog, Record, Subscription
from runtime.deadletter import DeadLetters
from runtime.metrics import StageMetrics
from schemas import TOPIC_ACTIONS, TOPIC_INCIDENTS, TOPIC_NOTIFICATIONS

log = logging.getLogger(__name__)

T = TypeVar("T")

EVENT_ID: ContextVar[str | None] = ContextVar("sevpipe_event_id", default=None)
INCIDENT_ID: ContextVar[str | None] = ContextVar("sevpipe_incident_id", default=None)
"""What the work in hand is about, for the logs (``sevpipe.logs`` adds them to JSON lines):
set by the runtime while a stage handles one record, and by a stage around its work on one
event or incident (``about``)."""

_KEYED_BY_INCIDENT = frozenset({TOPIC_INCIDENTS, TOPIC_ACTIONS, TOPIC_NOTIFICATIONS})


@contextlib.contextmanager
def about(*, event_id: str | None = None, incident_id: str | None = None) -> Iterator[None]:
    """Log lines written inside carry these ids (those given; the others stay as they are)."""
    tokens: list[tuple[ContextVar[str | None], Token[str | None]]] = [
        (var, var.set(value))
        for var, value in ((EVENT_ID, event_id), (INCIDENT_ID, incident_id))
        if value is not None
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def about_record(record: Record) -> contextlib.AbstractContextManager[None]:
    """``about`` one record: its event id (when its JSON says one) and, on the topics keyed
    by incident, its incident. Reads the raw JSON, leaving the record's decoding as it was."""
    try:
        found = orjson.loads(record.raw).get("id")
    except (ValueError, AttributeError):  # not JSON, not an object: the dead letter says so
        found = None
    incident = record.key if record.topic in _KEYED_BY_INCIDENT else None
    return about(event_id=found if isinstance(found, str) else None, incident_id=incident)


class Handler(Protocol):
    """A consuming stage, as the runtime drives it."""

    @property
    def name(self) -> str:
        """The stage's name (``classifier``): metrics label, dead-letter key and source."""
        ...

    @property
    def topics(self) -> Sequence[str]:
        """The topics it consumes."""
        ...

    async def handle(self, records: Sequence[Record]) -> None:
        """Decide, store and append the outputs of ``records``; durable when it returns.

        Raise an exception with ``retriable = True`` while a backend is away: the same
        records come again after a backoff. Anything else means some record is bad, and
        must be raised too: a record that cannot be decoded (``record.decode`` raises) is
        never skipped in silence, so that it reaches the dead letters.
        """
        ...


@runtime_checkable
class Ticks(Protocol):
    """A handler with periodic work (relay an outbox, fire timers), run before every poll,
    so at least every ``max_wait`` seconds; throttle inside if it is costly. A retriable
    error is waited out; any other ends the stage (it is a bug, not bad input)."""

    async def tick(self) -> None: ...


def is_retriable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retriable", False))


class _Stopped(Exception):
    """Raised instead of another retry once shutdown has begun."""


class StageRuntime:
    """Runs one handler on one consumer group until the stop event is set."""

    def __init__(
        self,
        eventlog: EventLog,
        handler: Handler,
        registry: CollectorRegistry,
        *,
        group: str,
        batch_size: int = 500,
        max_wait: float = 0.5,
        max_backoff: float = 30.0,
        commit_attempts: int = 5,
    ) -> None:
        if batch_size < 1 or max_wait <= 0 or max_backoff <= 0 or commit_attempts < 1:
            raise ValueError("batch_size, max_wait, max_backoff and commit_attempts must be > 0")
        self.name = handler.name
        self.group = group
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.max_backoff = max_backoff
        self.commit_attempts = commit_attempts
        self._log = eventlog
        self._handler = handler
        self._deadletters = DeadLetters(eventlog, handler.name)
        self._metrics = StageMetrics.of(registry)
        self._stop = asyncio.Event()  # run()'s, once it runs
        self._sub: Subscription | None = None
        self._backing_off = False
        self._show_ready()

    # -- what the process asks -------------------------------------------------------------

    def ready(self) -> bool:
        """True while consuming; false before and after ``run``, and while backing off."""
        return self._sub is not None and not self._backing_off

    def lag(self) -> dict[tuple[str, int], int]:
        """Per (topic, partition): how far the stage is behind the log's end."""
        lag = getattr(self._sub, "lag", None)
        return dict(lag()) if callable(lag) else {}

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish the batch in hand, commit, close.

        Outages are waited out; a batch whose backend is still away at shutdown is left
        uncommitted (it comes again on the next start).
        """
        if self._sub is not None:
            raise RuntimeError(f"stage {self.name} is running already")
        self._stop = stop
        sub = self._log.subscribe(list(self._handler.topics), self.group)
        self._sub = sub
        self._show_ready()
        log.info("%s: consuming %s as %s", self.name, ", ".join(self._handler.topics), self.group)
        try:
            await self._loop(sub)
        except _Stopped:
            log.info("%s: stopped while waiting out an outage", self.name)
        finally:
            self._sub = None
            self._backing_off = False
            self._show_ready()
            await sub.close()
        log.info("%s: stopped", self.name)

    async def _loop(self, sub: Subscription) -> None:
        tick = self._handler.tick if isinstance(self._handler, Ticks) else None
        while not self._stop.is_set():
            if tick is not None:
                await self._retrying("tick", tick)
                if self._stop.is_set():
                    break
            records = await self._retrying(
                "fetch", lambda: sub.fetch(self.batch_size, max_wait=self.max_wait)
            )
            if records:
                await self._batch(sub, records)

    async def _batch(self, sub: Subscription, records: Sequence[Record]) -> None:
        started = time.perf_counter()
        handled = await self._handle(records)
        self._metrics.batch_seconds.labels(self.name).observe(time.perf_counter() - started)
        self._metrics.records.labels(self.name).inc(handled)
        await self._commit(sub)

    async def _handle(self, records: Sequence[Record], *, whole: bool = True) -> int:
        """Handle ``records`` in order, dead-lettering those that fail; how many were handled.

        Halving finds one poison record in a batch of n with about 2 log2(n) calls. While
        one record is in hand, log lines carry its ids (``about_record``).
        """
        if len(records) == 1:
            with about_record(records[0]):
                return await self._handle_some(records, whole=whole)
        return await self._handle_some(records, whole=whole)

    async def _handle_some(self, records: Sequence[Record], *, whole: bool) -> int:
        try:
            await self._retrying("handle", lambda: self._handler.handle(records))
        except _Stopped:
            raise
        except Exception as exc:  # noqa: BLE001 - not retriable: some record here is poison
            if len(records) == 1:
                await self._dead_letter(records[0], exc)
                return 0
            if whole:  # once per batch; each poison record found is logged on its own
                log.warning(
                    "%s: a batch of %d records failed (%s: %s); splitting it to find the poison",
                    self.name,
                    len(records),
                    type(exc).__name__,
                    exc,
                )
            half = len(records) // 2
            first = await self._handle(records[:half], whole=False)  # in order: first half first
            return first + await self._handle(records[half:], whole=False)
        return len(records)

    async def _dead_letter(self, record: Record, exc: Exception) -> None:
        event, appended = await self._retrying(
            "deadletter", lambda: self._deadletters.send(record, exc)
        )
        reason = event.data["reason"]
        if appended:
            self._metrics.deadletters.labels(self.name, reason).inc()
        log.error(
            "%s: %s[%d]@%d is a dead letter (%s%s): %s: %s",
            self.name,
            record.topic,
            record.partition,
            record.offset,
            reason,
            "" if appended else ", recorded before",
            event.data["error_type"],
            event.data["error"],
            exc_info=exc if reason == "failed" else None,  # a bug's traceback is the clue
        )

    async def _commit(self, sub: Subscription) -> None:
        try:
            await self._retrying("commit", sub.commit, attempts=self.commit_attempts)
        except _Stopped:
            raise
        except Exception as exc:
            if not is_retriable(exc):
                raise
            # The outputs are durable, so an uncommitted batch only comes again (and finds
            # its work done); the next commit covers it. Retrying here for good could wedge
            # the stage: a Kafka member that sat out max_poll_interval (a long outage in
            # handle) cannot commit until its next fetch has rejoined the group.
            log.warning(
                "%s: commit failed (%s); going on, the next commit covers it", self.name, exc
            )

    # -- backoff ---------------------------------------------------------------------------

    async def _retrying(
        self, step: str, fn: Callable[[], Awaitable[T]], *, attempts: int | None = None
    ) -> T:
        """``fn()``, retried with backoff while it raises retriable errors.

        Once the stop event is set no new attempt starts (``_Stopped`` instead); the first
        attempt of a step still runs, so the batch in hand is finished and committed.
        """
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_retriable),
            wait=wait_random_exponential(multiplier=0.2, max=self.max_backoff),
            stop=stop_after_attempt(attempts) if attempts else stop_never,
            sleep=self._pause,
            before_sleep=lambda state: self._on_retry(step, state),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1 and self._stop.is_set():
                        raise _Stopped
                    return await fn()
        finally:
            if self._backing_off:
                self._backing_off = False
                self._show_ready()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pause(self, seconds: float) -> None:
        # A long backoff must not hold up shutdown: the stop event ends the pause.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _on_retry(self, step: str, state: RetryCallState) -> None:
        if not self._backing_off:
            self._backing_off = True
            self._show_ready()
        self._metrics.retries.labels(self.name, step).inc()
        exc = state.outcome.exception() if state.outcome is not None else None
        pause = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "%s: %s failed (%s); retrying in %.1f s (attempt %d)",
            self.name,
            step,
            exc,
            pause,
            state.attempt_number,
        )

    def _show_ready(self) -> None:
        self._metrics.ready.labels(self.name).set(1 if self.ready() else 0)
