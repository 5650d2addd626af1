"""The incident lifecycle as pure functions: one group's state plus one alert gives events.

Classifications are given by hand here (the classifier has its own tests), so each test
says exactly which severity an alert deserves and checks only what the lifecycle decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from classifier.grouping import incident_key
from classifier.lifecycle import AlertInput, apply_alert
from classifier.people import set_severity
from classifier.policy import Policy
from classifier.stage import decide
from schemas import AlertEventData, Envelope, GroupContext
from schemas.incident_state import GroupState
from schemas.incidents import Incident, IncidentAlert, IncidentCounts, IncidentEventData
from schemas.severity import Classification, Severity

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=1)
GROUP_KEY = '{}:{alertname="HighErrorRate"}'


def alert(
    fingerprint: str,
    status: str = "firing",
    *,
    starts: datetime = T0,
    group_key: str = GROUP_KEY,
    labels: dict[str, str] | None = None,
    alertname: str | None = None,
) -> AlertEventData:
    name = alertname if alertname is not None else f"Alert{fingerprint.upper()}"
    return AlertEventData.model_validate(
        {
            "status": status,
            "fingerprint": fingerprint,
            "alertname": name,
            "labels": {"alertname": name, **(labels or {})},
            "annotations": {"summary": f"{name} is bad"},
            "starts_at": starts,
            "ends_at": starts + timedelta(minutes=5) if status == "resolved" else None,
            "group": GroupContext(receiver="sevpipe", group_key=group_key),
            "received_at": starts,
        }
    )


def cls(severity: Severity, reason: str | None = None) -> Classification:
    return Classification(
        severity=severity, reasons=(reason or f"deserves {severity}",), rule="test"
    )


def payload(env: Envelope) -> IncidentEventData:
    return IncidentEventData.model_validate(env.data)


@dataclass
class Group:
    """One group fed alerts in order; event ids are deterministic (seq-based)."""

    key: str = GROUP_KEY
    state: GroupState = field(init=False)
    seq: int = 0

    def __post_init__(self) -> None:
        self.state = GroupState(self.key)

    def feed(
        self,
        data: AlertEventData,
        severity: Severity = "SEV-3",
        *,
        at: datetime | None = None,
        reason: str | None = None,
    ) -> list[Envelope]:
        self.seq += 1
        event_id = f"01JNQ{self.seq:05d}" + "A" * 16
        when = at if at is not None else T0 + timedelta(seconds=self.seq)
        item = AlertInput(event_id, when, data)
        changes = apply_alert(self.state, item, cls(severity, reason), WINDOW)
        return [c.envelope() for c in changes]

    @property
    def incident(self) -> Incident:
        return incident_of(self.state)


def incident_of(group: GroupState) -> Incident:
    assert group.incident is not None, group.key
    return group.incident


def alerts_of(group: GroupState) -> list[IncidentAlert]:
    """The current incident's alerts as the group holds them (all of them in these tests)."""
    return list(group.alerts.values())


def only(events: Sequence[Envelope]) -> Envelope:
    assert len(events) == 1, [e.type for e in events]
    return events[0]


# -- opening and grouping ----------------------------------------------------------------


def test_first_firing_opens_an_incident_with_its_alert_and_reasons() -> None:
    g = Group()
    at = T0 + timedelta(minutes=2)
    env = only(g.feed(alert("a"), "SEV-2", at=at, reason="impact error_rate"))

    data = payload(env)
    inc = data.incident
    assert env.type == "incident.opened"
    assert env.subject == inc.id == g.incident.id
    assert env.time == at
    assert inc.key == GROUP_KEY
    assert (inc.status, inc.severity, inc.severity_source) == ("open", "SEV-2", "policy")
    assert inc.version == 1
    assert inc.opened_at == inc.updated_at == at
    assert inc.title == "AlertA: AlertA is bad"
    assert inc.reasons == ("AlertA: impact error_rate",)
    assert [(a.fingerprint, a.status, a.severity) for a in data.alerts] == [
        ("a", "firing", "SEV-2")
    ]
    assert inc.counts == IncidentCounts(alerts=1, firing=1, resolved=0)
    assert data.cause == f"01JNQ{1:05d}" + "A" * 16
    assert data.previous_severity is None
    assert data.actor is None


def test_alerts_of_the_same_key_make_one_incident() -> None:
    g = Group()
    opened = payload(only(g.feed(alert("a"), "SEV-3"))).incident
    env = only(g.feed(alert("b"), "SEV-3"))

    inc = payload(env).incident
    assert env.type == "incident.updated"
    assert inc.id == opened.id
    assert inc.version == 2
    assert [a.fingerprint for a in payload(env).alerts] == ["b"]  # only what changed
    assert inc.counts == IncidentCounts(alerts=2, firing=2, resolved=0)
    assert [a.fingerprint for a in alerts_of(g.state)] == ["a", "b"]
    assert g.incident == inc


def test_incident_key_is_the_group_key_unless_the_policy_groups_by_labels() -> None:
    data = alert("a", labels={"service": "checkout", "env": "prod"})
    assert incident_key(data, Policy()) == GROUP_KEY
    by_labels = Policy(group_by=("service", "env"))
    assert incident_key(data, by_labels) == '{service="checkout",env="prod"}'
    assert incident_key(alert("b"), by_labels) == '{service="",env=""}'


def _decide(policy: Policy, items: Sequence[AlertEventData]) -> dict[str, GroupState]:
    inputs = [
        AlertInput(f"01JNQ{i:05d}" + "B" * 16, T0 + timedelta(seconds=i), data)
        for i, data in enumerate(items, 1)
    ]
    groups = {
        incident_key(i.data, policy): GroupState(incident_key(i.data, policy)) for i in inputs
    }
    decided = decide(inputs, groups, policy)
    assert {g.key for g in decided.groups} == set(groups)
    return groups


def test_group_by_labels_joins_alerts_across_group_keys_and_splits_by_label() -> None:
    items = [
        alert("a", group_key="{}:{a}", labels={"service": "checkout", "severity": "warning"}),
        alert("b", group_key="{}:{b}", labels={"service": "checkout", "severity": "warning"}),
        alert("c", group_key="{}:{a}", labels={"service": "search", "severity": "warning"}),
    ]

    by_service = _decide(Policy(group_by=("service",)), items)
    incidents = {k: incident_of(g) for k, g in by_service.items()}
    assert set(incidents) == {'{service="checkout"}', '{service="search"}'}
    assert [a.fingerprint for a in alerts_of(by_service['{service="checkout"}'])] == ["a", "b"]
    assert [a.fingerprint for a in alerts_of(by_service['{service="search"}'])] == ["c"]
    assert incidents['{service="checkout"}'].counts.alerts == 2
    assert incidents['{service="checkout"}'].key == '{service="checkout"}'

    by_group_key = _decide(Policy(), items)
    fps = {k: [a.fingerprint for a in alerts_of(g)] for k, g in by_group_key.items()}
    assert fps == {"{}:{a}": ["a", "c"], "{}:{b}": ["b"]}


# -- severity: rises automatically, never falls by itself ---------------------------------


def test_a_more_severe_alert_escalates_with_its_reasons() -> None:
    g = Group()
    g.feed(alert("a"), "SEV-2", reason="impact error_rate")
    env = only(g.feed(alert("b"), "SEV-0", reason="user_impact_pct 93 > 90"))

    data = payload(env)
    assert env.type == "incident.escalated"
    assert data.previous_severity == "SEV-2"
    assert data.incident.severity == "SEV-0"
    assert data.incident.severity_source == "policy"
    assert data.incident.reasons == ("AlertB: user_impact_pct 93 > 90",)
    assert "SEV-2 -> SEV-0" in data.change
    assert "user_impact_pct 93 > 90" in data.change


def test_a_refiring_alert_that_became_more_severe_escalates() -> None:
    g = Group()
    g.feed(alert("a", labels={"user_impact_pct": "20"}), "SEV-2")
    env = only(g.feed(alert("a", labels={"user_impact_pct": "95"}), "SEV-0"))
    assert env.type == "incident.escalated"
    assert g.incident.severity == "SEV-0"
    assert [a.severity for a in alerts_of(g.state)] == ["SEV-0"]
    assert [a.severity for a in payload(env).alerts] == ["SEV-0"]


def test_a_later_less_severe_alert_does_not_lower_the_severity() -> None:
    g = Group()
    g.feed(alert("a"), "SEV-1", reason="impact db_connectivity")
    env = only(g.feed(alert("b"), "SEV-3"))

    inc = payload(env).incident
    assert env.type == "incident.updated"
    assert inc.severity == "SEV-1"
    assert inc.reasons == ("AlertA: impact db_connectivity",)


def test_the_same_alert_refiring_less_severe_does_not_lower_the_severity() -> None:
    g = Group()
    g.feed(alert("a", labels={"user_impact_pct": "95"}), "SEV-0")
    g.feed(alert("a", labels={"user_impact_pct": "10"}), "SEV-2")
    assert g.incident.severity == "SEV-0"
    assert g.incident.status == "open"


def test_the_severe_alert_resolving_while_others_fire_keeps_the_severity() -> None:
    g = Group()
    g.feed(alert("a"), "SEV-2")
    g.feed(alert("b"), "SEV-0")
    env = only(g.feed(alert("b", "resolved"), "SEV-0"))

    inc = payload(env).incident
    assert env.type == "incident.updated"
    assert (inc.status, inc.severity) == ("open", "SEV-0")
    assert {a.fingerprint: a.status for a in alerts_of(g.state)} == {
        "a": "firing",
        "b": "resolved",
    }
    assert inc.counts == IncidentCounts(alerts=2, firing=1, resolved=1)


# -- a person's decision --------------------------------------------------------------------


def _severe_group() -> Group:
    g = Group()
    g.feed(alert("a"), "SEV-0", reason="impact outage")
    return g


def test_set_severity_may_lower_and_records_who_and_why() -> None:
    g = _severe_group()
    before = g.incident
    at = T0 + timedelta(hours=1)
    updated, change = set_severity(
        before, "SEV-2", reason="only staging", actor="alice", at=at, request_id="01JREQ" + "C" * 20
    )
    env = change.envelope()

    data = payload(env)
    assert env.type == "incident.updated"
    assert env.subject == before.id
    assert data.incident == updated
    assert (updated.severity, updated.severity_source) == ("SEV-2", "manual")
    assert updated.version == before.version + 1
    assert updated.updated_at == at
    assert updated.reasons == ("set by alice: only staging",)
    assert data.actor == "alice"
    assert data.previous_severity == "SEV-0"
    assert data.cause == "01JREQ" + "C" * 20
    assert "alice" in data.change
    assert "only staging" in data.change
    # The incident passed in is left as it was (pure function).
    assert before.severity == "SEV-0"


def test_set_severity_raising_is_an_escalation_and_ids_follow_the_request() -> None:
    g = Group()
    g.feed(alert("a"), "SEV-3")
    inc = g.incident
    kwargs: dict[str, Any] = {"reason": "customers call", "actor": "bob", "at": T0}
    first = set_severity(inc, "SEV-1", request_id="01JREQ" + "D" * 20, **kwargs)[1].envelope()
    again = set_severity(inc, "SEV-1", request_id="01JREQ" + "D" * 20, **kwargs)[1].envelope()
    other = set_severity(inc, "SEV-1", request_id="01JREQ" + "E" * 20, **kwargs)[1].envelope()
    assert first.type == "incident.escalated"
    assert first == again
    assert other.id != first.id


def test_after_a_manual_lowering_only_a_new_more_severe_alert_raises_it_again() -> None:
    g = _severe_group()
    lowered, _ = set_severity(
        g.incident,
        "SEV-3",
        reason="false alarm",
        actor="alice",
        at=T0,
        request_id="01JREQ" + "F" * 20,
    )
    g.state.incident = lowered

    assert g.feed(alert("a"), "SEV-0") == []  # a repeat is no new information
    assert g.incident.severity == "SEV-3"
    assert g.incident.severity_source == "manual"

    env = only(g.feed(alert("b"), "SEV-1"))
    assert env.type == "incident.escalated"
    assert (g.incident.severity, g.incident.severity_source) == ("SEV-1", "policy")


# -- resolve and reopen -----------------------------------------------------------------------


def test_incident_resolves_only_when_all_its_alerts_have_resolved() -> None:
    g = Group()
    g.feed(alert("a"), "SEV-2")
    g.feed(alert("b"), "SEV-2")

    partial = only(g.feed(alert("a", "resolved"), "SEV-2"))
    assert partial.type == "incident.updated"
    assert payload(partial).incident.status == "open"
    assert payload(partial).incident.resolved_at is None

    at = T0 + timedelta(minutes=30)
    last = only(g.feed(alert("b", "resolved"), "SEV-2", at=at))
    inc = payload(last).incident
    assert last.type == "incident.resolved"
    assert (inc.status, inc.resolved_at, inc.severity) == ("resolved", at, "SEV-2")
    assert all(a.status == "resolved" for a in alerts_of(g.state))
    assert [(a.fingerprint, a.ends_at) for a in payload(last).alerts] == [
        ("b", T0 + timedelta(minutes=5))
    ]
    assert inc.counts == IncidentCounts(alerts=2, firing=0, resolved=2)
    assert inc.version == 4


def test_a_resolve_of_an_alert_the_incident_does_not_have_changes_nothing() -> None:
    g = Group()
    g.feed(alert("a"), "SEV-2")
    before = g.incident
    assert g.feed(alert("zzz", "resolved"), "SEV-2") == []
    assert g.incident == before


def _resolved_group(resolved_at: datetime) -> tuple[Group, Incident]:
    g = Group()
    g.feed(alert("a"), "SEV-1", at=resolved_at - timedelta(minutes=10))
    only(g.feed(alert("a", "resolved"), "SEV-1", at=resolved_at))
    return g, g.incident


@pytest.mark.parametrize("after", [timedelta(minutes=30), WINDOW])
def test_firing_again_inside_the_reopen_window_reopens_the_same_incident(
    after: timedelta,
) -> None:
    resolved_at = T0 + timedelta(hours=2)
    g, resolved = _resolved_group(resolved_at)
    later = resolved_at + after

    env = only(g.feed(alert("a", starts=later), "SEV-2", at=later))
    inc = payload(env).incident
    assert env.type == "incident.reopened"
    assert inc.id == resolved.id
    assert (inc.status, inc.resolved_at) == ("open", None)
    assert inc.severity == "SEV-1"  # reopening does not lower what it had
    assert inc.version == resolved.version + 1
    assert inc.opened_at == resolved.opened_at
    assert [(a.fingerprint, a.status, a.starts_at) for a in payload(env).alerts] == [
        ("a", "firing", later)
    ]
    assert inc.counts == IncidentCounts(alerts=1, firing=1, resolved=0)


def test_a_different_alert_inside_the_window_reopens_too() -> None:
    resolved_at = T0 + timedelta(hours=2)
    g, resolved = _resolved_group(resolved_at)
    env = only(g.feed(alert("b"), "SEV-0", at=resolved_at + timedelta(minutes=1)))
    assert env.type == "incident.reopened"
    assert payload(env).incident.id == resolved.id
    assert payload(env).incident.severity == "SEV-0"
    assert [a.fingerprint for a in alerts_of(g.state)] == ["a", "b"]
    assert payload(env).incident.counts == IncidentCounts(alerts=2, firing=1, resolved=1)


def test_firing_again_outside_the_reopen_window_opens_a_new_incident() -> None:
    resolved_at = T0 + timedelta(hours=2)
    g, resolved = _resolved_group(resolved_at)
    later = resolved_at + WINDOW + timedelta(seconds=1)

    env = only(g.feed(alert("a", starts=later), "SEV-3", at=later))
    inc = payload(env).incident
    assert env.type == "incident.opened"
    assert inc.id != resolved.id
    assert (inc.status, inc.severity, inc.version) == ("open", "SEV-3", 1)
    assert inc.opened_at == later
    assert [a.fingerprint for a in alerts_of(g.state)] == ["a"]
    assert inc.counts == IncidentCounts(alerts=1, firing=1, resolved=0)
    assert g.incident.id == inc.id


# -- repeats and out-of-order delivery ----------------------------------------------------------


def test_the_same_alert_again_is_a_repeat_with_no_event() -> None:
    g = Group()
    g.feed(alert("a"), "SEV-2")
    g.feed(alert("b"), "SEV-2")
    before = g.incident
    assert g.feed(alert("a"), "SEV-2") == []
    assert g.feed(alert("b"), "SEV-2") == []
    assert g.incident == before

    g.feed(alert("a", "resolved"), "SEV-2")
    resolved_once = g.incident
    assert g.feed(alert("a", "resolved"), "SEV-2") == []
    assert g.incident == resolved_once


def test_a_repeat_after_the_incident_resolved_neither_reopens_nor_opens() -> None:
    g, resolved = _resolved_group(T0 + timedelta(minutes=30))
    assert g.feed(alert("a"), "SEV-1") == []
    assert g.feed(alert("a", "resolved"), "SEV-1") == []
    assert g.incident == resolved


def test_a_resolve_before_its_firing_opens_nothing_and_the_late_firing_is_ignored() -> None:
    g = Group()
    assert g.feed(alert("a", "resolved"), "SEV-0") == []
    assert g.state.incident is None
    assert g.feed(alert("a"), "SEV-0") == []
    assert g.state.incident is None


def test_an_older_starts_at_after_a_newer_one_changes_nothing() -> None:
    g = Group()
    newer = T0 + timedelta(minutes=10)
    g.feed(alert("a", starts=newer), "SEV-2")
    before = g.incident

    assert g.feed(alert("a", starts=T0), "SEV-0") == []
    assert g.feed(alert("a", "resolved", starts=T0), "SEV-2") == []
    assert g.incident == before
    assert alerts_of(g.state)[0].starts_at == newer


def test_a_resolve_of_an_older_occurrence_does_not_resolve_the_newer_one() -> None:
    g, _ = _resolved_group(T0 + timedelta(minutes=10))
    later = T0 + timedelta(minutes=20)
    g.feed(alert("a", starts=later), "SEV-1", at=later)  # reopened
    assert g.feed(alert("a", "resolved", starts=T0), "SEV-1") == []
    assert g.incident.status == "open"


# -- deterministic ids ------------------------------------------------------------------------


def _story() -> list[Envelope]:
    g = Group()
    events: list[Envelope] = []
    events += g.feed(alert("a"), "SEV-2")
    events += g.feed(alert("b"), "SEV-0")
    events += g.feed(alert("a", "resolved"), "SEV-2")
    events += g.feed(alert("b", "resolved"), "SEV-0")
    events += g.feed(alert("b", starts=T0 + timedelta(minutes=1)), "SEV-1")
    return events


def test_the_same_input_gives_the_same_event_and_incident_ids() -> None:
    first, second = _story(), _story()
    assert [e.type for e in first] == [
        "incident.opened",
        "incident.escalated",
        "incident.updated",
        "incident.resolved",
        "incident.reopened",
    ]
    assert [e.model_dump() for e in first] == [e.model_dump() for e in second]
    assert len({e.id for e in first}) == len(first)
    assert len({payload(e).incident.id for e in first}) == 1


def test_event_ids_follow_the_input_event_id() -> None:
    data = alert("a")
    one, two = GroupState(GROUP_KEY), GroupState(GROUP_KEY)
    c1 = apply_alert(one, AlertInput("01JNQ00001" + "X" * 16, T0, data), cls("SEV-2"), WINDOW)
    c2 = apply_alert(two, AlertInput("01JNQ00001" + "Y" * 16, T0, data), cls("SEV-2"), WINDOW)
    e1, e2 = only([c.envelope() for c in c1]), only([c.envelope() for c in c2])
    assert e1.id != e2.id
    assert payload(e1).incident.id != payload(e2).incident.id
    # Ids keep the cause's time prefix so they still sort by time.
    assert e1.id[:10] == "01JNQ00001"
