"""The in-process coordinator: the embedded default's twin of the Redis one.

One process runs every stage there, so plain dicts on the event loop are enough (no awaits
inside a decision, so no interleaving). Time is the monotonic clock: a wall-clock step must
not end or stretch a cooldown.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable

from store.coordination import LockToken, RateDecision

# Expired entries are dropped when their key is touched, and all of them whenever a table
# has grown by this many keys since the last sweep, so unused keys cannot pile up.
_SWEEP_EVERY = 1024


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, not {seconds}")
    return seconds


class LocalCoordinator:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._locks: dict[str, tuple[str, float]] = {}
        self._cooldowns: dict[str, float] = {}
        self._windows: dict[str, deque[float]] = {}
        self._sweep_at = _SWEEP_EVERY

    async def __aenter__(self) -> LocalCoordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _sweep(self, now: float) -> None:
        size = len(self._locks) + len(self._cooldowns) + len(self._windows)
        if size < self._sweep_at:
            return
        self._locks = {k: v for k, v in self._locks.items() if v[1] > now}
        self._cooldowns = {k: v for k, v in self._cooldowns.items() if v > now}
        self._windows = {k: v for k, v in self._windows.items() if v and v[-1] > now}
        size = len(self._locks) + len(self._cooldowns) + len(self._windows)
        self._sweep_at = size + _SWEEP_EVERY

    def _holder(self, name: str, now: float) -> str | None:
        held = self._locks.get(name)
        if held is None:
            return None
        if held[1] <= now:
            del self._locks[name]
            return None
        return held[0]

    async def acquire_lock(self, name: str, ttl: float) -> LockToken | None:
        now = self._clock()
        expires = now + _positive(ttl)
        self._sweep(now)
        if self._holder(name, now) is not None:
            return None
        token = secrets.token_hex(16)
        self._locks[name] = (token, expires)
        return LockToken(name, token)

    async def extend_lock(self, token: LockToken, ttl: float) -> bool:
        now = self._clock()
        expires = now + _positive(ttl)
        if self._holder(token.name, now) != token.token:
            return False
        self._locks[token.name] = (token.token, expires)
        return True

    async def release_lock(self, token: LockToken) -> bool:
        if self._holder(token.name, self._clock()) != token.token:
            return False
        del self._locks[token.name]
        return True

    async def start_cooldown(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        now = self._clock()
        self._sweep(now)
        until = now + seconds
        if until > self._cooldowns.get(key, now):
            self._cooldowns[key] = until

    async def cooldown_remaining(self, key: str) -> float:
        until = self._cooldowns.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._cooldowns[key]
            return 0.0
        return left

    async def rate_limit(self, key: str, limit: int, period: float) -> RateDecision:
        _positive(period)
        now = self._clock()
        self._sweep(now)
        # The deque holds the expiry time of each allowed call in the window, oldest first.
        window = self._windows.setdefault(key, deque())
        while window and window[0] <= now:
            window.popleft()
        if len(window) < limit:
            window.append(now + period)
            return RateDecision(True, limit - len(window), 0.0)
        retry_after = window[0] - now if window else period
        return RateDecision(False, 0, retry_after)
