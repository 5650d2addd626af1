"""Incident state, approvals, cooldowns: a protocol and its backends."""

from store.base import (
    AlertMark,
    GroupState,
    IncidentQuery,
    IncidentStore,
    IncidentWrite,
    OutboxEvent,
    StoreConflict,
    StoredEvent,
    StoreError,
    StoreUnavailable,
)
from store.embedded import EmbeddedStore

__all__ = [
    "AlertMark",
    "EmbeddedStore",
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
