"""Coordination between replicas of the actions stage: locks, cooldowns and rate limits.

Two backends share this protocol: Redis for production (several processes) and an in-process
twin for the embedded default (one process). Neither is a fencing lock service: a lock holds
for its ``ttl`` and then lapses, so a holder whose work may outlast it calls ``extend_lock``.
Release and extension check the token, so a holder whose lock already lapsed (and was taken
by someone else) can neither release nor extend the new holder's lock.

Rate limits use a sliding window log: a call is allowed when fewer than ``limit`` calls were
allowed in the last ``period`` seconds. Denied calls are not counted, so a caller that keeps
asking is let through as soon as the oldest allowed call leaves the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class LockToken:
    """Proof of holding lock ``name``; ``token`` is random per acquisition."""

    name: str
    token: str


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    remaining: int
    """Calls still allowed in the current window after this one."""
    retry_after: float
    """Seconds until a call would be allowed again; 0 when this one was allowed."""


@runtime_checkable
class Coordinator(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def acquire_lock(self, name: str, ttl: float) -> LockToken | None:
        """The lock for ``ttl`` seconds, or None if someone else holds it. Never waits."""
        ...

    async def extend_lock(self, token: LockToken, ttl: float) -> bool:
        """Hold the lock ``ttl`` seconds from now; False if it is no longer ours."""
        ...

    async def release_lock(self, token: LockToken) -> bool:
        """Release if still ours; False if it lapsed (and maybe belongs to someone else)."""
        ...

    async def start_cooldown(self, key: str, seconds: float) -> None:
        """Start a cooldown of ``seconds``; it never shortens one already running."""
        ...

    async def cooldown_remaining(self, key: str) -> float:
        """Seconds left of the cooldown on ``key``; 0 when there is none."""
        ...

    async def rate_limit(self, key: str, limit: int, period: float) -> RateDecision:
        """Count one call against ``limit`` calls per sliding ``period`` seconds, if allowed."""
        ...
