"""The receiver's wait for a classifier that falls behind in the same process: held while the
lag is over the limit, let go as batches finish, and never for longer than the timeout."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from eventlog import GroupLag, LogUnavailable
from sevpipe.backpressure import Backpressure, LagWatch


def held(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


async def test_under_the_limit_nothing_waits() -> None:
    registry = CollectorRegistry()
    bp = Backpressure(lambda: 10, registry, limit=10, timeout=5.0)
    await asyncio.wait_for(bp.admit(), 0.5)
    assert held(registry, "sevpipe_ingest_held_total") == 0


async def test_a_webhook_waits_until_a_batch_brings_the_lag_down() -> None:
    registry = CollectorRegistry()
    lag = [5000]
    bp = Backpressure(lambda: lag[0], registry, limit=2000, timeout=30.0)
    waiter = asyncio.create_task(bp.admit())
    await asyncio.sleep(0.05)
    bp.progressed()  # a batch done, still too far behind
    await asyncio.sleep(0.05)
    assert not waiter.done()
    lag[0] = 1500
    bp.progressed()
    await asyncio.wait_for(waiter, 1.0)
    assert held(registry, "sevpipe_ingest_held_total") == 1
    assert held(registry, "sevpipe_ingest_held_timeouts_total") == 0


async def test_a_stalled_classifier_delays_a_webhook_at_most_the_timeout() -> None:
    registry = CollectorRegistry()
    bp = Backpressure(lambda: 10**6, registry, limit=2000, timeout=0.1)
    await asyncio.wait_for(bp.admit(), 2.0)  # let go: appended anyway, never refused
    assert held(registry, "sevpipe_ingest_held_timeouts_total") == 1


# -- a receiver of its own: the classifier group's lag read from the log ------------------------


class Readings:
    """The group lags a log reports, in turn, and the clock they are read at."""

    def __init__(self, *seen: GroupLag | Exception) -> None:
        self.seen = list(seen)
        self.now = 0.0

    async def read(self) -> GroupLag:
        got = self.seen.pop(0)
        if isinstance(got, Exception):
            raise got
        return got

    def clock(self) -> float:
        return self.now


async def test_the_receiver_paces_only_to_a_classifier_whose_commits_move() -> None:
    r = Readings(
        GroupLag(9000, 0),  # no classifier has committed yet: nothing to pace to
        GroupLag(9500, 0),
        GroupLag(8000, 100),  # commits move: paced to its lag
        GroupLag(7000, 100),  # still within stall_after of the last move
        GroupLag(7200, 100),  # stalled: not held any more
        GroupLag(6000, 2000),  # consuming again
        LogUnavailable("kafka away"),  # cannot tell: not held
    )
    registry = CollectorRegistry()
    watch = LagWatch(r.read, registry, stall_after=10.0, clock=r.clock)
    reads = []
    watch.on_read = lambda: reads.append(watch.behind)
    for at in (0.0, 1.0, 2.0, 11.0, 12.5, 13.0, 14.0):
        r.now = at
        await watch.poll()
    assert reads == [0, 0, 8000, 7000, 0, 6000, 0]
    assert held(registry, "sevpipe_ingest_classifier_lag") == 6000  # the last one seen


async def test_a_webhook_held_by_the_watched_lag_goes_when_the_classifier_catches_up() -> None:
    r = Readings(GroupLag(100, 1), GroupLag(5000, 2), GroupLag(1000, 3))
    registry = CollectorRegistry()
    watch = LagWatch(r.read, registry, clock=r.clock)
    bp = Backpressure(lambda: watch.behind, registry, limit=2000, timeout=30.0)
    watch.on_read = bp.progressed
    await watch.poll()
    await watch.poll()
    waiter = asyncio.create_task(bp.admit())
    await asyncio.sleep(0.05)
    assert not waiter.done()  # 5000 behind, and consuming
    await watch.poll()
    await asyncio.wait_for(waiter, 1.0)
    assert held(registry, "sevpipe_ingest_held_total") == 1
