"""The replayable event log: a small protocol and its backends."""

from typing import TYPE_CHECKING

from eventlog.base import (
    AppendResult,
    EventLog,
    EventLogError,
    GroupLag,
    LogClosed,
    LogUnavailable,
    Record,
    Subscription,
)
from eventlog.embedded import EmbeddedLog

if TYPE_CHECKING:
    from eventlog.kafka import KafkaLog
else:

    def __getattr__(name: str) -> object:
        # KafkaLog on first use only, so the embedded default never imports aiokafka.
        if name == "KafkaLog":
            from eventlog.kafka import KafkaLog  # noqa: PLC0415

            return KafkaLog
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AppendResult",
    "EmbeddedLog",
    "EventLog",
    "EventLogError",
    "GroupLag",
    "KafkaLog",
    "LogClosed",
    "LogUnavailable",
    "Record",
    "Subscription",
]
