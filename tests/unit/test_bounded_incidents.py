"""Incidents stay bounded however many alerts a group has: events carry the summary and the
alerts that changed, a batch of one group is one change, and no event exceeds 256 KB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from classifier.lifecycle import AlertInput
from classifier.policy import Policy
from classifier.stage import decide, fingerprints
from schemas import AlertEventData, Envelope, GroupContext
from schemas.incident_state import GroupState
from schemas.incidents import MAX_EVENT_BYTES, IncidentEventData

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = '{}:{alertname="Storm"}'
POLICY = Policy()


def alert(
    fp: str,
    status: str = "firing",
    *,
    impact: str = "error_rate",
    starts: datetime = T0,
    ends: datetime | None = None,
    labels: dict[str, str] | None = None,
) -> AlertEventData:
    return AlertEventData.model_validate(
        {
            "status": status,
            "fingerprint": fp,
            "alertname": "Storm",
            "labels": {
                "alertname": "Storm",
                "pod": f"pod-{fp}",
                "impact": impact,
                **(labels or {}),
            },
            "annotations": {"summary": f"pod {fp} is failing"},
            "starts_at": starts,
            "ends_at": ends if status == "resolved" else None,
            "group": GroupContext(receiver="sevpipe", group_key=KEY),
            "received_at": starts,
        }
    )


class Stream:
    """Alert events with increasing ids and times, as ingest appends them."""

    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, data: AlertEventData, at: datetime | None = None) -> AlertInput:
        self.seq += 1
        event_id = f"01JNQ{self.seq:08d}" + "C" * 13
        return AlertInput(event_id, at or T0 + timedelta(milliseconds=self.seq), data)


def fold(group: GroupState, inputs: list[AlertInput]) -> list[Envelope]:
    """One consumer batch through the stage's decide, as the store would hand it over."""
    decided = decide(inputs, {group.key: group}, POLICY)
    group.clear_changes()
    return [o.envelope for o in decided.outbox]


def data(env: Envelope) -> IncidentEventData:
    return IncidentEventData.model_validate(env.data)


def test_a_storm_in_one_batch_is_one_change_split_under_the_size_limit() -> None:
    stream, group = Stream(), GroupState(KEY)
    events = fold(group, [stream(alert(f"fp{n:05d}")) for n in range(5000)])

    sizes = [len(e.json_bytes()) for e in events]
    assert max(sizes) <= MAX_EVENT_BYTES
    assert sum(sizes) / 5000 <= 2048  # the README's bound per alert
    assert 1 < len(events) < 40
    assert events[0].type == "incident.opened"
    assert {e.type for e in events[1:]} == {"incident.updated"}
    assert [data(e).incident.version for e in events] == list(range(1, len(events) + 1))
    assert len({e.id for e in events}) == len(events)
    # Every alert is in exactly one event, counted raw (no dedup before asserting).
    fps = [a.fingerprint for e in events for a in data(e).alerts]
    assert len(fps) == 5000
    assert set(fps) == {f"fp{n:05d}" for n in range(5000)}
    final = data(events[-1]).incident
    assert final.counts.model_dump() == {"alerts": 5000, "firing": 5000, "resolved": 0}
    assert group.incident == final


def test_later_batches_carry_only_their_own_alerts() -> None:
    stream, group = Stream(), GroupState(KEY)
    fold(group, [stream(alert(f"a{n}")) for n in range(300)])
    # The store hands a batch only the marks and alerts of its fingerprints.
    group.marks = {}
    group.alerts = {}
    events = fold(group, [stream(alert("new-1")), stream(alert("new-2"))])
    [event] = events
    assert event.type == "incident.updated"
    assert [a.fingerprint for a in data(event).alerts] == ["new-1", "new-2"]
    assert data(event).incident.counts.alerts == 302
    assert len(event.json_bytes()) < 4096


def test_an_incident_that_opens_and_resolves_in_one_batch_says_both() -> None:
    stream, group = Stream(), GroupState(KEY)
    events = fold(
        group,
        [
            stream(alert("a")),
            stream(alert("b")),
            stream(alert("a", "resolved", ends=T0 + timedelta(minutes=1))),
            stream(alert("b", "resolved", ends=T0 + timedelta(minutes=1))),
        ],
    )
    assert [e.type for e in events] == ["incident.opened", "incident.resolved"]
    # Each event carries the alerts as they are at its end: a resolved inside the opening.
    assert [[(a.fingerprint, a.status) for a in data(e).alerts] for e in events] == [
        [("a", "resolved"), ("b", "firing")],
        [("b", "resolved")],
    ]
    assert data(events[0]).incident.counts.firing == 1
    assert data(events[1]).incident.counts.model_dump() == {"alerts": 2, "firing": 0, "resolved": 2}


def test_updates_then_an_escalation_are_one_escalation() -> None:
    stream, group = Stream(), GroupState(KEY)
    fold(group, [stream(alert("a"))])
    events = fold(
        group,
        [stream(alert("b")), stream(alert("c")), stream(alert("d", impact="outage"))],
    )
    [event] = events
    assert event.type == "incident.escalated"
    assert data(event).previous_severity == "SEV-2"
    assert data(event).incident.severity == "SEV-0"
    assert "escalated SEV-2 -> SEV-0" in data(event).change


def test_one_alert_with_huge_labels_still_fits() -> None:
    stream, group = Stream(), GroupState(KEY)
    huge = {f"l{n}": "x" * 50_000 for n in range(20)}  # 1 MB of labels, as a body allows
    [event] = fold(group, [stream(alert("a", labels=huge))])
    assert len(event.json_bytes()) <= MAX_EVENT_BYTES


def test_firing_again_with_the_same_starts_at_after_the_resolve_took_effect_refires() -> None:
    stream, group = Stream(), GroupState(KEY)
    ends = T0 + timedelta(minutes=5)
    batch = [
        stream(alert("a"), at=T0),
        stream(alert("a", "resolved", ends=ends), at=ends),
        stream(alert("a"), at=ends + timedelta(minutes=1)),  # Prometheus is back
    ]
    events = fold(group, batch)
    assert [e.type for e in events] == ["incident.opened", "incident.resolved", "incident.reopened"]
    assert group.incident is not None
    assert group.incident.status == "open"
    # The same batch delivered again (a crash before the commit) changes nothing.
    group.marks = {"a": group.marks["a"]}
    assert fold(group, batch) == []


def test_a_late_firing_from_before_the_resolve_is_still_ignored() -> None:
    stream, group = Stream(), GroupState(KEY)
    ends = T0 + timedelta(minutes=5)
    fold(group, [stream(alert("a", "resolved", ends=ends), at=ends)])
    assert fold(group, [stream(alert("a"), at=ends - timedelta(minutes=1))]) == []
    assert group.incident is None


def test_a_batch_asks_the_store_for_its_own_fingerprints_only() -> None:
    stream = Stream()
    inputs = [stream(alert(f"fp{n}")) for n in range(3)] + [stream(alert("fp0", "resolved"))]
    assert fingerprints(inputs, POLICY) == {KEY: {"fp0", "fp1", "fp2"}}


def test_events_of_the_unbounded_format_are_read_as_a_change_of_their_alerts() -> None:
    old = {
        "incident": {
            "id": "inc-1",
            "key": KEY,
            "severity": "SEV-2",
            "status": "open",
            "title": "t",
            "reasons": [],
            "alerts": [
                {"fingerprint": "a", "status": "firing", "severity": "SEV-2"},
                {"fingerprint": "b", "status": "resolved", "severity": "SEV-2"},
            ],
            "opened_at": T0.isoformat(),
            "updated_at": T0.isoformat(),
            "version": 3,
        },
        "change": "alert b resolved",
    }
    parsed = IncidentEventData.model_validate(old)
    assert [a.fingerprint for a in parsed.alerts] == ["a", "b"]
    assert parsed.incident.counts.model_dump() == {"alerts": 2, "firing": 1, "resolved": 1}
