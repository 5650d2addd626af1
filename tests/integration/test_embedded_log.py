"""The embedded event log on a real SQLite file: durability, dedup, group commit, consumers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import struct
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from eventlog import (
    AppendResult,
    EmbeddedLog,
    EventLog,
    EventLogError,
    LogClosed,
    LogUnavailable,
    Record,
    Subscription,
)
from schemas import Envelope, new_event_id

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def event(n: int = 0, *, subject: str = "group-1", time: datetime | None = None) -> Envelope:
    return Envelope(
        id=new_event_id(),
        type="alert.firing",
        source="/test",
        time=time or datetime.now(UTC),
        subject=subject,
        data={"n": n},
    )


async def read_all(log: EmbeddedLog, topics: list[str] | None = None) -> list[Record]:
    return [r async for r in log.read(topics)]


def ns(records: list[Record]) -> list[int]:
    return [r.envelope.data["n"] for r in records]


def test_embedded_log_satisfies_the_protocols(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "events.db")
    assert isinstance(log, EventLog)
    assert isinstance(log.subscribe(["t"], "g"), Subscription)


# -- append, durability, offsets -----------------------------------------------------------------


async def test_append_is_durable_across_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "data" / "events.db"  # the data dir is created
    events = [event(i, subject=f"g{i % 2}") for i in range(5)]
    async with EmbeddedLog(path) as log:
        result = await log.append("sevpipe.alerts", events)
        # committed when append returns: another connection sees it at once
        other = sqlite3.connect(path)
        try:
            assert other.execute("SELECT count(*) FROM events").fetchone() == (5,)
        finally:
            other.close()
    async with EmbeddedLog(path, create=False) as log:
        records = await read_all(log)
        later = await log.append("sevpipe.alerts", [event(5)])
    assert [r.envelope for r in records] == events
    assert [r.offset for r in records] == list(result.offsets)
    assert [r.key for r in records] == [e.subject for e in events]
    assert {r.topic for r in records} == {"sevpipe.alerts"}
    assert later.offsets[0] is not None
    assert later.offsets[0] > max(o for o in result.offsets if o is not None)


async def test_opening_a_missing_log_without_create_is_unavailable(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "nope" / "events.db", create=False)
    with pytest.raises(LogUnavailable):
        await log.start()
    await log.close()
    assert not (tmp_path / "nope").exists()


async def test_offsets_increase_monotonically_across_topics(eventlog: EmbeddedLog) -> None:
    offsets: list[int] = []
    for i in range(20):
        result = await eventlog.append(f"topic-{i % 3}", [event(i), event(i)])
        assert result.appended == 2
        assert result.duplicates == 0
        offsets += [o for o in result.offsets if o is not None]
    assert len(offsets) == 40
    assert all(a < b for a, b in itertools.pairwise(offsets))
    assert [r.offset for r in await read_all(eventlog)] == offsets


async def test_empty_append(eventlog: EmbeddedLog) -> None:
    result = await eventlog.append("t", [])
    assert result == AppendResult(())
    assert await read_all(eventlog) == []


# -- dedup keys ----------------------------------------------------------------------------------


async def test_dedup_keys(eventlog: EmbeddedLog) -> None:
    first = await eventlog.append("a", [event(1), event(2)], dedup_keys=["k1", "k2"])
    again = await eventlog.append("a", [event(3), event(4)], dedup_keys=["k2", "k3"])
    other_topic = await eventlog.append("b", [event(5)], dedup_keys=["k1"])
    same_batch = await eventlog.append("a", [event(6), event(7)], dedup_keys=["k9", "k9"])
    no_keys = await eventlog.append("a", [event(8), event(9)])
    no_keys_again = await eventlog.append("a", [event(10)])

    assert first.appended == 2
    assert again.offsets[0] is None
    assert again.offsets[1] is not None
    assert (again.appended, again.duplicates) == (1, 1)
    assert other_topic.appended == 1  # keys are per topic
    assert (same_batch.appended, same_batch.duplicates) == (1, 1)
    assert same_batch.offsets[1] is None
    assert no_keys.appended == 2
    assert no_keys_again.appended == 1
    assert ns(await read_all(eventlog, ["a"])) == [1, 2, 4, 6, 8, 9, 10]
    assert ns(await read_all(eventlog, ["b"])) == [5]


async def test_dedup_keys_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with EmbeddedLog(path) as log:
        await log.append("a", [event(1)], dedup_keys=["k"])
    async with EmbeddedLog(path) as log:
        result = await log.append("a", [event(2)], dedup_keys=["k"])
        assert result.offsets == (None,)
        assert ns(await read_all(log)) == [1]


async def test_latest_states_survive_reopen_and_repeats_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    firing, resolved = ("g\x1ff", "t0\x1ffiring"), ("g\x1ff", "t0\x1fresolved")
    async with EmbeddedLog(path) as log:
        await log.append("a", [event(1), event(2)], dedup_latest=[firing, resolved])
    async with EmbeddedLog(path) as log:
        again = await log.append("a", [event(3), event(4)], dedup_latest=[resolved, firing])
        repeat = await log.append("a", [event(5)], dedup_latest=[firing])
        assert again.offsets[0] is None
        assert again.offsets[1] is not None
        assert repeat.offsets == (None,)
        assert ns(await read_all(log)) == [1, 2, 4]
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT topic, dedup_key, count FROM repeats ORDER BY dedup_key")
        # counted under the whole (key, state), as an alert's idempotency key reads
        assert rows.fetchall() == [
            ("a", "g\x1ff\x1ft0\x1ffiring", 1),
            ("a", "g\x1ff\x1ft0\x1fresolved", 1),
        ]


# The events table as logs made before "latest" dedup have it.
_OLD_SCHEMA = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, key TEXT NOT NULL,
    id TEXT NOT NULL, type TEXT NOT NULL, time_ms INTEGER NOT NULL, dedup_key TEXT,
    envelope BLOB NOT NULL
);
CREATE INDEX events_topic_seq ON events (topic, seq);
CREATE INDEX events_time ON events (time_ms);
CREATE UNIQUE INDEX events_dedup ON events (topic, dedup_key);
"""


async def test_a_log_from_before_latest_dedup_opens_and_keeps_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    old = event(1)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executescript(_OLD_SCHEMA)
        db.execute(
            "INSERT INTO events (topic, key, id, type, time_ms, dedup_key, envelope)"
            " VALUES ('a', ?, ?, ?, 0, 'k', ?)",
            (old.subject, old.id, old.type, old.json_bytes()),
        )
    async with EmbeddedLog(path) as log:
        assert (await log.append("a", [event(2)], dedup_keys=["k"])).offsets == (None,)
        latest = await log.append("a", [event(3), event(4)], dedup_latest=[("k", "s")] * 2)
        assert latest.offsets[1] is None
        assert ns(await read_all(log)) == [1, 3]
    async with EmbeddedLog(path) as log:  # and opens again as it is now
        assert (await log.append("a", [event(5)], dedup_latest=[("k", "s")])).appended == 0


async def test_dedup_keys_must_match_events(eventlog: EmbeddedLog) -> None:
    with pytest.raises(ValueError, match="dedup_keys must have one entry per event"):
        await eventlog.append("a", [event(1), event(2)], dedup_keys=["k"])
    assert await read_all(eventlog) == []


# -- group commit --------------------------------------------------------------------------------


def wal_commits(db: Path) -> int:
    """Commit frames in the WAL file (SQLite's documented file format): one per transaction."""
    wal = db.with_name(db.name + "-wal").read_bytes()
    _magic, _version, page_size, _ckpt, salt1, salt2 = struct.unpack(">6I", wal[:24])
    frame = 24 + page_size
    commits = 0
    for offset in range(32, len(wal) - frame + 1, frame):
        _page, db_size_after_commit, s1, s2 = struct.unpack(">4I", wal[offset : offset + 16])
        if (s1, s2) != (salt1, salt2):
            break  # frames left over from before a WAL restart
        if db_size_after_commit:
            commits += 1
    return commits


async def test_concurrent_appends_land_once_each_in_few_transactions(
    eventlog: EmbeddedLog,
) -> None:
    callers = 300
    await eventlog.append("t", [event(-1)])
    # A reader holding a snapshot keeps SQLite from restarting the WAL, so every commit
    # made from here on stays countable in the WAL file.
    reader = sqlite3.connect(eventlog.path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchone()
        before = wal_commits(eventlog.path)
        events = [event(i, subject=f"g{i % 7}") for i in range(callers)]
        results = await asyncio.gather(
            *(eventlog.append("t", [e], dedup_keys=[f"k{i}"]) for i, e in enumerate(events))
        )
        after = wal_commits(eventlog.path)
    finally:
        reader.close()

    assert before >= 2  # schema, warm-up append: the WAL is being read right
    offsets = [o for r in results for o in r.offsets if o is not None]
    assert len(offsets) == callers
    assert len(set(offsets)) == callers
    records = await read_all(eventlog)
    assert len(records) == callers + 1
    assert sorted(r.envelope.id for r in records[1:]) == sorted(e.id for e in events)
    by_offset = {r.offset: r.envelope.id for r in records}
    assert [by_offset[o] for o in offsets] == [e.id for e in events]
    transactions = after - before
    assert 1 <= transactions < callers // 2, transactions


async def test_concurrent_duplicates_are_appended_once(eventlog: EmbeddedLog) -> None:
    results = await asyncio.gather(
        *(eventlog.append("t", [event(i)], dedup_keys=["same"]) for i in range(100))
    )
    assert sum(r.appended for r in results) == 1
    assert sum(r.duplicates for r in results) == 99
    assert len(await read_all(eventlog)) == 1


async def test_close_drains_appends_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = EmbeddedLog(path)
    await log.start()
    tasks = [asyncio.create_task(log.append("t", [event(i)])) for i in range(100)]
    await asyncio.sleep(0)  # these are queued for the writer
    tasks += [asyncio.create_task(log.append("t", [event(i)])) for i in range(100, 200)]
    await log.close()  # those have not started: they find the log closed
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    acked = {i for i, o in enumerate(outcomes) if isinstance(o, AppendResult)}
    refused = {i for i, o in enumerate(outcomes) if isinstance(o, LogClosed)}
    assert acked | refused == set(range(200))
    assert acked  # queued before close: drained, not dropped
    assert refused  # started after close: refused, not half-stored
    async with EmbeddedLog(path) as reopened:
        assert set(ns(await read_all(reopened))) == acked


# -- unavailable, closed -------------------------------------------------------------------------


async def test_locked_database_is_unavailable_then_recovers(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path / "events.db", busy_timeout=0.05) as log:
        await log.ping()
        locker = sqlite3.connect(log.path, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            with pytest.raises(LogUnavailable) as err:
                await log.append("t", [event(1)])
            assert err.value.retriable
            with pytest.raises(LogUnavailable):
                await log.ping()
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        await log.ping()
        result = await log.append("t", [event(2)])
        assert result.appended == 1
        assert ns(await read_all(log)) == [2]


async def test_closed_log(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "events.db")
    await log.start()
    await log.append("t", [event(1)])
    sub = log.subscribe(["t"], "g")
    assert len(await sub.fetch(max_wait=0)) == 1
    await log.close()
    await log.close()  # idempotent
    with pytest.raises(LogClosed) as err:
        await log.append("t", [event(2)])
    assert isinstance(err.value, EventLogError)
    assert not err.value.retriable
    with pytest.raises(LogUnavailable):
        await log.ping()
    with pytest.raises(LogClosed):
        await read_all(log)
    with pytest.raises(LogClosed):
        await sub.fetch(max_wait=0)
    with pytest.raises(LogClosed):
        await sub.commit()


async def test_close_wakes_a_waiting_consumer(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "events.db")
    await log.start()
    sub = log.subscribe(["t"], "g")
    assert await sub.fetch(max_wait=0) == []
    fetch = asyncio.create_task(sub.fetch(max_wait=3600))
    await asyncio.sleep(0)  # the fetch has queued its query on the reader thread
    await read_all(log)  # queued after it: once answered, so was the fetch's query
    for _ in range(5):
        await asyncio.sleep(0)
    assert not fetch.done()
    await log.close()
    async with asyncio.timeout(30):  # a hang guard, not a timing assertion
        outcome = (await asyncio.gather(fetch, return_exceptions=True))[0]
    # the consumer learns the log is gone, as an EventLogError it can handle
    assert isinstance(outcome, LogClosed), repr(outcome)


# -- reading -------------------------------------------------------------------------------------


async def test_read_by_topic_offset_and_time(eventlog: EmbeddedLog) -> None:
    hour = timedelta(hours=1)
    for i in range(8):
        topic = "a" if i % 2 == 0 else "b"
        await eventlog.append(topic, [event(i, time=T0 + i * hour)])
    everything = await read_all(eventlog)
    assert ns(everything) == list(range(8))
    assert ns(await read_all(eventlog, ["a"])) == [0, 2, 4, 6]
    assert ns(await read_all(eventlog, ["b", "a"])) == list(range(8))
    assert await read_all(eventlog, ["c"]) == []

    fourth = everything[3].offset
    assert ns([r async for r in eventlog.read(from_offset=fourth)]) == [3, 4, 5, 6, 7]
    assert ns([r async for r in eventlog.read(["a"], from_offset=fourth)]) == [4, 6]
    assert [r async for r in eventlog.read(from_offset=everything[-1].offset + 1)] == []

    since, until = T0 + 2 * hour, T0 + 5 * hour  # since inclusive, until exclusive
    assert ns([r async for r in eventlog.read(since=since)]) == [2, 3, 4, 5, 6, 7]
    assert ns([r async for r in eventlog.read(until=until)]) == [0, 1, 2, 3, 4]
    assert ns([r async for r in eventlog.read(since=since, until=until)]) == [2, 3, 4]
    assert ns([r async for r in eventlog.read(["b"], since=since, until=until)]) == [3]
    # an offset-aware time in another zone means the same instant
    plus2 = since.astimezone(timezone(timedelta(hours=2)))
    assert ns([r async for r in eventlog.read(since=plus2)]) == [2, 3, 4, 5, 6, 7]


async def test_read_pages_through_a_long_log(eventlog: EmbeddedLog) -> None:
    total = 2345
    await eventlog.append("t", [event(i) for i in range(total)])
    records = await read_all(eventlog)
    assert ns(records) == list(range(total))
    offsets = [r.offset for r in records]
    assert offsets == sorted(set(offsets))


# -- consumer groups -----------------------------------------------------------------------------


async def test_consumer_group_commit_resume_and_redelivery(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with EmbeddedLog(path) as log:
        await log.append("a", [event(i) for i in range(5)])
        await log.append("b", [event(100)])
        sub = log.subscribe(["a"], "classifier")
        assert ns(await sub.fetch(max_wait=0)) == [0, 1, 2, 3, 4]
        await sub.commit()
        await log.append("a", [event(5), event(6)])
        assert ns(await sub.fetch(max_wait=0)) == [5, 6]
        # processed but not committed, then the process stops
        await sub.close()
    async with EmbeddedLog(path) as log:
        sub = log.subscribe(["a"], "classifier")
        assert ns(await sub.fetch(max_wait=0)) == [5, 6]  # redelivered
        await sub.commit()
        assert await sub.fetch(max_wait=0) == []
        # another group has its own position, from the start, over both topics in log order
        other = log.subscribe(["a", "b"], "comms")
        assert ns(await other.fetch(max_wait=0)) == [0, 1, 2, 3, 4, 100, 5, 6]
    async with EmbeddedLog(path) as log:
        sub = log.subscribe(["a"], "classifier")
        assert await sub.fetch(max_wait=0) == []
        await log.append("a", [event(7)])
        assert ns(await sub.fetch(max_wait=0)) == [7]


async def test_fetch_respects_max_records_and_commit_covers_only_what_was_fetched(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    async with EmbeddedLog(path) as log:
        await log.append("a", [event(i) for i in range(10)])
        sub = log.subscribe(["a"], "g")
        assert ns(await sub.fetch(max_records=3, max_wait=0)) == [0, 1, 2]
        assert ns(await sub.fetch(max_records=3, max_wait=0)) == [3, 4, 5]
        await sub.commit()
        await sub.commit()  # nothing new: a no-op
    async with EmbeddedLog(path) as log:
        sub = log.subscribe(["a"], "g")
        assert ns(await sub.fetch(max_wait=0)) == [6, 7, 8, 9]


async def test_fetch_is_woken_by_an_append_in_this_process(eventlog: EmbeddedLog) -> None:
    await eventlog.append("a", [event(0)])
    sub = eventlog.subscribe(["a"], "g")
    assert ns(await sub.fetch(max_wait=0)) == [0]

    fetch = asyncio.create_task(sub.fetch(max_wait=3600))
    await asyncio.sleep(0)  # the fetch has queued its query on the reader thread
    await read_all(eventlog)  # queued after it: once answered, so was the fetch's query
    for _ in range(5):
        await asyncio.sleep(0)
    assert not fetch.done()  # found nothing; waiting, not polling and returning early

    await eventlog.append("a", [event(1)])
    async with asyncio.timeout(30):  # a hang guard; max_wait is an hour
        got = await fetch
    assert ns(got) == [1]
