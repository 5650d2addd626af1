"""Sending a stage's poison records to ``sevpipe.deadletter``, each at most once."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import ValidationError

from eventlog import EventLog, Record
from schemas.deadletter import (
    DEADLETTER_RECORDED,
    MAX_ERROR_CHARS,
    TOPIC_DEADLETTER,
    DeadLetterData,
    DeadLetterReason,
    OriginalRecord,
    recorded_event,
    safe_text,
)
from schemas.envelope import Envelope


def reason_for(record: Record, exc: BaseException) -> DeadLetterReason:
    """Why ``record`` is poison: not an envelope at all, a payload the stage's model
    refused, or anything else the stage raised on it."""
    try:
        _ = record.envelope
    except ValueError:  # pydantic's ValidationError is one
        return "undecodable"
    return "invalid" if isinstance(exc, ValidationError) else "failed"


def dead_letter(stage: str, record: Record, exc: BaseException, now: datetime) -> DeadLetterData:
    original = OriginalRecord.of(
        record.topic, record.partition, record.offset, record.key, record.raw
    )
    return DeadLetterData(
        stage=stage,
        reason=reason_for(record, exc),
        error_type=type(exc).__name__,
        error=safe_text(str(exc) or type(exc).__name__, MAX_ERROR_CHARS),
        failed_at=now,
        original=original,
    )


class DeadLetters:
    """One stage's sender of dead letters.

    The letter's id is derived from the record, and the append carries it as dedup key.
    The embedded log enforces dedup keys itself; Kafka only within one process, so the ids
    already on the topic are read once, when this sender first needs them: a record
    redelivered after a crash (its dead letter appended, its offset not committed) is not
    dead-lettered a second time.
    """

    def __init__(self, eventlog: EventLog, stage: str) -> None:
        self._log = eventlog
        self.stage = stage
        self.source = f"/sevpipe/{stage}"
        self._known: set[str] | None = None

    async def _known_ids(self) -> set[str]:
        if self._known is None:
            known: set[str] = set()
            async for record in self._log.read([TOPIC_DEADLETTER]):
                if record.key != self.stage:
                    continue
                try:
                    env = record.envelope
                except ValueError:  # not ours; the topic is open to anyone on Kafka
                    continue
                if env.type == DEADLETTER_RECORDED:
                    known.add(env.id)
            self._known = known
        return self._known

    async def send(self, record: Record, exc: BaseException) -> tuple[Envelope, bool]:
        """Append the dead letter of ``record``; the event, and False if it was there."""
        event = recorded_event(
            dead_letter(self.stage, record, exc, datetime.now(UTC)), source=self.source
        )
        known = await self._known_ids()
        if event.id in known:
            return event, False
        result = await self._log.append(TOPIC_DEADLETTER, [event], dedup_keys=[event.id])
        known.add(event.id)
        return event, result.appended == 1
