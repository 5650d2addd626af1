"""The Redis coordinator: locks, cooldowns and rate limits shared by every replica.

Each decision is one atomic command or Lua script, so replicas never interleave inside one.
Locks are redis-py's ``Lock`` (SET NX PX to take, token-checked scripts to release and
extend); cooldowns and rate limits are our own scripts. Time comes from the Redis server
(key expiry, ``TIME``), so the replicas' clocks do not have to agree.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.lock import Lock
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.retry import Retry

from store.base import StoreError, StoreUnavailable
from store.coordination import LockToken, RateDecision

# A cooldown is only ever lengthened (PTTL is -2 without a key).
_COOLDOWN = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('SET', KEYS[1], '1', 'PX', ms) end
return 0
"""
# Sliding window log: a sorted set of the allowed calls scored by server time in
# microseconds (exact in Lua's doubles). Returns {allowed, remaining, retry_after_us}.
_RATE = """
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
    redis.call('ZADD', KEYS[1], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], math.ceil(period / 1000))
    return {1, limit - count - 1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] == nil then return {0, 0, period} end
return {0, 0, tonumber(oldest[2]) + period - now}
"""


def _ms(seconds: float) -> int:
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, not {seconds}")
    return max(1, math.ceil(seconds * 1000))


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}: {exc}") from exc
    except redis.exceptions.RedisError as exc:
        raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc


class RedisCoordinator:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sevpipe:",
        timeout: float = 2.0,
        ca_file: Path | None = None,
    ) -> None:
        """``url``: redis:// or rediss:// (TLS, the server's certificate and host name
        checked against ``ca_file`` or the system's CAs); AUTH as user:password@ in it."""
        self._url = url  # may hold a password: never logged
        self._prefix = prefix
        self._timeout = timeout
        self._tls: dict[str, Any] = {}
        if url.startswith("rediss://"):
            self._tls = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
            if ca_file is not None:
                self._tls["ssl_ca_certs"] = str(ca_file)
        elif ca_file is not None:
            raise ValueError("a CA file is only used with a rediss:// (TLS) URL")
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    async def __aenter__(self) -> RedisCoordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect and check that Redis answers; ``StoreUnavailable`` if it does not."""
        if self._client is not None:
            return
        client = aioredis.Redis.from_url(
            self._url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            # One quick retry covers a pooled connection that died with a Redis restart;
            # longer outages are the caller's to back off from.
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
            **self._tls,
        )
        try:
            with _translated():
                await client.ping()
        except BaseException:
            await client.aclose()
            raise
        # EVALSHA with a fallback to loading the script: a restarted Redis has lost its cache.
        self._scripts = {s: client.register_script(s) for s in (_COOLDOWN, _RATE)}
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreUnavailable("coordinator is closed")
        return self._client

    async def _script(self, script: str, key: str, *args: str | int) -> Any:
        self._redis()  # closed -> StoreUnavailable
        with _translated():
            return await self._scripts[script](keys=[self._prefix + key], args=list(args))

    def _lock(self, name: str, ttl: float, token: str | None = None) -> Lock:
        # A LockToken is a plain value that outlives any Lock object, so a Lock is rebuilt
        # from it for each call; thread_local=False keeps the token on the object itself,
        # where redis-py's release/extend read it (tasks share the loop's one thread).
        # Lock truncates its timeout to whole ms; _ms keeps that at 1 ms or more.
        lock = Lock(
            self._redis(),
            self._prefix + "lock:" + name,
            timeout=_ms(ttl) / 1000,
            blocking=False,
            thread_local=False,
        )
        if token is not None:
            lock.local.token = token.encode()
        return lock

    async def acquire_lock(self, name: str, ttl: float) -> LockToken | None:
        token = secrets.token_hex(16)
        lock = self._lock(name, ttl)
        with _translated():
            ok = await lock.acquire(blocking=False, token=token)
        return LockToken(name, token) if ok else None

    async def extend_lock(self, token: LockToken, ttl: float) -> bool:
        lock = self._lock(token.name, ttl, token.token)
        with _translated():
            try:
                # replace_ttl: the contract is "ttl from now", not "ttl more than is left".
                await lock.extend(_ms(ttl) / 1000, replace_ttl=True)
            except redis.exceptions.LockNotOwnedError:
                return False
        return True

    async def release_lock(self, token: LockToken) -> bool:
        # The ttl only satisfies Lock's constructor; release does not use it.
        lock = self._lock(token.name, 1, token.token)
        with _translated():
            try:
                await lock.release()
            except redis.exceptions.LockNotOwnedError:
                return False
        return True

    async def start_cooldown(self, key: str, seconds: float) -> None:
        if seconds > 0:
            await self._script(_COOLDOWN, "cooldown:" + key, _ms(seconds))

    async def cooldown_remaining(self, key: str) -> float:
        client = self._redis()
        with _translated():
            left = await client.pttl(self._prefix + "cooldown:" + key)
        return max(int(left), 0) / 1000

    async def rate_limit(self, key: str, limit: int, period: float) -> RateDecision:
        period_us = _ms(period) * 1000
        allowed, remaining, wait_us = await self._script(
            _RATE, "rate:" + key, limit, period_us, secrets.token_hex(8)
        )
        return RateDecision(bool(allowed), int(remaining), int(wait_us) / 1_000_000)
