"""The receiver's wait for a classifier that falls behind in the same process: held while the
lag is over the limit, let go as batches finish, and never for longer than the timeout."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from sevpipe.backpressure import Backpressure


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
