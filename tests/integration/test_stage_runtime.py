"""The stage runtime on both logs (embedded SQLite, real Kafka) with a small test handler.

What happened is read back from the log itself: dead letters are counted raw on
``sevpipe.deadletter`` (no dedup before counting), and committed offsets are read from the
group's own storage (the embedded log's table, Kafka's group coordinator). Waits poll with a
hang guard; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import orjson
import pytest
from services import Services, unique_name
from stage_support import (
    KEY,
    STAGE,
    TOPIC,
    Backend,
    CommitNeverReturns,
    Recorder,
    committed_past,
    event,
    letters,
    opened,
    raw_attrs,
    records_of,
    running,
    until,
)

from schemas import Envelope
from schemas.deadletter import DeadLetterData, deadletter_id


@pytest.fixture(params=["embedded", "kafka"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "embedded":
        return Backend("embedded", tmp_path / "events.db")
    services: Services = request.getfixturevalue("services")
    prefix = unique_name("runtime") + "."
    return Backend("kafka", tmp_path / "unused.db", services.kafka_bootstrap, prefix)


# -- poison records -----------------------------------------------------------------------------


async def test_poison_records_are_dead_lettered_once_and_the_stage_goes_on(
    backend: Backend,
) -> None:
    group = unique_name("g")
    async with opened(backend) as log:
        sent = [event(n, poison=n in (4, 7)) for n in range(10)]
        await log.append(TOPIC, sent)
        stored = await records_of(log, TOPIC)
        async with running(log, group) as run:
            good = [0, 1, 2, 3, 5, 6, 8, 9]
            await until(lambda: run.handler.handled == good, "the good records handled")
            await until(lambda: committed_past(backend, group, stored[-1]), "commit past all")

            dead = await letters(log)
            assert sorted(e.data["original"]["offset"] for e in dead) == [
                stored[4].offset,
                stored[7].offset,
            ]
            in_order = sorted(dead, key=lambda e: e.data["original"]["offset"])
            for env, n in zip(in_order, (4, 7), strict=True):
                data = DeadLetterData.model_validate(env.data)
                assert env.subject == STAGE
                assert env.id == deadletter_id(STAGE, data.original)
                assert (data.stage, data.reason, data.error_type) == (STAGE, "failed", "Poisoned")
                assert data.error == f"cannot take n={n}"
                assert data.original.topic == TOPIC
                assert data.original.key == KEY
                assert data.original.event_id == sent[n].id
                assert Envelope.model_validate_json(data.original.raw()) == sent[n]
            assert run.metric("sevpipe_deadletters_total", reason="failed") == 2
            assert run.metric("sevpipe_stage_records_total") == 8

            # still consuming
            await log.append(TOPIC, [event(10), event(11)])
            await until(lambda: run.handler.handled[-2:] == [10, 11], "later records handled")
            assert not run.task.done()
            assert run.runtime.ready()
        assert run.handler.handled == [*good, 10, 11]
        assert len(await letters(log)) == 2


async def test_records_that_are_not_envelopes_are_dead_lettered_raw(backend: Backend) -> None:
    group = unique_name("g")
    naive = raw_attrs("2026-03-01T12:00:00")  # no offset: whose local time?
    garbage = b'{"n": 3, "bytes": "\xff\x00"}'  # not UTF-8, and a NUL
    async with opened(backend) as log:
        await log.append(TOPIC, [event(0)])
        await backend.append_raw(naive, b'{"n": 1}')
        await log.append(TOPIC, [event(2)])
        await backend.append_raw(raw_attrs("2026-03-01T12:00:00+00:00"), garbage)
        await log.append(TOPIC, [event(4)])
        stored = await records_of(log, TOPIC)
        async with running(log, group) as run:
            await until(lambda: run.handler.handled == [0, 2, 4], "the good records handled")
            await until(lambda: committed_past(backend, group, stored[-1]), "commit past all")
            dead = sorted(await letters(log), key=lambda e: e.data["original"]["offset"])
            assert run.metric("sevpipe_deadletters_total", reason="undecodable") == 2

        first, second = (DeadLetterData.model_validate(e.data) for e in dead)
        assert [first.original.offset, second.original.offset] == [
            stored[1].offset,
            stored[3].offset,
        ]
        assert {first.reason, second.reason} == {"undecodable"}
        assert first.error_type == "ValidationError"
        assert "timezone" in first.error
        assert first.original.encoding == "utf-8"
        assert first.original.event_id == naive["id"]
        assert orjson.loads(first.original.value)["time"] == "2026-03-01T12:00:00"
        assert second.original.encoding == "base64"
        assert garbage in second.original.raw()
        assert "\x00" not in second.error  # PostgreSQL text could not hold it


# -- outages ------------------------------------------------------------------------------------


async def test_a_retriable_error_backs_off_without_commit_and_resumes(backend: Backend) -> None:
    group = unique_name("g")
    handler = Recorder()
    handler.down = True
    async with opened(backend) as log:
        await log.append(TOPIC, [event(n) for n in range(5)])
        stored = await records_of(log, TOPIC)
        async with running(log, group, handler) as run:
            await until(lambda: handler.calls >= 4, "several attempts")
            assert not run.runtime.ready()
            assert run.metric("sevpipe_stage_retries_total", step="handle") >= 3
            assert await backend.committed(group) == {}
            assert handler.handled == []

            handler.down = False
            await until(lambda: handler.handled == [0, 1, 2, 3, 4], "resumed by itself")
            await until(lambda: committed_past(backend, group, stored[-1]), "commit")
            await until(run.runtime.ready, "ready again")
            assert not run.task.done()
        assert await letters(log) == []
        assert run.metric("sevpipe_deadletters_total", reason="failed") == 0


# -- shutdown and crashes -----------------------------------------------------------------------


async def test_stop_finishes_and_commits_the_batch_in_hand(backend: Backend) -> None:
    group = unique_name("g")
    handler = Recorder()
    handler.gate = asyncio.Event()
    async with opened(backend) as log:
        await log.append(TOPIC, [event(n) for n in range(5)])
        stored = await records_of(log, TOPIC)
        async with running(log, group, handler) as run:
            await until(handler.entered.is_set, "a batch in hand")
            run.stop.set()  # shutdown begins while the batch is being handled
            handler.gate.set()
            await run.finish()
            assert run.task.exception() is None
            assert run.runtime.lag() == {}  # the subscription is closed
            assert not run.runtime.ready()

        drained = handler.handled
        assert drained == list(range(len(drained)))
        assert drained  # the batch in hand was finished, not dropped
        assert await committed_past(backend, group, stored[drained[-1]])

        # The next run of the group starts right after the drained batch.
        await log.append(TOPIC, [event(5)])
        async with running(log, group) as after:
            await until(lambda: after.handler.handled[-1:] == [5], "the rest handled")
        assert after.handler.handled == list(range(len(drained), 6))


async def test_redelivery_after_a_crash_does_not_dead_letter_twice(backend: Backend) -> None:
    group = unique_name("g")
    async with opened(backend) as log:
        await log.append(TOPIC, [event(n, poison=n == 2) for n in range(5)])
        stored = await records_of(log, TOPIC)
        hanging = CommitNeverReturns(log)
        async with running(hanging, group) as crashed:
            await until(hanging.reached.is_set, "the commit after the dead letter")
            crashed.task.cancel()  # dies before its commit
            with contextlib.suppress(asyncio.CancelledError):
                await crashed.task
        assert crashed.handler.handled == [0, 1, 3, 4]
        assert len(await letters(log)) == 1
    assert await backend.committed(group) == {}

    # A new process: a new log object, which on Kafka remembers no dedup keys of its own.
    async with opened(backend) as log, running(log, group) as again:
        await until(lambda: committed_past(backend, group, stored[-1]), "commit past all")
        assert again.handler.handled == [0, 1, 3, 4]  # redelivered, handled again
        dead = await letters(log)
        assert len(dead) == 1
        assert dead[0].data["original"]["offset"] == stored[2].offset
        assert again.metric("sevpipe_deadletters_total", reason="failed") == 0
