"""The replayable event log: a small protocol and its backends."""

from eventlog.base import (
    AppendResult,
    EventLog,
    EventLogError,
    LogClosed,
    LogUnavailable,
    Record,
    Subscription,
)
from eventlog.embedded import EmbeddedLog

__all__ = [
    "AppendResult",
    "EmbeddedLog",
    "EventLog",
    "EventLogError",
    "LogClosed",
    "LogUnavailable",
    "Record",
    "Subscription",
]
