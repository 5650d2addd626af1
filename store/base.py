"""The store's protocol: incident state per group key, incidents, and the outbox/timeline.

Writes are optimistic: ``save`` checks that every group and incident still has the version
it was loaded with, and applies all or nothing. A stage that gets ``StoreConflict`` reloads
and decides again; that is how two classifier replicas, or a replica and a person using the
API, never lose each other's updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from schemas import Envelope
from schemas.incidents import Incident, IncidentAlert, IncidentStatus
from schemas.severity import Severity


class StoreError(Exception):
    retriable: bool = False


class StoreUnavailable(StoreError):
    """The store cannot be reached or written now; try again later."""

    retriable = True


class StoreConflict(StoreError):
    """Someone else changed what was loaded; reload and decide again."""

    retriable = True


@dataclass(frozen=True, slots=True)
class AlertMark:
    """The latest (startsAt, status) seen for an alert of a group: what makes a repeat."""

    starts_at: str
    status: str


@dataclass(slots=True)
class GroupState:
    """Everything the lifecycle needs to decide about one incident group key."""

    key: str
    version: int = 0
    incident: Incident | None = None
    marks: dict[str, AlertMark] = field(default_factory=dict)
    alert_index: AlertIndex | None = field(default=None, repr=False, compare=False)
    """Derived, never stored: where each alert of ``incident.alerts`` sits."""


@dataclass(slots=True)
class AlertIndex:
    """Positions of an incident's alerts by fingerprint, for the tuple they were taken from.

    Big incidents get an alert per fingerprint; finding one by scanning the tuple on every
    alert made a backtest quadratic in incident size.
    """

    alerts: tuple[IncidentAlert, ...]
    positions: dict[str, int]

    @classmethod
    def of(cls, alerts: tuple[IncidentAlert, ...]) -> AlertIndex:
        return cls(alerts, {a.fingerprint: i for i, a in enumerate(alerts)})


@dataclass(frozen=True, slots=True)
class IncidentWrite:
    incident: Incident
    expected_version: int
    """The version it had when loaded; 0 for a new incident."""


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    topic: str
    incident_id: str
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    topic: str
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class IncidentQuery:
    status: IncidentStatus | None = None
    severity: Severity | None = None
    since: datetime | None = None
    limit: int = 100


@runtime_checkable
class IncidentStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def load_groups(self, keys: Sequence[str]) -> dict[str, GroupState]:
        """The state of each key (a fresh ``GroupState`` for a key never seen)."""
        ...

    async def get_incident(self, incident_id: str) -> Incident | None: ...

    async def list_incidents(self, query: IncidentQuery) -> list[Incident]:
        """Newest first by ``updated_at``."""
        ...

    async def save(
        self,
        groups: Sequence[GroupState],
        incidents: Sequence[IncidentWrite],
        outbox: Sequence[OutboxEvent],
    ) -> None:
        """In one transaction: the groups (version + 1 each), incidents and outbox events.

        Raises ``StoreConflict`` (and writes nothing) if a group or incident changed since
        it was loaded. Outbox events whose id is already stored are ignored.
        """
        ...

    async def timeline(self, incident_id: str) -> list[Envelope]:
        """The incident's events in the order they were decided."""
        ...

    async def unrelayed(self, limit: int = 500) -> list[StoredEvent]:
        """Outbox events not yet appended to the log, oldest first."""
        ...

    async def mark_relayed(self, seqs: Sequence[int]) -> None: ...

    async def reset(self) -> None:
        """Forget everything (``sevpipe rebuild`` then restores it from the log)."""
        ...

    async def restore(self, events: Sequence[tuple[str, Envelope]]) -> None:
        """Rebuild: apply incident events (topic, envelope) read back from the log, relayed."""
        ...
