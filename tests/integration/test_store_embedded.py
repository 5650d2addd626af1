"""What only the embedded store has: its state is in the SQLite file, not in memory.

The behaviour both stores share is tested once, on both, in test_store_contract.py.
"""

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
