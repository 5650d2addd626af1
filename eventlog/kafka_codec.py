"""What the Kafka log's producer and consumers share: the CloudEvents binary-mode codec, the
mapping of aiokafka's errors onto the log's, and closing clients within a deadline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

import orjson
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalOperation,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    KafkaUnavailableError,
    NoBrokersAvailable,
    ProducerClosed,
)

from eventlog.base import EventLogError, LogUnavailable, Record
from schemas import Envelope

log = logging.getLogger(__name__)

ATTRIBUTES = ("id", "type", "source", "time", "subject", "schemaversion")
_CONSTANT_HEADERS = [("ce_specversion", b"1.0"), ("content-type", b"application/json")]

# What aiokafka and the network raise; each is mapped to an EventLogError at our boundary.
KAFKA_ERRORS = (KafkaError, OSError, ConsumerStoppedError, IllegalOperation)
# Not marked retriable by aiokafka, yet they mean "the cluster is unreachable or busy right
# now": a later try (a new producer, a rejoined group) can succeed.
_UNAVAILABLE = (
    OSError,  # includes TimeoutError from our own deadlines
    KafkaTimeoutError,
    KafkaConnectionError,
    KafkaUnavailableError,
    NoBrokersAvailable,
    CommitFailedError,
    ProducerClosed,
    ConsumerStoppedError,
)


def mapped(exc: BaseException, doing: str) -> EventLogError:
    """The log's error for an aiokafka one: LogUnavailable when trying again may succeed."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, _UNAVAILABLE) or getattr(exc, "retriable", False):
        return LogUnavailable(f"kafka: {doing}: {detail}")
    return EventLogError(f"kafka: {doing}: {detail}")


def headers(event: Envelope) -> list[tuple[str, bytes]]:
    """The envelope's attributes as CloudEvents binary-mode headers."""
    return [
        ("ce_id", event.id.encode()),
        ("ce_type", event.type.encode()),
        ("ce_source", event.source.encode()),
        ("ce_time", event.time.isoformat().encode()),
        ("ce_subject", event.subject.encode()),
        ("ce_schemaversion", event.schemaversion.encode()),
        *_CONSTANT_HEADERS,
    ]


def value(event: Envelope) -> bytes:
    return orjson.dumps(event.data)


def decode(topic: str, msg: Any) -> tuple[Record, int] | None:
    """A consumed message's record and event time (ms); None if it is not one of our events.

    A foreign message is logged and skipped rather than raised: one bad message must not
    stop a consumer group for good.
    """
    found = dict(msg.headers or ())
    try:
        attrs = {name: found["ce_" + name].decode() for name in ATTRIBUTES}
        time_ms = int(datetime.fromisoformat(attrs["time"]).timestamp() * 1000)
    except (KeyError, UnicodeDecodeError, ValueError) as exc:
        log.warning(
            "skipping %s[%d]@%d: not a CloudEvent (%s)", topic, msg.partition, msg.offset, exc
        )
        return None
    if msg.value is None:
        log.warning("skipping %s[%d]@%d: no value", topic, msg.partition, msg.offset)
        return None
    # The envelope's JSON, built around the value without parsing it: readers that want a
    # typed payload parse ``raw`` once with their own model.
    raw = orjson.dumps(attrs)[:-1] + b',"data":' + msg.value + b"}"
    return Record(topic, msg.partition, msg.offset, attrs["subject"], raw=raw), time_ms


async def quietly(stopping: Awaitable[Any], limit: float) -> None:
    """Await a client's stop/close within ``limit`` s; failures are logged, not raised."""
    try:
        async with asyncio.timeout(limit):
            await stopping
    except KAFKA_ERRORS as exc:
        log.warning("kafka client did not close cleanly: %s", exc or type(exc).__name__)
    except asyncio.CancelledError:
        # aiokafka's consumer.stop() lets the CancelledError of its own fetch tasks out
        # when the broker is down; only a cancellation of our task is passed on.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("kafka client did not close cleanly: its tasks were cancelled")
