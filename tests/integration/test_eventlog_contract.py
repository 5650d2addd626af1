"""The EventLog contract, run on every backend: embedded (SQLite) and Kafka (the real broker).

Each Kafka test gets topics of its own (a unique topic prefix). Offsets are compared per
partition: the embedded log has one partition (0) and log-wide offsets, Kafka counts per
partition, and the contract holds for both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from services import Services, unique_name

from eventlog import (
    AppendResult,
    EmbeddedLog,
    EventLog,
    GroupLag,
    KafkaLog,
    LogClosed,
    LogUnavailable,
    Record,
    Subscription,
)
from schemas import TOPIC_ALERTS, TOPIC_INCIDENTS, Envelope, new_event_id


@dataclass(frozen=True)
class Backend:
    name: str
    open: Callable[[], EventLog]  # a new, unstarted log over this test's storage


@pytest.fixture(params=["embedded", "kafka"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "embedded":
        return Backend("embedded", lambda: EmbeddedLog(tmp_path / "events.db"))
    services: Services = request.getfixturevalue("services")
    prefix = unique_name("contract") + "."
    return Backend("kafka", lambda: KafkaLog(services.kafka_bootstrap, topic_prefix=prefix))


@pytest.fixture
async def eventlog(backend: Backend) -> AsyncIterator[EventLog]:
    async with opened(backend) as log:
        yield log


def event(
    n: int, *, subject: str = "group-1", time: datetime | None = None, **data: object
) -> Envelope:
    return Envelope(
        id=new_event_id(),
        type="alert.firing",
        source="/test",
        time=time or datetime.now(UTC),
        subject=subject,
        data={"n": n, **data},
    )


def ns(records: Sequence[Record]) -> list[int]:
    return [r.envelope.data["n"] for r in records]


def by_key(records: Sequence[Record]) -> dict[str, list[int]]:
    keys: dict[str, list[int]] = {}
    for r in records:
        keys.setdefault(r.key, []).append(r.envelope.data["n"])
    return keys


async def read_all(
    log: EventLog,
    topics: list[str] | None = None,
    *,
    from_offset: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Record]:
    return [r async for r in log.read(topics, from_offset=from_offset, since=since, until=until)]


@contextlib.asynccontextmanager
async def opened(backend: Backend) -> AsyncIterator[EventLog]:
    log = backend.open()
    await log.start()
    try:
        yield log
    finally:
        await log.close()


async def fetch_until(
    sub: Subscription, done: Callable[[list[Record]], bool], max_records: int = 500
) -> list[Record]:
    """Fetch until ``done`` says the records so far are enough.

    A Kafka consumer first joins its group, so one short fetch may return nothing yet.
    """
    got: list[Record] = []
    async with asyncio.timeout(30):  # a hang guard, not a timing assertion
        while not done(got):
            batch = await sub.fetch(max_records=max_records, max_wait=0.5)
            assert len(batch) <= max_records
            got += batch
    return got


def test_both_backends_satisfy_the_protocols(tmp_path: Path) -> None:
    for log in (EmbeddedLog(tmp_path / "e.db"), KafkaLog("127.0.0.1:1")):
        assert isinstance(log, EventLog)
        assert isinstance(log.subscribe(["t"], "g"), Subscription)


# -- append and read back ------------------------------------------------------------------------


async def test_round_trip_keeps_envelopes_unchanged(eventlog: EventLog) -> None:
    odd_zone = timezone(timedelta(hours=5, minutes=30))
    events = [
        event(0, subject='{}:{alertname="HighErrorRate"}', note="naïve — ünïcödé ✓"),
        event(1, subject="g2", nested={"list": [1, 2.5, None, True], "empty": {}}),
        event(2, subject="g3", time=datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=odd_zone)),
        Envelope(
            id=new_event_id(),
            type="incident.opened",
            source="/sevpipe/classifier",
            time=datetime.now(UTC),
            subject="inc-1",
            schemaversion="2",
            data={"n": 3, "big": 2**53 + 1, "neg": -0.125},
        ),
    ]
    result = await eventlog.append(TOPIC_ALERTS, events)
    assert result.appended == 4
    assert result.duplicates == 0
    offsets = dict(zip((e.id for e in events), result.offsets, strict=True))

    records = await read_all(eventlog, [TOPIC_ALERTS])
    assert sorted((r.envelope for r in records), key=lambda e: e.id) == events
    for r in records:
        assert r.topic == TOPIC_ALERTS
        assert r.key == r.envelope.subject
        assert r.offset == offsets[r.envelope.id]
        assert Envelope.model_validate_json(r.raw) == r.envelope  # raw is the envelope's JSON


async def test_empty_append_and_mismatched_dedup_keys(eventlog: EventLog) -> None:
    assert await eventlog.append(TOPIC_ALERTS, []) == AppendResult(())
    with pytest.raises(ValueError, match="dedup_keys"):
        await eventlog.append(TOPIC_ALERTS, [event(1), event(2)], dedup_keys=["only-one"])
    assert await read_all(eventlog, [TOPIC_ALERTS]) == []


async def test_events_of_one_key_keep_their_order(eventlog: EventLog) -> None:
    n = 0
    for _ in range(5):
        batch = []
        for _ in range(8):
            batch.append(event(n, subject=f"key-{n % 4}"))
            n += 1
        await eventlog.append(TOPIC_ALERTS, batch)
    # and appends of different keys at the same time
    await asyncio.gather(
        *(eventlog.append(TOPIC_ALERTS, [event(n + k, subject=f"key-{k}")]) for k in range(4))
    )
    expected = {f"key-{k}": [*range(k, 40, 4), 40 + k] for k in range(4)}

    assert by_key(await read_all(eventlog, [TOPIC_ALERTS])) == expected
    sub = eventlog.subscribe([TOPIC_ALERTS], unique_name("order"))
    try:
        fetched = await fetch_until(sub, lambda got: len(got) >= 44)
    finally:
        await sub.close()
    assert by_key(fetched) == expected


async def test_dedup_keys_within_a_process(eventlog: EventLog) -> None:
    first = await eventlog.append(
        TOPIC_ALERTS, [event(0), event(1), event(2)], dedup_keys=["a", "b", "c"]
    )
    assert None not in first.offsets
    # a repeat, a new key, and the new key twice in one batch
    again = await eventlog.append(
        TOPIC_ALERTS, [event(10), event(3), event(11)], dedup_keys=["a", "d", "d"]
    )
    assert again.offsets[0] is None
    assert again.offsets[1] is not None
    assert again.offsets[2] is None
    assert (again.appended, again.duplicates) == (1, 2)
    # the same key from five callers at once lands once
    racing = await asyncio.gather(
        *(eventlog.append(TOPIC_ALERTS, [event(20 + i)], dedup_keys=["e"]) for i in range(5))
    )
    assert sum(r.appended for r in racing) == 1

    winner = next(20 + i for i, r in enumerate(racing) if r.appended)

    assert sorted(ns(await read_all(eventlog, [TOPIC_ALERTS]))) == [0, 1, 2, 3, winner]


async def test_dedup_latest_drops_only_the_latest_state_again(eventlog: EventLog) -> None:
    async def states(*marks: tuple[str, str]) -> tuple[int | None, ...]:
        events = [event(i) for i in range(len(marks))]
        return (await eventlog.append(TOPIC_ALERTS, events, dedup_latest=marks)).offsets

    firing, resolved = ("a", "t0 firing"), ("a", "t0 resolved")
    assert None not in await states(firing)
    assert (await states(firing))[0] is None  # a re-send of the latest state
    assert (await states(resolved))[0] is not None
    assert (await states(resolved))[0] is None
    assert (await states(firing))[0] is not None  # fired again, same startsAt: a change
    # in one append, each event is decided against those before it
    got = await states(resolved, resolved, firing, ("b", "t0 firing"), firing)
    assert [o is not None for o in got] == [True, False, True, True, False]
    # keys are per topic, and "latest" keys are not "seen ever" keys
    other = await eventlog.append(TOPIC_INCIDENTS, [event(0)], dedup_latest=[firing])
    assert other.appended == 1
    ever = await eventlog.append(TOPIC_ALERTS, [event(0)], dedup_keys=["a"])
    assert ever.appended == 1
    assert len(await read_all(eventlog, [TOPIC_ALERTS])) == 7


async def test_dedup_latest_from_racing_callers_lands_once(eventlog: EventLog) -> None:
    mark = [("alert", "firing")]
    racing = await asyncio.gather(
        *(eventlog.append(TOPIC_ALERTS, [event(i)], dedup_latest=mark) for i in range(5))
    )
    assert sum(r.appended for r in racing) == 1
    assert len(await read_all(eventlog, [TOPIC_ALERTS])) == 1


async def test_dedup_arguments_are_checked(eventlog: EventLog) -> None:
    two = [event(1), event(2)]
    with pytest.raises(ValueError, match="dedup_latest must have one entry per event"):
        await eventlog.append(TOPIC_ALERTS, two, dedup_latest=[("k", "s")])
    with pytest.raises(ValueError, match="not both"):
        await eventlog.append(
            TOPIC_ALERTS, two, dedup_keys=["a", "b"], dedup_latest=[("k", "s"), ("k", "t")]
        )
    assert await read_all(eventlog, [TOPIC_ALERTS]) == []


# -- consumer groups -----------------------------------------------------------------------------


async def test_group_resumes_from_its_commit_and_gets_uncommitted_records_again(
    backend: Backend,
) -> None:
    group = unique_name("classifier")
    async with opened(backend) as log:
        await log.append(TOPIC_ALERTS, [event(i, subject=f"g{i % 3}") for i in range(6)])
        sub = log.subscribe([TOPIC_ALERTS], group)
        assert sorted(ns(await fetch_until(sub, lambda got: len(got) >= 6))) == list(range(6))
        await sub.commit()
        await log.append(TOPIC_ALERTS, [event(i, subject=f"g{i % 3}") for i in range(6, 10)])
        assert sorted(ns(await fetch_until(sub, lambda got: len(got) >= 4))) == [6, 7, 8, 9]
        await sub.close()  # processed, not committed: the process stops here

    async with opened(backend) as log:
        sub = log.subscribe([TOPIC_ALERTS], group)
        await log.append(TOPIC_ALERTS, [event(100, subject="marker")])
        # everything after the commit comes again, and nothing before it
        redelivered = await fetch_until(sub, lambda got: 100 in ns(got) and len(got) >= 5)
        assert sorted(ns(redelivered)) == [6, 7, 8, 9, 100]
        await sub.commit()
        await sub.close()

    async with opened(backend) as log:
        sub = log.subscribe([TOPIC_ALERTS], group)
        await log.append(TOPIC_ALERTS, [event(101, subject="marker")])
        assert ns(await fetch_until(sub, lambda got: 101 in ns(got))) == [101]
        # another group has its own position: from the start, across topics
        await log.append(TOPIC_INCIDENTS, [event(200, subject="inc-1")])
        other = log.subscribe([TOPIC_ALERTS, TOPIC_INCIDENTS], unique_name("comms"))
        everything = await fetch_until(other, lambda got: len(got) >= 13)
        assert sorted(ns(everything)) == [*range(10), 100, 101, 200]
        assert {r.topic for r in everything if r.envelope.data["n"] == 200} == {TOPIC_INCIDENTS}


async def test_group_lag_seen_from_outside_the_group(backend: Backend) -> None:
    """What a receiver in another process reads to pace itself to the classifier."""
    group = unique_name("classifier")
    async with opened(backend) as log, opened(backend) as outside:
        assert await outside.group_lag(group, [TOPIC_ALERTS]) == GroupLag(0, 0)
        await log.append(TOPIC_ALERTS, [event(i, subject=f"g{i % 3}") for i in range(7)])
        await log.append(TOPIC_INCIDENTS, [event(50, subject="inc-1")])
        # Never committed: behind by everything, on the topics asked about only.
        before = await outside.group_lag(group, [TOPIC_ALERTS])
        assert (before.behind, before.committed) == (7, 0)
        sub = log.subscribe([TOPIC_ALERTS], group)
        await fetch_until(sub, lambda got: len(got) >= 7)
        assert (await outside.group_lag(group, [TOPIC_ALERTS])).behind == 7  # not committed
        await sub.commit()
        caught_up = await outside.group_lag(group, [TOPIC_ALERTS])
        assert caught_up.behind == 0
        assert caught_up.committed > before.committed
        await log.append(TOPIC_ALERTS, [event(i) for i in range(7, 10)])
        after = await outside.group_lag(group, [TOPIC_ALERTS])
        assert after == GroupLag(3, caught_up.committed)  # no progress since: same commits
        await sub.close()


async def test_commit_covers_only_what_was_fetched(backend: Backend) -> None:
    group = unique_name("g")
    async with opened(backend) as log:
        await log.append(TOPIC_ALERTS, [event(i, subject="one-key") for i in range(10)])
        sub = log.subscribe([TOPIC_ALERTS], group)
        first = await fetch_until(sub, lambda got: len(got) >= 3, max_records=1)
        assert ns(first) == [0, 1, 2]  # one key: in order
        await sub.commit()
        await sub.commit()  # nothing new: a no-op
        await sub.close()
    async with opened(backend) as log:
        sub = log.subscribe([TOPIC_ALERTS], group)
        assert ns(await fetch_until(sub, lambda got: len(got) >= 7)) == list(range(3, 10))
        await sub.close()


# -- replay --------------------------------------------------------------------------------------


async def test_read_by_topic(eventlog: EventLog) -> None:
    await eventlog.append(TOPIC_ALERTS, [event(i, subject=f"g{i}") for i in range(3)])
    await eventlog.append(TOPIC_INCIDENTS, [event(10, subject="inc-1")])
    assert sorted(ns(await read_all(eventlog, [TOPIC_ALERTS]))) == [0, 1, 2]
    assert ns(await read_all(eventlog, [TOPIC_INCIDENTS])) == [10]
    assert sorted(ns(await read_all(eventlog, [TOPIC_INCIDENTS, TOPIC_ALERTS]))) == [0, 1, 2, 10]
    assert sorted(ns(await read_all(eventlog))) == [0, 1, 2, 10]
    assert await read_all(eventlog, ["sevpipe.never-written"]) == []


async def test_read_since_and_until_by_event_time(eventlog: EventLog) -> None:
    # Times in the recent past: an event is made before it is appended.
    t0 = datetime.now(UTC) - timedelta(hours=1)
    minute = timedelta(minutes=1)
    for i in range(6):
        await eventlog.append(
            TOPIC_ALERTS, [event(i, subject=f"g{i % 2}", time=t0 + i * 10 * minute)]
        )

    cases: list[tuple[datetime | None, datetime | None, list[int]]] = [
        (t0 + 20 * minute, None, [2, 3, 4, 5]),  # since is inclusive
        (None, t0 + 20 * minute, [0, 1]),  # until is exclusive
        (t0 + 15 * minute, t0 + 45 * minute, [2, 3, 4]),
        (t0 + 120 * minute, None, []),
        (None, t0 - minute, []),
    ]
    for since, until, expected in cases:
        got = await read_all(eventlog, [TOPIC_ALERTS], since=since, until=until)
        assert sorted(ns(got)) == expected, (since, until)


async def test_read_from_offset(eventlog: EventLog) -> None:
    for i in range(9):
        await eventlog.append(TOPIC_ALERTS, [event(i, subject=f"g{i % 3}")])
    everything = await read_all(eventlog, [TOPIC_ALERTS])
    offsets = sorted({r.offset for r in everything})
    start = offsets[len(offsets) // 2]

    def where(records: list[Record]) -> set[tuple[int, int]]:
        return {(r.partition, r.offset) for r in records}

    later = await read_all(eventlog, [TOPIC_ALERTS], from_offset=start)
    assert where(later) == {(r.partition, r.offset) for r in everything if r.offset >= start}
    assert where(await read_all(eventlog, [TOPIC_ALERTS], from_offset=0)) == where(everything)
    assert await read_all(eventlog, [TOPIC_ALERTS], from_offset=offsets[-1] + 1) == []


# -- health and shutdown -------------------------------------------------------------------------


async def test_ping_and_a_closed_log(backend: Backend) -> None:
    log = backend.open()
    await log.start()
    await log.ping()
    await log.append(TOPIC_ALERTS, [event(1)])
    sub = log.subscribe([TOPIC_ALERTS], unique_name("g"))
    assert ns(await fetch_until(sub, lambda got: len(got) >= 1)) == [1]
    await log.close()
    await log.close()  # idempotent
    with pytest.raises(LogClosed):
        await log.append(TOPIC_ALERTS, [event(2)])
    with pytest.raises(LogUnavailable):
        await log.ping()
    with pytest.raises(LogClosed):
        await read_all(log)
    with pytest.raises(LogClosed):
        await sub.fetch(max_wait=0)
    with pytest.raises(LogClosed):
        await sub.commit()
