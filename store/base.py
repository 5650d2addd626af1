"""The store's protocol: incident state per group key, incidents, and the outbox/timeline.

Writes are optimistic: ``save`` checks that every group and incident still has the version
it was loaded with, and applies all or nothing. A stage that gets ``StoreConflict`` reloads
and decides again; that is how two classifier replicas, or a replica and a person using the
API, never lose each other's updates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from schemas import Envelope
from schemas.alertmanager import AlertStatus
from schemas.incident_state import AlertMark, GroupState
from schemas.incidents import Incident, IncidentAlert, IncidentStatus
from schemas.severity import Severity

__all__ = [
    "AlertMark",
    "GroupState",
    "IncidentQuery",
    "IncidentStore",
    "IncidentWrite",
    "OutboxEvent",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "StoredEvent",
]


class StoreError(Exception):
    retriable: bool = False


class StoreUnavailable(StoreError):
    """The store cannot be reached or written now; try again later."""

    retriable = True


class StoreConflict(StoreError):
    """Someone else changed what was loaded; reload and decide again."""

    retriable = True


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
    attempts: int = 0
    """Relays of it begun before, by relayers that did not finish: it may be in the log."""


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

    async def load_groups(
        self, keys: Sequence[str], fingerprints: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, GroupState]:
        """The state of each key (a fresh ``GroupState`` for a key never seen).

        Marks, and the current incident's alerts, are loaded only for ``fingerprints[key]``:
        a batch needs those of its own alerts, never the whole group's.
        """
        ...

    async def list_alerts(
        self,
        incident_id: str,
        *,
        status: AlertStatus | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[IncidentAlert]:
        """An incident's alerts by fingerprint, those after ``after`` (a page's cursor)."""
        ...

    async def due_graces(self, now: datetime, grace: timedelta, limit: int = 500) -> list[str]:
        """Keys of the groups whose open incident has waited out ``grace`` by ``now``."""
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
        """In one transaction: the groups (version + 1 each, with their changed marks and
        alerts), incidents and outbox events.

        Raises ``StoreConflict`` (and writes nothing) if a group or incident changed since
        it was loaded. Outbox events whose id is already stored are ignored.
        """
        ...

    async def timeline(self, incident_id: str) -> list[Envelope]:
        """The incident's events in the order they were decided."""
        ...

    async def caused(self, incident_id: str, cause_id: str) -> bool:
        """Whether an event of the incident was caused by ``cause_id`` (an idempotent retry)."""
        ...

    async def unrelayed(self, limit: int = 500) -> list[StoredEvent]:
        """Outbox events not yet appended to the log, oldest first."""
        ...

    async def mark_relayed(self, seqs: Sequence[int]) -> None: ...

    async def relay(
        self, publish: Callable[[Sequence[StoredEvent]], Awaitable[None]], *, limit: int = 500
    ) -> int | None:
        """As the one relayer: hand up to ``limit`` unrelayed events, in the order they were
        decided, to ``publish`` (which makes them durable in the log), then mark them relayed.
        Returns how many, or None when another relayer holds the outbox now."""
        ...

    async def reset(self) -> None:
        """Forget everything (``sevpipe rebuild`` then restores it from the log)."""
        ...

    async def restore(self, events: Sequence[tuple[str, Envelope]]) -> None:
        """Rebuild: apply incident events (topic, envelope) read back from the log, relayed."""
        ...
