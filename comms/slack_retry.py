"""Slack calls made patient: in-process retries of what is worth retrying (tenacity, Retry-After
honoured, bounded in time) and one post per second per channel, Slack's own limit."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

import aiohttp
from slack_sdk.errors import SlackApiError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

from comms.channel import ChannelRefused, ChannelRetry

log = logging.getLogger("comms.slack")

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

MAX_ATTEMPTS: Final = 8
# Slack answers these with ok:false yet means "try again", not "never".
TRANSIENT_ERRORS: Final = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


class Transient(Exception):
    """A failure worth retrying. ``ambiguous``: the request may have taken effect anyway."""

    def __init__(self, what: str, retry_after: float | None = None, ambiguous: bool = False):
        super().__init__(what)
        self.retry_after = retry_after
        self.ambiguous = ambiguous


def retry_after_of(headers: Mapping[str, Any] | None) -> float | None:
    try:
        value = float((headers or {}).get("Retry-After", ""))
    except ValueError:
        return None
    return max(value, 0.0) if math.isfinite(value) else None


def api_failure(method: str, exc: SlackApiError) -> Exception:
    response = exc.response
    status = int(response.status_code)
    data = response.data
    code = data.get("error") if isinstance(data, dict) else None
    error = str(code) if code else f"http_{status}"
    if status == 429 or error == "ratelimited":
        return Transient(f"{method}: ratelimited", retry_after=retry_after_of(response.headers))
    if status >= 500 or error in TRANSIENT_ERRORS:
        return Transient(f"{method}: {error}", ambiguous=True)
    return ChannelRefused(error, detail=method)


def io_failure(what: str, exc: BaseException) -> Transient:
    # Refused connections never reached Slack; anything later might have.
    never_sent = isinstance(exc, aiohttp.ClientConnectorError)
    return Transient(f"{what}: {type(exc).__name__}", ambiguous=not never_sent)


def _wait(fallback: Callable[[RetryCallState], float]) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return exc.retry_after
        return fallback(state)

    return wait


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("slack %s; retrying in %.1fs", exc, state.upcoming_sleep)


class Retrier:
    """Retries ``Transient`` failures in-process for a bounded time, then ``ChannelRetry``."""

    def __init__(self, max_seconds: float, sleep: Sleep) -> None:
        self._max_seconds = max_seconds
        self._sleep = sleep

    async def run(self, attempt: Callable[[], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Transient),
            wait=_wait(wait_exponential(multiplier=0.5, max=8) + wait_random(0, 0.5)),
            stop=stop_before_delay(self._max_seconds) | stop_after_attempt(MAX_ATTEMPTS),
            sleep=self._sleep,
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            async for try_ in retrying:
                with try_:
                    return await attempt()
        except Transient as exc:
            raise ChannelRetry(f"slack {exc}", retry_after=exc.retry_after) from None
        raise AssertionError("tenacity ended without an outcome")


class Pacer:
    """At most one post per ``interval`` seconds to each Slack channel (Slack's own limit)."""

    def __init__(self, interval: float, clock: Callable[[], float], sleep: Sleep) -> None:
        self._interval = interval
        self._clock = clock
        self._sleep = sleep
        self._locks: dict[str, asyncio.Lock] = {}
        self._last: dict[str, float] = {}

    @asynccontextmanager
    async def slot(self, channel: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(channel, asyncio.Lock())
        async with lock:
            wait = self._last.get(channel, -math.inf) + self._interval - self._clock()
            if wait > 0:
                await self._sleep(wait)
            try:
                yield
            finally:
                self._last[channel] = self._clock()
                self._forget_idle()

    def mark(self, channel: str) -> None:
        """Count a post to ``channel`` made under another name of it (``#sre`` for its id)."""
        self._locks.setdefault(channel, asyncio.Lock())
        self._last[channel] = self._clock()

    def _forget_idle(self) -> None:
        # Incident channels come and go; keep only the ones that could still make us wait.
        if len(self._last) < 256:
            return
        horizon = self._clock() - self._interval
        for channel, last in list(self._last.items()):
            if last < horizon and not self._locks[channel].locked():
                del self._last[channel], self._locks[channel]
