"""The event log's protocol: append (durable when it returns), consumer groups, replay."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar, runtime_checkable

from schemas import Envelope

E = TypeVar("E", bound=Envelope)


class EventLogError(Exception):
    """Base of the log's errors; ``retriable`` says whether trying again may succeed."""

    retriable: bool = False


class LogUnavailable(EventLogError):
    """The log cannot take or serve events right now (disk, lock, broker down)."""

    retriable = True


class LogClosed(EventLogError):
    """The log was closed; nothing more is appended."""


class Record:
    """An event as stored: where it sits in the log, and the envelope.

    A backend hands over the envelope or its JSON (``raw``), whichever it has; the other is
    made on first use. ``decode`` parses straight into a typed envelope, so a consumer that
    wants a typed payload parses once.
    """

    __slots__ = ("_envelope", "_raw", "key", "offset", "partition", "topic")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: str,
        envelope: Envelope | None = None,
        *,
        raw: bytes | None = None,
    ) -> None:
        if envelope is None and raw is None:
            raise ValueError("a Record needs its envelope or its raw JSON")
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self._envelope = envelope
        self._raw = raw

    @property
    def envelope(self) -> Envelope:
        if self._envelope is None:
            self._envelope = Envelope.model_validate_json(self.raw)
        return self._envelope

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = self.envelope.model_dump_json().encode()
        return self._raw

    def decode(self, model: type[E]) -> E:
        """The envelope as ``model`` (an Envelope with a typed ``data``), parsed once."""
        if self._envelope is None:
            return model.model_validate_json(self.raw)
        return model.model_validate(dict(self._envelope))

    def __repr__(self) -> str:
        return f"Record({self.topic!r}, {self.partition}, {self.offset}, {self.key!r})"


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Per event appended, its offset; ``None`` where it was a repeat (see ``append``)."""

    offsets: tuple[int | None, ...]

    @property
    def appended(self) -> int:
        return sum(1 for o in self.offsets if o is not None)

    @property
    def duplicates(self) -> int:
        return sum(1 for o in self.offsets if o is None)


def check_dedup(
    events: int,
    dedup_keys: Sequence[str] | None,
    dedup_latest: Sequence[tuple[str, str]] | None,
) -> None:
    """``ValueError`` unless the dedup arguments of an append of ``events`` make sense."""
    if dedup_keys is not None and dedup_latest is not None:
        raise ValueError("give dedup_keys or dedup_latest, not both")
    for name, given in (("dedup_keys", dedup_keys), ("dedup_latest", dedup_latest)):
        if given is not None and len(given) != events:
            raise ValueError(f"{name} must have one entry per event")


@dataclass(frozen=True, slots=True)
class GroupLag:
    """Where a consumer group stands on some topics, as it last committed."""

    behind: int
    """Records after the group's committed offsets (all of them where it committed none)."""
    committed: int
    """The committed offsets summed: it grows exactly while the group makes progress."""


@runtime_checkable
class Subscription(Protocol):
    """A consumer in a group: fetch records, then commit once their effects are durable."""

    async def fetch(self, max_records: int = 500, max_wait: float = 1.0) -> list[Record]:
        """The records after the group's position; waits up to ``max_wait`` s for some."""
        ...

    async def commit(self) -> None:
        """Commit the position after the last record fetched (at-least-once)."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class EventLog(Protocol):
    """What every backend (embedded SQLite, Kafka) offers its callers."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def append(
        self,
        topic: str,
        events: Sequence[Envelope],
        *,
        dedup_keys: Sequence[str] | None = None,
        dedup_latest: Sequence[tuple[str, str]] | None = None,
    ) -> AppendResult:
        """Append events keyed by their ``subject``; durable when this returns.

        A repeat is not appended (its offset is ``None``) but counted. An append names its
        repeats in one of two ways, one entry per event:

        - ``dedup_keys``, "seen ever": an event whose key is already in the topic is a
          repeat. For an event made once and delivered maybe twice: an outbox row or a dead
          letter relayed again carries its event id.
        - ``dedup_latest``, "same as the latest": ``(key, state)``; an event is a repeat when
          ``state`` is the state of the latest event appended under ``key`` in the topic. For
          something whose state can come back: an alert (key groupKey and fingerprint, state
          startsAt and status) that fires, resolves, and fires again with the same startsAt
          is appended three times, while a re-sent or duplicated notification is a repeat.

        The two are separate namespaces, and an append gives at most one of them. Events of
        one append are decided in order, each against those before it.

        Raises ``LogUnavailable`` when the log cannot take them. Nothing is acknowledged
        then; the embedded log appended none of them, while on Kafka the producer may still
        deliver some later, so a caller's retry can duplicate them (consumers are idempotent).
        """
        ...

    def subscribe(self, topics: Sequence[str], group: str) -> Subscription:
        """A consumer of ``topics`` in consumer group ``group``, from its committed offsets."""
        ...

    def read(
        self,
        topics: Sequence[str] | None = None,
        *,
        from_offset: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        last: int | None = None,
    ) -> AsyncIterator[Record]:
        """Replay: the stored records of ``topics`` (all if None) in log order.

        ``last`` keeps only the last ``last`` records of each partition (the embedded log has
        one per topic): what a relayer reads to see what a relayer that died had published.
        """
        ...

    async def ping(self) -> None:
        """Raise ``LogUnavailable`` unless the log can take an append now."""
        ...

    async def group_lag(self, group: str, topics: Sequence[str]) -> GroupLag:
        """How far consumer group ``group`` is behind on ``topics``, seen from outside it
        (another process: a receiver pacing itself to the classifier)."""
        ...
