"""Process logging: text for people, JSON lines for production collectors.

A JSON line about one event, incident or action carries its ids (``event_id``,
``incident_id``, ``action_id``): :class:`LogContext` reads them from the context variables the
stages set while they work (``runtime.stage.EVENT_ID`` and ``INCIDENT_ID``, set around one
record by the stage runtime or around one event by a stage with ``runtime.stage.about``;
``actions.catalogue.ACTION_ID``, set by the actions stage around each action). A log call may
also give them itself: ``log.info(..., extra={"incident_id": ...})`` wins over the context.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Final

import orjson

from actions.catalogue import ACTION_ID
from runtime.stage import EVENT_ID, INCIDENT_ID

CONTEXT_FIELDS: Final[tuple[tuple[str, ContextVar[str | None]], ...]] = (
    ("event_id", EVENT_ID),
    ("incident_id", INCIDENT_ID),
    ("action_id", ACTION_ID),
)
"""The ids a log line may carry, in the order a JSON line shows them, and where they come from."""


class LogContext(logging.Filter):
    """Copies the known ids of the work in hand onto each record (never drops one).

    On the handler, so it runs for every logger's records, in the task that logs them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in CONTEXT_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, _ in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        handler.addFilter(LogContext())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would write one line per webhook at full load.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
