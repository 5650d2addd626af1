"""The event envelope: CloudEvents attributes around a typed payload."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any, NoReturn

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = "1"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # 10 bits -> 2 digits
_RANDOM_POOL = 4096  # bytes of os.urandom per read: one system call per ~400 milliseconds used


def _encode(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def _encode80(value: int) -> str:
    """``_encode(value, 16)``, two digits per lookup: ids are made once per event."""
    p = _PAIRS
    return (
        p[value >> 70 & 1023]
        + p[value >> 60 & 1023]
        + p[value >> 50 & 1023]
        + p[value >> 40 & 1023]
        + p[value >> 30 & 1023]
        + p[value >> 20 & 1023]
        + p[value >> 10 & 1023]
        + p[value & 1023]
    )


class _IdClock:
    """ULIDs that sort by creation order within one process, even inside one millisecond."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._last_rand = 0
        self._prefix = _encode(0, 10)
        self._pool = b""
        self._used = 0

    def _random(self) -> int:
        """79 random bits; os.urandom is read in blocks (each read drops the GIL)."""
        if self._used + 10 > len(self._pool):
            self._pool, self._used = os.urandom(_RANDOM_POOL), 0
        start, self._used = self._used, self._used + 10
        return int.from_bytes(self._pool[start : self._used], "big") >> 1

    def after_fork(self) -> None:
        """In a forked child: a new lock, and none of the parent's random bytes."""
        self._lock = threading.Lock()
        self._pool, self._used = b"", 0

    def next(self) -> str:
        with self._lock:
            now_ms = time.time_ns() // 1_000_000
            if now_ms <= self._last_ms:
                self._last_rand += 1
            else:
                self._last_ms = now_ms
                self._last_rand = self._random()
                self._prefix = _encode(now_ms, 10)
            return self._prefix + _encode80(self._last_rand)


_clock = _IdClock()
os.register_at_fork(after_in_child=lambda: _clock.after_fork())  # noqa: PLW0108 - _clock may be replaced


def new_event_id() -> str:
    """A unique event id (ULID, 26 chars) that sorts by time of creation."""
    return _clock.next()


def derived_event_id(parent_id: str, *decision: str) -> str:
    """A deterministic id for an event derived from another one and what was decided.

    Re-deriving the same event (after a crash, or on redelivery) gives the same id, so a
    duplicate is recognised downstream. It keeps the parent's time prefix, so it still sorts.
    """
    digest = hashlib.blake2b("\x1f".join((parent_id, *decision)).encode(), digest_size=10)
    return parent_id[:10] + _encode80(int.from_bytes(digest.digest(), "big"))


class Envelope(BaseModel):
    """An event of the log, in the CloudEvents shape (``subject`` is the partition key)."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="unique, sortable (ULID)")
    type: str = Field(description="e.g. alert.firing")
    source: str = Field(description="the stage that wrote it, e.g. /sevpipe/ingest")
    # Aware only: a naive time from a foreign producer means nothing certain (whose local
    # time?), and comparing it with ours would raise deep inside a stage.
    time: AwareDatetime = Field(description="when the event was made, with its UTC offset")
    subject: str = Field(description="the key: incident group key or incident id")
    schemaversion: str = SCHEMA_VERSION
    data: dict[str, Any] = Field(description="the payload; its model is named by type")

    @classmethod
    def new(cls, type_: str, source: str, subject: str, data: BaseModel) -> Envelope:
        return cls(
            id=new_event_id(),
            type=type_,
            source=source,
            time=datetime.now(UTC),
            subject=subject,
            data=data.model_dump(mode="json"),
        )

    def json_bytes(self) -> bytes:
        """``model_dump_json()``, encoded; by orjson (~3x faster) where that is the same.

        It is when ``data`` holds plain JSON values, as ``new`` and parsing make it. orjson
        refuses anything else (datetimes, models, sets, huge ints, subclasses, ...), and
        then pydantic serialises the envelope; so it does for subclasses of Envelope.
        """
        if type(self) is Envelope and _ENVELOPE_FIELDS_KNOWN:
            try:
                return orjson.dumps(
                    {
                        "id": self.id,
                        "type": self.type,
                        "source": self.source,
                        "time": _TIME.dump_python(self.time, mode="json"),
                        "subject": self.subject,
                        "schemaversion": self.schemaversion,
                        "data": self.data,
                    },
                    default=_not_plain_json,
                    option=_PLAIN_JSON_ONLY,
                )
            except TypeError:
                pass
        return self.model_dump_json().encode()


# json_bytes writes these fields itself; a new one turns its orjson path off.
_ENVELOPE_FIELDS_KNOWN = tuple(Envelope.model_fields) == (
    "id",
    "type",
    "source",
    "time",
    "subject",
    "schemaversion",
    "data",
)
_TIME: TypeAdapter[datetime] = TypeAdapter(datetime)
_PLAIN_JSON_ONLY = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _not_plain_json(value: object) -> NoReturn:
    raise TypeError(f"not plain JSON: {type(value).__name__}")
