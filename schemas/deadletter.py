"""Dead letters: the records a stage could not process, on ``sevpipe.deadletter``.

A dead letter keeps the original record whole (where it sat in the log, its key, and its
bytes) so that it can be inspected and re-appended once the cause is fixed. Every event of
the topic is keyed by the stage, so one stage's dead letters and retries keep their order.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Final, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.envelope import Envelope, derived_event_id

TOPIC_DEADLETTER: Final = "sevpipe.deadletter"
DEADLETTER_RECORDED: Final = "deadletter.recorded"
DEADLETTER_RETRIED: Final = "deadletter.retried"

# Kafka refuses messages over 1 MiB by default; base64 grows a value by a third. Events are
# at most 256 KB by design, so only a foreign giant is cut (and can no longer be retried).
MAX_VALUE_BYTES: Final = 512 * 1024
MAX_ERROR_CHARS: Final = 2000
_ULID: Final = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
_NO_PARENT: Final = "0" * 26

DeadLetterReason = Literal["undecodable", "invalid", "failed"]
"""``undecodable``: not an event envelope at all (bad JSON, a naive time, ...);
``invalid``: an envelope whose payload the stage's model refused; ``failed``: the stage
raised on it for another reason (a bug, or a value a backend refuses)."""


def safe_text(text: str, limit: int | None = None) -> str:
    """``text`` that every sink takes: no NUL (PostgreSQL text refuses it), no lone
    surrogates (not encodable as UTF-8), and at most ``limit`` characters."""
    cleaned = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    if limit is not None and len(cleaned) > limit:
        return cleaned[: limit - 1] + "\u2026"
    return cleaned


class OriginalRecord(BaseModel):
    """The record as the stage got it from the log."""

    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int
    offset: int
    key: str = Field(description="the record's key (NUL shown as U+FFFD)")
    value: str = Field(description="the record's bytes: as text, or base64 (see encoding)")
    encoding: Literal["utf-8", "base64"] = Field(
        description="base64 when the bytes are not UTF-8 text or hold a NUL character"
    )
    size: int = Field(description="length of the original value in bytes")
    truncated: bool = Field(
        default=False, description=f"the value was cut at {MAX_VALUE_BYTES} bytes"
    )
    event_id: str | None = Field(default=None, description="the envelope's id, if it had one")
    event_type: str | None = Field(default=None, description="the envelope's type, if any")

    @classmethod
    def of(cls, topic: str, partition: int, offset: int, key: str, raw: bytes) -> OriginalRecord:
        kept = raw[:MAX_VALUE_BYTES]
        try:
            text: str | None = kept.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        encoding: Literal["utf-8", "base64"] = "utf-8"
        if text is None or "\x00" in text:
            text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
        event_id, event_type = _peek(raw)
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            key=safe_text(key),
            value=text,
            encoding=encoding,
            size=len(raw),
            truncated=len(kept) < len(raw),
            event_id=event_id,
            event_type=event_type,
        )

    def raw(self) -> bytes:
        """The original bytes (a prefix of them when ``truncated``)."""
        if self.encoding == "base64":
            return base64.b64decode(self.value)
        return self.value.encode("utf-8")


def _peek(raw: bytes) -> tuple[str | None, str | None]:
    """The id and type of whatever JSON object ``raw`` is, valid envelope or not."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    event_id, event_type = obj.get("id"), obj.get("type")
    return (
        safe_text(event_id, 200) if isinstance(event_id, str) else None,
        safe_text(event_type, 200) if isinstance(event_type, str) else None,
    )


def deadletter_id(stage: str, original: OriginalRecord) -> str:
    """The dead letter's event id, the same every time this stage fails on this record.

    Derived from (stage, topic, partition, offset), and from the original event id when it
    has one: it then sorts with the original, and a recreated topic reusing offsets does
    not collide with an older letter.
    """
    parent = original.event_id if original.event_id and _ULID.fullmatch(original.event_id) else None
    return derived_event_id(
        parent or _NO_PARENT,
        "deadletter",
        stage,
        original.topic,
        str(original.partition),
        str(original.offset),
    )


class DeadLetterData(BaseModel):
    """Payload of ``deadletter.recorded``: a record a stage set aside, and why."""

    model_config = ConfigDict(frozen=True)

    stage: str = Field(description="the stage that could not process the record")
    reason: DeadLetterReason = Field(description="undecodable, invalid or failed")
    error_type: str = Field(description="the exception's class, e.g. ValidationError")
    error: str = Field(description=f"the exception's message (at most {MAX_ERROR_CHARS} chars)")
    failed_at: AwareDatetime = Field(description="when the stage gave up on the record")
    original: OriginalRecord


class DeadLetterRetriedData(BaseModel):
    """Payload of ``deadletter.retried``: a dead letter's record was appended again."""

    model_config = ConfigDict(frozen=True)

    deadletter_id: str = Field(description="the id of the deadletter.recorded event")
    stage: str
    topic: str = Field(description="where the original event was appended again")
    event_id: str = Field(description="the re-appended event's id (the original's)")
    offset: int | None = Field(description="its new offset; null if the log had it already")


def recorded_event(data: DeadLetterData, *, source: str) -> Envelope:
    return Envelope(
        id=deadletter_id(data.stage, data.original),
        type=DEADLETTER_RECORDED,
        source=source,
        time=data.failed_at,
        subject=data.stage,
        data=data.model_dump(mode="json"),
    )


def retried_event(data: DeadLetterRetriedData, *, time: datetime, source: str) -> Envelope:
    """Its id is derived from the dead letter's: one retry per dead letter is recorded."""
    return Envelope(
        id=derived_event_id(data.deadletter_id, "retried"),
        type=DEADLETTER_RETRIED,
        source=source,
        time=time,
        subject=data.stage,
        data=data.model_dump(mode="json"),
    )


DEADLETTER_EVENT_MODELS: Final[dict[str, type[BaseModel]]] = {
    DEADLETTER_RECORDED: DeadLetterData,
    DEADLETTER_RETRIED: DeadLetterRetriedData,
}
