"""The Coordinator contract, run on both backends: in-process and Redis.

Each test gets two handles on the same state ("two replicas"): for Redis two clients with one
key prefix, in-process the same object. Durations are short (tenths of a second) and the
sleeps a little longer than them; the asserts are on what is allowed, never on speed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from services import Services, unique_name

from store import (
    Coordinator,
    LocalCoordinator,
    LockToken,
    RedisCoordinator,
    StoreUnavailable,
)

Pair = tuple[Coordinator, Coordinator]


@pytest.fixture(params=["local", "redis"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    if request.param == "local":
        local = LocalCoordinator()
        yield local, local
        return
    services: Services = request.getfixturevalue("services")
    prefix = unique_name("sevpipe-test") + ":"
    async with (
        RedisCoordinator(services.redis_url, prefix=prefix) as one,
        RedisCoordinator(services.redis_url, prefix=prefix) as two,
    ):
        yield one, two


def test_backends_satisfy_the_protocol() -> None:
    assert isinstance(LocalCoordinator(), Coordinator)
    assert isinstance(RedisCoordinator("redis://127.0.0.1:1/0"), Coordinator)


# -- locks ------------------------------------------------------------------------------------


async def test_a_lock_is_held_by_one_at_a_time(pair: Pair) -> None:
    one, two = pair
    held = await one.acquire_lock("target", 5)
    assert held is not None
    assert await two.acquire_lock("target", 5) is None
    other = await two.acquire_lock("other-target", 5)  # locks are per name
    assert other is not None

    assert await one.release_lock(held)
    assert not await one.release_lock(held)  # released once only
    again = await two.acquire_lock("target", 5)
    assert again is not None
    assert again.token != held.token
    assert await two.release_lock(again)
    assert await two.release_lock(other)


async def test_of_many_racing_for_a_lock_exactly_one_wins(pair: Pair) -> None:
    one, two = pair
    tokens = await asyncio.gather(*(c.acquire_lock("race", 5) for c in [one, two] * 10))
    assert len([t for t in tokens if t is not None]) == 1


async def test_a_lock_lapses_after_its_ttl(pair: Pair) -> None:
    one, two = pair
    assert await one.acquire_lock("target", 0.2) is not None
    await asyncio.sleep(0.3)
    assert await two.acquire_lock("target", 5) is not None


async def test_an_old_holder_cannot_release_or_extend_the_new_holders_lock(pair: Pair) -> None:
    one, two = pair
    old = await one.acquire_lock("target", 0.2)
    assert old is not None
    await asyncio.sleep(0.3)
    new = await two.acquire_lock("target", 5)
    assert new is not None

    assert not await one.release_lock(old)
    assert not await one.extend_lock(old, 5)
    assert await one.acquire_lock("target", 5) is None  # still the new holder's
    assert await two.release_lock(new)


async def test_extending_a_lock_keeps_it_past_its_first_ttl(pair: Pair) -> None:
    one, two = pair
    held = await one.acquire_lock("target", 0.2)
    assert held is not None
    assert await one.extend_lock(held, 5)
    await asyncio.sleep(0.3)
    assert await two.acquire_lock("target", 5) is None
    assert await one.release_lock(held)


async def test_a_non_holder_can_neither_release_nor_extend(pair: Pair) -> None:
    one, two = pair
    held = await one.acquire_lock("target", 0.3)
    assert held is not None
    forged = LockToken("target", "not-the-holders-token")

    assert not await two.release_lock(forged)
    assert not await two.extend_lock(forged, 5)
    assert await two.acquire_lock("target", 5) is None  # still held by one
    await asyncio.sleep(0.4)  # the failed extend did not stretch it either
    assert await two.acquire_lock("target", 5) is not None


async def test_a_lapsed_lock_cannot_be_extended_or_released(pair: Pair) -> None:
    one, two = pair
    held = await one.acquire_lock("target", 0.2)
    assert held is not None
    await asyncio.sleep(0.3)  # lapsed, and nobody has taken it since

    assert not await one.extend_lock(held, 5)
    assert not await one.release_lock(held)
    assert await two.acquire_lock("target", 5) is not None  # extend did not revive it


async def test_extend_sets_the_ttl_from_now_rather_than_adding_to_it(pair: Pair) -> None:
    one, two = pair
    held = await one.acquire_lock("target", 5)
    assert held is not None
    assert await one.extend_lock(held, 0.2)  # shortens: 0.2 s from now, not 5.2 s
    await asyncio.sleep(0.3)
    assert await two.acquire_lock("target", 5) is not None


async def test_durations_must_be_positive(pair: Pair) -> None:
    one, _ = pair
    with pytest.raises(ValueError, match="positive"):
        await one.acquire_lock("target", 0)
    with pytest.raises(ValueError, match="positive"):
        await one.rate_limit("api", 1, -1)
    await one.start_cooldown("target", 0)  # nothing to start
    assert await one.cooldown_remaining("target") == 0


# -- cooldowns --------------------------------------------------------------------------------


async def test_a_cooldown_runs_for_its_seconds_then_ends(pair: Pair) -> None:
    one, two = pair
    assert await two.cooldown_remaining("restart:origin-backend") == 0
    await one.start_cooldown("restart:origin-backend", 0.3)
    left = await two.cooldown_remaining("restart:origin-backend")
    assert 0 < left <= 0.3
    assert await two.cooldown_remaining("restart:origin-frontend") == 0
    await asyncio.sleep(0.35)
    assert await two.cooldown_remaining("restart:origin-backend") == 0


async def test_a_shorter_cooldown_does_not_cut_a_longer_one(pair: Pair) -> None:
    one, two = pair
    await one.start_cooldown("scale", 5)
    await two.start_cooldown("scale", 0.1)
    assert await one.cooldown_remaining("scale") > 4
    await two.start_cooldown("scale", 10)  # a longer one does extend it
    assert await one.cooldown_remaining("scale") > 9


# -- rate limits (sliding window) -------------------------------------------------------------


async def test_a_rate_limit_allows_limit_calls_per_period(pair: Pair) -> None:
    one, two = pair
    decisions = [await c.rate_limit("flushdb", 3, 0.4) for c in (one, two, one)]
    assert [(d.allowed, d.remaining, d.retry_after) for d in decisions] == [
        (True, 2, 0),
        (True, 1, 0),
        (True, 0, 0),
    ]
    denied = await two.rate_limit("flushdb", 3, 0.4)
    assert not denied.allowed
    assert denied.remaining == 0
    assert 0 < denied.retry_after <= 0.4
    assert (await one.rate_limit("reboot", 3, 0.4)).allowed  # limits are per key

    await asyncio.sleep(denied.retry_after + 0.05)
    assert (await one.rate_limit("flushdb", 3, 0.4)).allowed


async def test_the_window_slides_call_by_call(pair: Pair) -> None:
    one, two = pair
    assert (await one.rate_limit("failover", 2, 0.6)).allowed
    await asyncio.sleep(0.3)
    assert (await two.rate_limit("failover", 2, 0.6)).allowed
    denied = await one.rate_limit("failover", 2, 0.6)
    assert not denied.allowed
    # The first call leaves the window first: about 0.3 s, not a whole period, to wait.
    assert denied.retry_after < 0.5

    await asyncio.sleep(denied.retry_after + 0.05)
    assert (await two.rate_limit("failover", 2, 0.6)).allowed
    # The second call is still in the window: a fixed window would have reset here.
    assert not (await one.rate_limit("failover", 2, 0.6)).allowed


async def test_denied_calls_do_not_count(pair: Pair) -> None:
    one, _ = pair
    assert (await one.rate_limit("probe", 1, 0.3)).allowed
    for _ in range(5):
        assert not (await one.rate_limit("probe", 1, 0.3)).allowed
    await asyncio.sleep(0.35)
    assert (await one.rate_limit("probe", 1, 0.3)).allowed


# -- backend specifics ------------------------------------------------------------------------


async def test_local_coordinator_follows_its_clock_exactly() -> None:
    now = [100.0]
    coord = LocalCoordinator(clock=lambda: now[0])
    held = await coord.acquire_lock("t", 10)
    assert held is not None
    now[0] = 109.999
    assert await coord.acquire_lock("t", 10) is None
    now[0] = 110.0
    assert not await coord.release_lock(held)
    assert await coord.acquire_lock("t", 10) is not None

    await coord.start_cooldown("c", 30)
    now[0] += 12
    assert await coord.cooldown_remaining("c") == pytest.approx(18)

    assert (await coord.rate_limit("r", 2, 60)).allowed
    now[0] += 20
    assert (await coord.rate_limit("r", 2, 60)).allowed
    assert (await coord.rate_limit("r", 2, 60)).retry_after == pytest.approx(40)


async def test_local_coordinator_forgets_expired_keys() -> None:
    now = [0.0]
    coord = LocalCoordinator(clock=lambda: now[0])
    for n in range(5000):
        await coord.start_cooldown(f"c{n}", 1)
        await coord.rate_limit(f"r{n}", 1, 1)
        now[0] += 0.01
    assert len(coord._cooldowns) + len(coord._windows) < 2500


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_redis_unreachable_is_store_unavailable() -> None:
    coord = RedisCoordinator(f"redis://127.0.0.1:{_closed_port()}/0", timeout=1)
    with pytest.raises(StoreUnavailable) as caught:
        await coord.start()
    assert caught.value.retriable
    with pytest.raises(StoreUnavailable):
        await coord.acquire_lock("t", 1)  # not started: unavailable, not a crash
    await coord.close()


async def test_redis_keys_expire_on_the_server(services: Services) -> None:
    prefix = unique_name("sevpipe-test") + ":"
    async with RedisCoordinator(services.redis_url, prefix=prefix) as coord:
        assert await coord.acquire_lock("t", 5) is not None
        await coord.start_cooldown("c", 5)
        await coord.rate_limit("r", 5, 5)
        client = coord._redis()
        found = await client.keys(prefix + "*")
        keys = sorted(k.decode() if isinstance(k, bytes) else k for k in found)
        assert keys == [prefix + "cooldown:c", prefix + "lock:t", prefix + "rate:r"]
        # Nothing is left behind forever: every key carries an expiry.
        ttls = [await client.pttl(k) for k in keys]
        assert all(0 < ttl <= 5000 for ttl in ttls), ttls
