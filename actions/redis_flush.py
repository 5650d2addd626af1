"""``redis.flushdb`` (Redis; destructive) on the application's Redis (client, errors and plans
as :mod:`actions.redis_app` says). Playbooks may not make it ``auto`` (the loader refuses a
destructive action in mode auto when it is given the catalogue).

``FLUSHDB ASYNC`` of the URL's database only (every key in it, cache or not; other database
numbers are untouched; it replicates to replicas), in one MULTI/EXEC with
``SET sevpipe:flushdb:<action id> "flushed by sevpipe" EX 86400``: the marker exists exactly
when the flush ran. DBSIZE before and after are reported.

``check`` (after a crash) looks for the marker: there, the interrupted run flushed (the
outcome says so, with DBSIZE now); absent, the flush did not happen, and the action runs.
DBSIZE alone could not tell: the application refills a flushed cache within moments, and an
empty database need not have been flushed. What cannot be known: a marker removed since
(another flush, an eviction, its 24 h expiry) reads as "not flushed".

When Redis refuses the transaction for memory (OOM under ``noeviction``, the very case a
flush is for: EXEC refuses a transaction holding a write), the flush is sent alone and the
marker set after it, retried for up to ``MARKER_WAIT`` seconds while the asynchronous free
gives memory back; the outcome says ``marker_atomic: false`` (and ``marker: null`` when it
could not be set). A crash between the two could then flush twice. Outside the stage (no
action id) the marker is one shared key, so a check there cannot tell one flush from another
within its TTL. The ACL user needs FLUSHDB, and SET on ``sevpipe:*``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from redis import exceptions as rex

from actions.catalogue import ACTION_ID, Outcome
from actions.redis_app import NoParams, RedisActions, command
from schemas.actions import ApiRequest, Target

MARKER_PREFIX: Final = "sevpipe:flushdb:"
MARKER_TTL: Final = 86400
MARKER_VALUE: Final = "flushed by sevpipe"
MARKER_WAIT: Final = 2.0


def marker() -> str:
    """This action's flush marker: by its id under the stage, else one shared key."""
    return MARKER_PREFIX + (ACTION_ID.get() or "unattributed")


class RedisFlush:
    def __init__(self, redis: RedisActions) -> None:
        self.redis = redis

    async def plan(self, target: Target, params: NoParams) -> tuple[ApiRequest, ...]:
        self.redis.entry(target)
        return (
            command(target, "DBSIZE"),
            command(target, "MULTI"),
            command(target, "FLUSHDB", "ASYNC"),
            command(target, "SET", marker(), MARKER_VALUE, "EX", MARKER_TTL),
            command(target, "EXEC"),
            command(target, "DBSIZE"),
        )

    async def flushdb(self, target: Target, params: NoParams, token: int) -> Outcome:
        key = marker()
        atomic, marked = True, True
        async with self.redis.client(target) as conn:
            before = await conn.dbsize()
            try:
                pipe = conn.pipeline(transaction=True)
                pipe.flushdb(asynchronous=True)
                pipe.set(key, MARKER_VALUE, ex=MARKER_TTL)
                await pipe.execute()
            except rex.OutOfMemoryError:
                atomic = False
                await conn.flushdb(asynchronous=True)
                deadline = time.monotonic() + MARKER_WAIT
                while True:
                    try:
                        await conn.set(key, MARKER_VALUE, ex=MARKER_TTL)
                        break
                    except rex.OutOfMemoryError:
                        if time.monotonic() >= deadline:
                            marked = False
                            break
                        await asyncio.sleep(0.05)
            after = await conn.dbsize()
        return {
            "flushed": True,
            "mode": "ASYNC",
            "keys_before": before,
            "keys_after": after,
            "marker": key if marked else None,
            "marker_atomic": atomic,
        }

    async def flushed(self, target: Target, params: NoParams) -> Outcome | None:
        key = marker()
        async with self.redis.client(target) as conn:
            if not await conn.exists(key):
                return None
            after = await conn.dbsize()
        return {
            "flushed": True,
            "mode": "ASYNC",
            "keys_before": None,
            "keys_after": after,
            "marker": key,
            "found": "the marker set with the flush is there: the interrupted run flushed; "
            "keys_after counts what was written since",
        }
