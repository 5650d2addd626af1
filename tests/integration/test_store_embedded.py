"""The embedded store on a real SQLite file: state, versions, outbox, queries, rebuild."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from classifier.lifecycle import Change
from schemas import TOPIC_INCIDENTS, Envelope
from schemas.incidents import Incident, IncidentAlert, IncidentEventType, IncidentStatus
from schemas.severity import Severity
from store import (
    AlertMark,
    EmbeddedStore,
    GroupState,
    IncidentQuery,
    IncidentWrite,
    OutboxEvent,
    StoreConflict,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = '{}:{alertname="HighErrorRate"}'


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    async with EmbeddedStore(tmp_path / "store.db") as s:
        yield s


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
        alerts=tuple(
            IncidentAlert(
                fingerprint=fp,
                alertname="HighErrorRate",
                status="resolved" if status == "resolved" else "firing",
                starts_at=T0,
                severity=severity,
            )
            for fp in fingerprints
        ),
        opened_at=T0 - timedelta(hours=1),
        updated_at=updated,
        resolved_at=updated if status == "resolved" else None,
        version=version,
    )


def event(inc: Incident, cause: str, type_: IncidentEventType = "incident.updated") -> Envelope:
    return Change(cause.ljust(26, "0"), type_, inc, f"change by {cause}", None).envelope()


def outbox(*envelopes: Envelope) -> list[OutboxEvent]:
    return [OutboxEvent(TOPIC_INCIDENTS, e.subject, e) for e in envelopes]


async def open_first(store: EmbeddedStore) -> tuple[Incident, Envelope]:
    """Group KEY with incident inc-1 (version 1) and its opening event, saved."""
    inc = incident()
    opened = event(inc, "01JA", "incident.opened")
    group = GroupState(KEY, 0, inc, {"a": AlertMark(T0.isoformat(), "firing")})
    await store.save([group], [IncidentWrite(inc, 0)], outbox(opened))
    return inc, opened


# -- round trip -------------------------------------------------------------------------------


async def test_save_then_load_gives_back_groups_incidents_and_timeline(
    store: EmbeddedStore, tmp_path: Path
) -> None:
    inc, opened = await open_first(store)

    groups = await store.load_groups([KEY, "never-seen"])
    assert groups[KEY].version == 1
    assert groups[KEY].incident == inc
    assert groups[KEY].marks == {"a": AlertMark(T0.isoformat(), "firing")}
    assert groups["never-seen"] == GroupState("never-seen")
    assert await store.get_incident(inc.id) == inc
    assert await store.get_incident("inc-unknown") is None
    assert await store.timeline(inc.id) == [opened]

    # On disk, not in memory: a second store on the same file sees the same.
    async with EmbeddedStore(tmp_path / "store.db") as again:
        assert (await again.load_groups([KEY]))[KEY].incident == inc
        assert await again.timeline(inc.id) == [opened]


async def test_every_save_bumps_the_group_version_and_keeps_incident_versions(
    store: EmbeddedStore,
) -> None:
    inc, _ = await open_first(store)
    group = (await store.load_groups([KEY]))[KEY]
    v2 = inc.model_copy(update={"version": 2, "severity": "SEV-0"})
    group.incident = v2
    group.marks["b"] = AlertMark(T0.isoformat(), "firing")
    await store.save([group], [IncidentWrite(v2, 1)], outbox(event(v2, "01JB")))

    again = (await store.load_groups([KEY]))[KEY]
    assert again.version == 2
    assert again.incident == v2
    assert set(again.marks) == {"a", "b"}
    assert [e.data["incident"]["version"] for e in await store.timeline(inc.id)] == [1, 2]


# -- optimistic versions ----------------------------------------------------------------------


async def test_two_writers_of_one_group_the_second_conflicts_and_writes_nothing(
    store: EmbeddedStore,
) -> None:
    inc, opened = await open_first(store)
    first, second = (await store.load_groups([KEY]))[KEY], (await store.load_groups([KEY]))[KEY]

    mine = inc.model_copy(update={"version": 2, "severity": "SEV-1"})
    first.incident = mine
    first.marks["b"] = AlertMark(T0.isoformat(), "firing")
    mine_event = event(mine, "01JB")
    await store.save([first], [IncidentWrite(mine, 1)], outbox(mine_event))

    theirs = inc.model_copy(update={"version": 2, "severity": "SEV-0"})
    second.incident = theirs
    second.marks["c"] = AlertMark(T0.isoformat(), "firing")
    with pytest.raises(StoreConflict):
        await store.save([second], [IncidentWrite(theirs, 1)], outbox(event(theirs, "01JC")))

    group = (await store.load_groups([KEY]))[KEY]
    assert group.version == 2
    assert group.incident == mine
    assert set(group.marks) == {"a", "b"}
    assert await store.get_incident(inc.id) == mine
    assert await store.timeline(inc.id) == [opened, mine_event]
    assert [s.envelope for s in await store.unrelayed()] == [opened, mine_event]


async def test_an_incident_written_without_its_group_is_still_version_checked(
    store: EmbeddedStore,
) -> None:
    # The API changes an older incident of a key without touching the group.
    inc, _ = await open_first(store)
    a = inc.model_copy(update={"version": 2, "severity": "SEV-3"})
    b = inc.model_copy(update={"version": 2, "severity": "SEV-0"})
    await store.save([], [IncidentWrite(a, 1)], outbox(event(a, "01JD")))
    with pytest.raises(StoreConflict):
        await store.save([], [IncidentWrite(b, 1)], outbox(event(b, "01JE")))
    assert await store.get_incident(inc.id) == a
    assert len(await store.timeline(inc.id)) == 2


async def test_two_writers_creating_the_same_group_the_second_conflicts(
    store: EmbeddedStore,
) -> None:
    one, two = (await store.load_groups([KEY]))[KEY], (await store.load_groups([KEY]))[KEY]
    inc1, inc2 = incident("inc-1"), incident("inc-2")
    one.incident, two.incident = inc1, inc2
    await store.save([one], [IncidentWrite(inc1, 0)], outbox(event(inc1, "01JF")))
    with pytest.raises(StoreConflict):
        await store.save([two], [IncidentWrite(inc2, 0)], outbox(event(inc2, "01JG")))
    assert await store.get_incident("inc-2") is None
    assert await store.timeline("inc-2") == []
    assert [i.id for i in await store.list_incidents(IncidentQuery())] == ["inc-1"]


async def test_a_conflict_on_a_later_group_rolls_back_the_earlier_ones(
    store: EmbeddedStore,
) -> None:
    await open_first(store)
    stale = (await store.load_groups([KEY]))[KEY]
    fresh = (await store.load_groups([KEY]))[KEY]
    await store.save([fresh], [], [])  # someone else moved KEY on

    other = GroupState("other-key", 0, incident("inc-9", key="other-key"))
    assert other.incident is not None
    with pytest.raises(StoreConflict):
        await store.save(
            [other, stale],
            [IncidentWrite(other.incident, 0)],
            outbox(event(other.incident, "01JH")),
        )
    assert (await store.load_groups(["other-key"]))["other-key"].version == 0
    assert await store.get_incident("inc-9") is None


# -- outbox -----------------------------------------------------------------------------------


async def test_unrelayed_is_oldest_first_and_mark_relayed_takes_events_off_it(
    store: EmbeddedStore,
) -> None:
    inc, opened = await open_first(store)
    later = [event(inc.model_copy(update={"version": v}), f"01JK{v}") for v in (2, 3, 4)]
    await store.save([], [], outbox(*later))

    pending = await store.unrelayed()
    assert [p.envelope for p in pending] == [opened, *later]
    assert all(p.topic == TOPIC_INCIDENTS for p in pending)
    assert [p.seq for p in pending] == sorted(p.seq for p in pending)
    assert [p.envelope for p in await store.unrelayed(2)] == [opened, later[0]]

    await store.mark_relayed([pending[0].seq, pending[1].seq])
    assert [p.envelope for p in await store.unrelayed()] == later[1:]
    await store.mark_relayed([p.seq for p in pending])
    assert await store.unrelayed() == []
    # Relayed or not, the timeline keeps every event.
    assert await store.timeline(inc.id) == [opened, *later]


async def test_an_outbox_event_whose_id_is_stored_is_ignored(store: EmbeddedStore) -> None:
    inc, opened = await open_first(store)
    await store.mark_relayed([p.seq for p in await store.unrelayed()])
    second = event(inc.model_copy(update={"version": 2}), "01JL")

    await store.save([], [], outbox(opened, second, second))

    assert await store.timeline(inc.id) == [opened, second]
    assert [p.envelope for p in await store.unrelayed()] == [second]


# -- queries ----------------------------------------------------------------------------------


async def _populate(store: EmbeddedStore) -> None:
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
        await store.save(
            [GroupState(inc.key, 0, inc)], [IncidentWrite(inc, 0)], outbox(event(inc, inc.id))
        )


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
        (IncidentQuery(limit=2), ["inc-b", "inc-d"]),
        (IncidentQuery(status="resolved", limit=1), ["inc-b"]),
    ],
)
async def test_list_filters_and_orders_newest_first(
    store: EmbeddedStore, query: IncidentQuery, expected: list[str]
) -> None:
    await _populate(store)
    assert [i.id for i in await store.list_incidents(query)] == expected


async def test_list_follows_updates(store: EmbeddedStore) -> None:
    await _populate(store)
    a = await store.get_incident("inc-a")
    assert a is not None
    moved = a.model_copy(
        update={"version": 2, "status": "resolved", "updated_at": T0 + timedelta(hours=1)}
    )
    await store.save([], [IncidentWrite(moved, 1)], [])
    assert [i.id for i in await store.list_incidents(IncidentQuery(limit=1))] == ["inc-a"]
    open_now = await store.list_incidents(IncidentQuery(status="open"))
    assert [i.id for i in open_now] == ["inc-d", "inc-c"]


# -- reset and restore (sevpipe rebuild) ------------------------------------------------------


async def test_reset_forgets_everything(store: EmbeddedStore) -> None:
    await _populate(store)
    await store.reset()
    assert await store.list_incidents(IncidentQuery()) == []
    assert await store.unrelayed() == []
    assert await store.timeline("inc-a") == []
    assert (await store.load_groups(["k1"]))["k1"] == GroupState("k1")


async def test_restore_rebuilds_incidents_groups_and_timelines_as_relayed(
    store: EmbeddedStore,
) -> None:
    v1 = incident(fingerprints=("a",))
    v2 = incident(fingerprints=("a", "b"), version=2, updated=T0 + timedelta(minutes=1))
    v3 = incident(
        fingerprints=("a", "b"), version=3, status="resolved", updated=T0 + timedelta(minutes=2)
    )
    events = [
        event(v1, "01JM1", "incident.opened"),
        event(v2, "01JM2"),
        event(v3, "01JM3", "incident.resolved"),
    ]

    await store.restore([(TOPIC_INCIDENTS, e) for e in events])

    assert await store.get_incident(v1.id) == v3
    assert await store.timeline(v1.id) == events
    assert await store.unrelayed() == []
    group = (await store.load_groups([KEY]))[KEY]
    assert group.incident == v3
    assert group.marks == {
        "a": AlertMark(T0.isoformat(), "resolved"),
        "b": AlertMark(T0.isoformat(), "resolved"),
    }
    # Restoring the same events again (an overlapping rebuild) changes nothing.
    await store.restore([(TOPIC_INCIDENTS, e) for e in events])
    assert await store.get_incident(v1.id) == v3
    assert await store.timeline(v1.id) == events
    # An older version read late does not go back in time.
    await store.restore([(TOPIC_INCIDENTS, events[0])])
    assert await store.get_incident(v1.id) == v3


async def test_restore_keeps_the_newest_incident_of_a_key_current(store: EmbeddedStore) -> None:
    old = incident("inc-old", status="resolved", updated=T0)
    new = incident("inc-new").model_copy(
        update={"opened_at": T0 + timedelta(hours=2), "updated_at": T0 + timedelta(hours=2)}
    )
    old_later = old.model_copy(
        update={"version": 2, "severity": "SEV-3", "updated_at": T0 + timedelta(hours=3)}
    )
    await store.restore(
        [
            (TOPIC_INCIDENTS, event(old, "01JN1", "incident.resolved")),
            (TOPIC_INCIDENTS, event(new, "01JN2", "incident.opened")),
            (TOPIC_INCIDENTS, event(old_later, "01JN3")),  # a severity set by hand, later
        ]
    )
    group = (await store.load_groups([KEY]))[KEY]
    assert group.incident == new
    assert await store.get_incident("inc-old") == old_later
