"""The policy's resolve grace period: an incident whose alerts all resolved stays open until
the grace runs out, and a firing alert within it keeps the incident going."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from classifier.lifecycle import AlertInput, apply_alert, expire_grace
from schemas import AlertEventData, GroupContext, new_event_id
from schemas.incident_state import GroupState
from schemas.severity import Classification

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(minutes=5)
WINDOW = timedelta(hours=1)
CLS = Classification(severity="SEV-2", reasons=("impact error_rate",), rule="sev2")


def _alert(
    status: Literal["firing", "resolved"], at: datetime, starts: datetime = T0, fp: str = "a1"
) -> AlertInput:
    data = AlertEventData(
        status=status,
        fingerprint=fp,
        alertname="Errors",
        labels={"alertname": "Errors"},
        starts_at=starts,
        ends_at=at if status == "resolved" else None,
        group=GroupContext(receiver="r", group_key="g"),
        received_at=at,
    )
    return AlertInput(new_event_id(), at, data)


def _apply(group: GroupState, item: AlertInput) -> list[str]:
    return [c.type for c in apply_alert(group, item, CLS, WINDOW, GRACE)]


def test_last_resolve_waits_for_the_grace_period() -> None:
    group = GroupState("g")
    assert _apply(group, _alert("firing", T0)) == ["incident.opened"]
    assert _apply(group, _alert("resolved", T0 + timedelta(minutes=1))) == ["incident.updated"]
    assert group.incident is not None
    assert group.incident.status == "open"
    assert group.incident.resolving_since == T0 + timedelta(minutes=1)

    early = expire_grace(group, T0 + timedelta(minutes=5), GRACE, cause_id="tick")
    assert early == []
    changes = expire_grace(group, T0 + timedelta(minutes=6), GRACE, cause_id="tick")
    assert [c.type for c in changes] == ["incident.resolved"]
    resolved = changes[0].incident
    assert resolved is group.incident
    assert resolved.status == "resolved"
    assert resolved.resolved_at == T0 + timedelta(minutes=6)
    assert resolved.resolving_since is None


def test_firing_within_the_grace_keeps_the_incident_open() -> None:
    group = GroupState("g")
    _apply(group, _alert("firing", T0))
    _apply(group, _alert("resolved", T0 + timedelta(minutes=1)))
    again = _alert("firing", T0 + timedelta(minutes=3), starts=T0 + timedelta(minutes=3))
    assert _apply(group, again) == ["incident.updated"]
    assert group.incident is not None
    assert group.incident.status == "open"
    assert group.incident.resolving_since is None
    assert expire_grace(group, T0 + timedelta(hours=1), GRACE, cause_id="tick") == []


def test_an_alert_after_the_grace_first_resolves_then_reopens() -> None:
    group = GroupState("g")
    _apply(group, _alert("firing", T0))
    _apply(group, _alert("resolved", T0 + timedelta(minutes=1)))
    first_id = group.incident.id if group.incident else ""
    late = _alert("firing", T0 + timedelta(minutes=30), starts=T0 + timedelta(minutes=30))
    assert _apply(group, late) == ["incident.resolved", "incident.reopened"]
    assert group.incident is not None
    assert group.incident.id == first_id
    assert group.incident.status == "open"


def test_no_grace_resolves_at_once() -> None:
    group = GroupState("g")
    apply_alert(group, _alert("firing", T0), CLS, WINDOW)
    changes = apply_alert(group, _alert("resolved", T0 + timedelta(minutes=1)), CLS, WINDOW)
    assert [c.type for c in changes] == ["incident.resolved"]
