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
from store.coordination import Coordinator, LockToken, RateDecision
from store.embedded import EmbeddedStore
from store.local_coord import LocalCoordinator
from store.postgres import PostgresStore
from store.redis_coord import RedisCoordinator

__all__ = [
    "AlertMark",
    "Coordinator",
    "EmbeddedStore",
    "GroupState",
    "IncidentQuery",
    "IncidentStore",
    "IncidentWrite",
    "LocalCoordinator",
    "LockToken",
    "OutboxEvent",
    "PostgresStore",
    "RateDecision",
    "RedisCoordinator",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "StoredEvent",
]
