"""The IncidentStore contract, run on every backend: embedded (SQLite) and PostgreSQL.

Each test gets an empty store. PostgreSQL runs on the real test server, in a database made
for this module and dropped after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from services import Services, fresh_database_sync

from schemas import TOPIC_INCIDENTS, Envelope, new_event_id
from schemas.alertmanager import AlertStatus
from schemas.incidents import (
    Incident,
    IncidentAlert,
    IncidentCounts,
    IncidentEventData,
    IncidentEventType,
    IncidentStatus,
)
from schemas.severity import Severity
from store import (
    AlertMark,
    EmbeddedStore,
    GroupState,
    IncidentQuery,
    IncidentStore,
    IncidentWrite,
    OutboxEvent,
    PostgresStore,
    StoreConflict,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = '{}:{alertname="HighErrorRate"}'
Opener = Callable[[], AbstractAsyncContextManager[IncidentStore]]


@pytest.fixture(scope="module")
def pg_dsn(services: Services) -> Iterator[str]:
    """A database of its own for this module, on the shared test server."""
    with fresh_database_sync(services, "sevpipe_contract") as dsn:
        yield dsn


@pytest.fixture(params=["embedded", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens a store on this test's backend; two openers see the same data (two replicas)."""
    if request.param == "embedded":
        return lambda: EmbeddedStore(tmp_path / "store.db")
    dsn: str = request.getfixturevalue("pg_dsn")
    return lambda: PostgresStore(dsn, max_size=4)


@pytest.fixture
async def store(opener: Opener) -> AsyncIterator[IncidentStore]:
    async with opener() as s:
        await s.reset()  # the module's database is shared by its tests
        yield s


def test_backends_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(EmbeddedStore(tmp_path / "s.db"), IncidentStore)
    assert isinstance(PostgresStore("postgresql://127.0.0.1:1/none"), IncidentStore)


def incident(
    incident_id: str = "inc-1",
    *,
    key: str = KEY,
    severity: Severity = "SEV-2",
    status: IncidentStatus = "open",
    updated: datetime = T0,
    version: int = 1,
    fingerprints: tuple[str, ...] = ("a",),
) -> Incident:
    return Incident(
        id=incident_id,
        key=key,
        severity=severity,
        status=status,
        title=f"incident {incident_id}",
        reasons=(f"deserves {severity}",),
        counts=IncidentCounts(
            alerts=len(fingerprints),
            firing=0 if status == "resolved" else len(fingerprints),
            resolved=len(fingerprints) if status == "resolved" else 0,
        ),
        opened_at=T0 - timedelta(hours=1),
        updated_at=updated,
        resolved_at=updated if status == "resolved" else None,
        version=version,
    )


def alert(fp: str, status: AlertStatus = "firing", severity: Severity = "SEV-2") -> IncidentAlert:
    return IncidentAlert(
        fingerprint=fp, alertname="HighErrorRate", status=status, starts_at=T0, severity=severity
    )


def event(
    inc: Incident,
    type_: IncidentEventType = "incident.updated",
    alerts: tuple[IncidentAlert, ...] = (),
) -> Envelope:
    data = IncidentEventData(incident=inc, change=f"{type_} v{inc.version}", alerts=alerts)
    return Envelope(
        id=new_event_id(),
        type=type_,
        source="/sevpipe/classifier",
        time=inc.updated_at,
        subject=inc.id,
        data=data.model_dump(mode="json"),
    )


def with_marks(group: GroupState, marks: dict[str, AlertMark]) -> GroupState:
    """``group`` with ``marks`` decided (to be written by the next save)."""
    group.marks.update(marks)
    group.changed_marks.update(marks)
    return group


FPS = ("a", "b", "c", "x", "z", "f\x00")


async def load(store: IncidentStore, key: str = KEY) -> GroupState:
    """The group as a batch that names every fingerprint these tests use loads it."""
    return (await store.load_groups([key], {key: FPS}))[key]


def outbox(*envelopes: Envelope) -> list[OutboxEvent]:
    return [OutboxEvent(TOPIC_INCIDENTS, e.subject, e) for e in envelopes]


async def open_first(store: IncidentStore) -> tuple[Incident, Envelope]:
    """Group KEY with incident inc-1 (version 1) and its opening event, saved."""
    inc = incident()
    opened = event(inc, "incident.opened")
    group = with_marks(GroupState(KEY, 0, inc), {"a": AlertMark(T0.isoformat(), "firing")})
    await store.save([group], [IncidentWrite(inc, 0)], outbox(opened))
    return inc, opened


# -- round trip -------------------------------------------------------------------------------


async def test_save_then_load_gives_back_groups_incidents_and_timeline(
    store: IncidentStore, opener: Opener
) -> None:
    inc, opened = await open_first(store)

    groups = await store.load_groups([KEY, "never-seen"], {KEY: ["a", "b"]})
    assert groups[KEY].version == 1
    assert groups[KEY].incident == inc
    assert groups[KEY].marks == {"a": AlertMark(T0.isoformat(), "firing")}
    # Only the fingerprints asked for are loaded: a batch never pays for the whole group.
    assert (await store.load_groups([KEY], {KEY: ["b"]}))[KEY].marks == {}
    assert groups["never-seen"] == GroupState("never-seen")
    assert await store.get_incident(inc.id) == inc
    assert await store.get_incident("inc-unknown") is None
    assert await store.timeline(inc.id) == [opened]
    assert await store.load_groups([]) == {}

    # Stored, not cached: another store on the same data (a second replica) sees the same.
    async with opener() as again:
        assert (await again.load_groups([KEY]))[KEY].incident == inc
        assert await again.timeline(inc.id) == [opened]


async def test_incident_json_round_trips_exactly(store: IncidentStore) -> None:
    # NUL, non-BMP characters, quotes and microseconds: what a label or a summary may hold.
    odd = 'nul\x00 tab\t quote" emoji \U0001f525 accent é'
    inc = incident("inc-odd").model_copy(
        update={
            "title": odd,
            "updated_at": datetime(2026, 3, 1, 12, 0, 0, 999999, tzinfo=UTC),
        }
    )
    opened = event(inc, "incident.opened")
    marks = {"f\x00": AlertMark(odd, "firing", odd, "01JNQ0000000000000000000EV")}
    odd_alert = IncidentAlert(
        fingerprint="f\x00",
        status="firing",
        starts_at=T0 + timedelta(microseconds=123457),
        severity="SEV-1",
        labels={"k\x00": odd, "empty": ""},
    )
    group = with_marks(GroupState(inc.key, 0, inc), marks)
    group.changed_alerts[(inc.id, "f\x00")] = odd_alert
    await store.save([group], [IncidentWrite(inc, 0)], outbox(opened))

    got = await store.get_incident(inc.id)
    assert got is not None
    assert got.model_dump_json() == inc.model_dump_json()
    group = await load(store, inc.key)
    assert group.marks == marks
    assert group.alerts == {"f\x00": odd_alert}
    assert await store.list_alerts(inc.id) == [odd_alert]
    (stored,) = await store.timeline(inc.id)
    assert stored.model_dump_json() == opened.model_dump_json()


async def test_every_save_bumps_the_group_version_and_keeps_incident_versions(
    store: IncidentStore,
) -> None:
    inc, _ = await open_first(store)
    group = await load(store)
    v2 = inc.model_copy(update={"version": 2, "severity": "SEV-0"})
    group.incident = v2
    with_marks(group, {"b": AlertMark(T0.isoformat(), "firing")})
    await store.save([group], [IncidentWrite(v2, 1)], outbox(event(v2)))

    again = await load(store)
    assert again.version == 2
    assert again.incident == v2
    assert set(again.marks) == {"a", "b"}
    assert [e.data["incident"]["version"] for e in await store.timeline(inc.id)] == [1, 2]


async def test_a_group_without_an_incident_keeps_its_marks(store: IncidentStore) -> None:
    marks = {"x": AlertMark("-", "resolved")}
    await store.save([with_marks(GroupState("quiet", 0, None), marks)], [], [])
    assert await load(store, "quiet") == GroupState("quiet", 1, None, marks)


# -- optimistic versions ----------------------------------------------------------------------


async def test_two_writers_of_one_group_the_second_conflicts_and_writes_nothing(
    store: IncidentStore,
) -> None:
    inc, opened = await open_first(store)
    first, second = await load(store), await load(store)

    mine = inc.model_copy(update={"version": 2, "severity": "SEV-1"})
    first.incident = mine
    with_marks(first, {"b": AlertMark(T0.isoformat(), "firing")})
    mine_event = event(mine)
    await store.save([first], [IncidentWrite(mine, 1)], outbox(mine_event))

    theirs = inc.model_copy(update={"version": 2, "severity": "SEV-0"})
    second.incident = theirs
    with_marks(second, {"c": AlertMark(T0.isoformat(), "firing")})
    with pytest.raises(StoreConflict):
        await store.save([second], [IncidentWrite(theirs, 1)], outbox(event(theirs)))

    group = await load(store)
    assert group.version == 2
    assert group.incident == mine
    assert set(group.marks) == {"a", "b"}
    assert await store.get_incident(inc.id) == mine
    assert await store.timeline(inc.id) == [opened, mine_event]
    assert [s.envelope for s in await store.unrelayed()] == [opened, mine_event]


async def test_a_stale_incident_conflicts_and_rolls_back_its_group(store: IncidentStore) -> None:
    inc, _ = await open_first(store)
    group = (await store.load_groups([KEY]))[KEY]
    # The API changes the incident in between, without touching the group.
    by_hand = inc.model_copy(update={"version": 2, "severity": "SEV-3"})
    await store.save([], [IncidentWrite(by_hand, 1)], outbox(event(by_hand)))

    stale = inc.model_copy(update={"version": 2, "severity": "SEV-0"})
    group.incident = stale
    with_marks(group, {"z": AlertMark(T0.isoformat(), "firing")})
    with pytest.raises(StoreConflict):
        await store.save([group], [IncidentWrite(stale, 1)], outbox(event(stale)))

    assert await store.get_incident(inc.id) == by_hand
    assert (await load(store)).version == 1
    assert "z" not in (await load(store)).marks
    assert len(await store.timeline(inc.id)) == 2


async def test_an_incident_written_without_its_group_is_still_version_checked(
    store: IncidentStore,
) -> None:
    # The API changes an older incident of a key without touching the group.
    inc, _ = await open_first(store)
    a = inc.model_copy(update={"version": 2, "severity": "SEV-3"})
    b = inc.model_copy(update={"version": 2, "severity": "SEV-0"})
    await store.save([], [IncidentWrite(a, 1)], outbox(event(a)))
    with pytest.raises(StoreConflict):
        await store.save([], [IncidentWrite(b, 1)], outbox(event(b)))
    assert await store.get_incident(inc.id) == a
    assert len(await store.timeline(inc.id)) == 2


async def test_two_writers_creating_the_same_group_the_second_conflicts(
    store: IncidentStore,
) -> None:
    one, two = (await store.load_groups([KEY]))[KEY], (await store.load_groups([KEY]))[KEY]
    inc1, inc2 = incident("inc-1"), incident("inc-2")
    one.incident, two.incident = inc1, inc2
    await store.save([one], [IncidentWrite(inc1, 0)], outbox(event(inc1)))
    with pytest.raises(StoreConflict):
        await store.save([two], [IncidentWrite(inc2, 0)], outbox(event(inc2)))
    assert await store.get_incident("inc-2") is None
    assert await store.timeline("inc-2") == []
    assert [i.id for i in await store.list_incidents(IncidentQuery())] == ["inc-1"]


async def test_creating_an_incident_that_exists_conflicts(store: IncidentStore) -> None:
    inc, _ = await open_first(store)
    again = inc.model_copy(update={"severity": "SEV-0"})
    with pytest.raises(StoreConflict):
        await store.save([GroupState("elsewhere", 0, again)], [IncidentWrite(again, 0)], [])
    assert await store.get_incident(inc.id) == inc
    assert (await store.load_groups(["elsewhere"]))["elsewhere"].version == 0


async def test_a_conflict_on_a_later_group_rolls_back_the_earlier_ones(
    store: IncidentStore,
) -> None:
    await open_first(store)
    stale = (await store.load_groups([KEY]))[KEY]
    fresh = (await store.load_groups([KEY]))[KEY]
    await store.save([fresh], [], [])  # someone else moved KEY on

    other = GroupState("other-key", 0, incident("inc-9", key="other-key"))
    assert other.incident is not None
    with pytest.raises(StoreConflict):
        await store.save(
            [other, stale], [IncidentWrite(other.incident, 0)], outbox(event(other.incident))
        )
    assert (await store.load_groups(["other-key"]))["other-key"].version == 0
    assert await store.get_incident("inc-9") is None
    assert await store.timeline("inc-9") == []


# -- outbox and timeline ----------------------------------------------------------------------


async def test_unrelayed_is_oldest_first_and_mark_relayed_takes_events_off_it(
    store: IncidentStore,
) -> None:
    inc, opened = await open_first(store)
    later = [event(inc.model_copy(update={"version": v})) for v in (2, 3, 4)]
    await store.save([], [], outbox(*later))

    pending = await store.unrelayed()
    assert [p.envelope for p in pending] == [opened, *later]
    assert all(p.topic == TOPIC_INCIDENTS for p in pending)
    assert [p.seq for p in pending] == sorted(p.seq for p in pending)
    assert [p.envelope for p in await store.unrelayed(2)] == [opened, later[0]]

    await store.mark_relayed([pending[0].seq, pending[1].seq])
    assert [p.envelope for p in await store.unrelayed()] == later[1:]
    await store.mark_relayed([])
    await store.mark_relayed([p.seq for p in pending])
    assert await store.unrelayed() == []
    # Relayed or not, the timeline keeps every event.
    assert await store.timeline(inc.id) == [opened, *later]


async def test_an_outbox_event_whose_id_is_stored_is_ignored(store: IncidentStore) -> None:
    inc, opened = await open_first(store)
    await store.mark_relayed([p.seq for p in await store.unrelayed()])
    second = event(inc.model_copy(update={"version": 2}))

    await store.save([], [], outbox(opened, second, second))

    assert await store.timeline(inc.id) == [opened, second]
    assert [p.envelope for p in await store.unrelayed()] == [second]


async def test_timeline_keeps_decision_order_per_incident(store: IncidentStore) -> None:
    # Event ids deliberately sort against the decision order: the order is the store's.
    a, b = incident("inc-a", key="ka"), incident("inc-b", key="kb")
    a_events = [event(a.model_copy(update={"version": v})) for v in (1, 2, 3)]
    b_events = [event(b.model_copy(update={"version": v})) for v in (1, 2)]
    await store.save([], [], outbox(a_events[2], b_events[1]))
    await store.save([], [], outbox(a_events[0], b_events[0], a_events[1]))
    assert await store.timeline("inc-a") == [a_events[2], a_events[0], a_events[1]]
    assert await store.timeline("inc-b") == [b_events[1], b_events[0]]
    assert await store.timeline("inc-none") == []


# -- queries ----------------------------------------------------------------------------------


async def _populate(store: IncidentStore) -> None:
    rows = [
        incident("inc-a", key="k1", severity="SEV-0", updated=T0 + timedelta(minutes=1)),
        incident(
            "inc-b",
            key="k2",
            severity="SEV-2",
            status="resolved",
            updated=T0 + timedelta(minutes=5),
        ),
        incident("inc-c", key="k3", severity="SEV-2", updated=T0 + timedelta(minutes=3)),
        incident("inc-d", key="k4", severity="SEV-3", updated=T0 + timedelta(minutes=3)),
        incident("inc-e", key="k5", severity="SEV-0", status="resolved", updated=T0),
    ]
    for inc in rows:
        await store.save([GroupState(inc.key, 0, inc)], [IncidentWrite(inc, 0)], outbox(event(inc)))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (IncidentQuery(), ["inc-b", "inc-d", "inc-c", "inc-a", "inc-e"]),
        (IncidentQuery(status="open"), ["inc-d", "inc-c", "inc-a"]),
        (IncidentQuery(status="resolved"), ["inc-b", "inc-e"]),
        (IncidentQuery(severity="SEV-0"), ["inc-a", "inc-e"]),
        (IncidentQuery(severity="SEV-1"), []),
        (IncidentQuery(status="open", severity="SEV-2"), ["inc-c"]),
        (IncidentQuery(since=T0 + timedelta(minutes=3)), ["inc-b", "inc-d", "inc-c"]),
        (IncidentQuery(since=T0 + timedelta(minutes=6)), []),
        (IncidentQuery(status="open", since=T0 + timedelta(minutes=2), limit=1), ["inc-d"]),
        (IncidentQuery(limit=2), ["inc-b", "inc-d"]),
        (IncidentQuery(status="resolved", limit=1), ["inc-b"]),
    ],
)
async def test_list_filters_and_orders_newest_first(
    store: IncidentStore, query: IncidentQuery, expected: list[str]
) -> None:
    await _populate(store)
    assert [i.id for i in await store.list_incidents(query)] == expected


async def test_list_follows_updates(store: IncidentStore) -> None:
    await _populate(store)
    a = await store.get_incident("inc-a")
    assert a is not None
    moved = a.model_copy(
        update={"version": 2, "status": "resolved", "updated_at": T0 + timedelta(hours=1)}
    )
    await store.save([], [IncidentWrite(moved, 1)], [])
    assert await store.list_incidents(IncidentQuery(limit=1)) == [moved]
    open_now = await store.list_incidents(IncidentQuery(status="open"))
    assert [i.id for i in open_now] == ["inc-d", "inc-c"]


# -- reset and restore (sevpipe rebuild) ------------------------------------------------------


async def test_reset_forgets_everything(store: IncidentStore) -> None:
    await _populate(store)
    await store.reset()
    assert await store.list_incidents(IncidentQuery()) == []
    assert await store.unrelayed() == []
    assert await store.timeline("inc-a") == []
    assert await store.get_incident("inc-a") is None
    assert (await store.load_groups(["k1"]))["k1"] == GroupState("k1")
    # And it is usable again: a group starts over at version 0.
    await _populate(store)
    assert (await store.load_groups(["k1"]))["k1"].version == 1


async def test_restore_rebuilds_incidents_groups_and_timelines_as_relayed(
    store: IncidentStore,
) -> None:
    v1 = incident(fingerprints=("a",))
    v2 = incident(fingerprints=("a", "b"), version=2, updated=T0 + timedelta(minutes=1))
    v3 = incident(
        fingerprints=("a", "b"), version=3, status="resolved", updated=T0 + timedelta(minutes=2)
    )
    events = [
        event(v1, "incident.opened", (alert("a"),)),
        event(v2, alerts=(alert("b"),)),
        event(v3, "incident.resolved", (alert("a", "resolved"), alert("b", "resolved"))),
    ]

    await store.restore([(TOPIC_INCIDENTS, e) for e in events])

    assert await store.get_incident(v1.id) == v3
    assert await store.timeline(v1.id) == events
    assert await store.unrelayed() == []
    assert await store.list_incidents(IncidentQuery(status="resolved")) == [v3]
    assert await store.list_alerts(v1.id) == [alert("a", "resolved"), alert("b", "resolved")]
    group = await load(store)
    assert group.incident == v3
    assert group.alerts == {"a": alert("a", "resolved"), "b": alert("b", "resolved")}
    assert group.marks == {
        "a": AlertMark(T0.isoformat(), "resolved"),
        "b": AlertMark(T0.isoformat(), "resolved"),
    }
    # Restoring the same events again (an overlapping rebuild) changes nothing.
    await store.restore([(TOPIC_INCIDENTS, e) for e in events])
    assert await store.get_incident(v1.id) == v3
    assert await store.timeline(v1.id) == events
    # An older version read late does not go back in time, nor do its alerts.
    await store.restore([(TOPIC_INCIDENTS, events[0])])
    assert await store.get_incident(v1.id) == v3
    assert (await load(store)).alerts["a"].status == "resolved"
    await store.restore([])


async def test_restore_keeps_the_newest_incident_of_a_key_current(store: IncidentStore) -> None:
    old = incident("inc-old", status="resolved", updated=T0)
    new = incident("inc-new").model_copy(
        update={"opened_at": T0 + timedelta(hours=2), "updated_at": T0 + timedelta(hours=2)}
    )
    old_later = old.model_copy(
        update={"version": 2, "severity": "SEV-3", "updated_at": T0 + timedelta(hours=3)}
    )
    await store.restore(
        [
            (TOPIC_INCIDENTS, event(old, "incident.resolved")),
            (TOPIC_INCIDENTS, event(new, "incident.opened")),
            (TOPIC_INCIDENTS, event(old_later)),  # a severity set by hand, later
        ]
    )
    group = (await store.load_groups([KEY]))[KEY]
    assert group.incident == new
    assert await store.get_incident("inc-old") == old_later


async def test_a_restored_store_takes_new_writes_with_version_checks(store: IncidentStore) -> None:
    inc = incident()
    await store.restore([(TOPIC_INCIDENTS, event(inc, "incident.opened"))])
    group = (await store.load_groups([KEY]))[KEY]
    v2 = inc.model_copy(update={"version": 2})
    group.incident = v2
    await store.save([group], [IncidentWrite(v2, 1)], outbox(event(v2)))
    with pytest.raises(StoreConflict):
        await store.save([group], [IncidentWrite(v2, 1)], [])
    assert await store.get_incident(inc.id) == v2
    assert len(await store.unrelayed()) == 1
