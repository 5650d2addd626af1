"""Relay the store's outbox to the log: the second half of every dual write.

Events reach the log only through here, after the transaction that decided them is committed.
The store hands the outbox to one relayer at a time (``IncidentStore.relay``), in the order
the events were decided, so replicas never publish the same rows and an incident's versions
reach the log in order. A relayer that dies between publishing and marking leaves its rows
for the next one; the log drops such a repeat by event id where it can (``dedup_keys``), and
consumers recognise it by id where it cannot.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from eventlog import EventLog
from schemas import Envelope
from store.base import IncidentStore, StoredEvent

BATCH = 500


async def relay_outbox(store: IncidentStore, eventlog: EventLog, *, batch: int = BATCH) -> int:
    """Append unrelayed events, oldest first, until none are left or another relayer holds
    the outbox; returns how many this call relayed."""

    async def publish(events: Sequence[StoredEvent]) -> None:
        by_topic: dict[str, list[Envelope]] = defaultdict(list)
        for item in events:
            by_topic[item.topic].append(item.envelope)
        for topic, envelopes in by_topic.items():
            await eventlog.append(topic, envelopes, dedup_keys=[e.id for e in envelopes])

    relayed = 0
    while True:
        count = await store.relay(publish, limit=batch)
        if not count:
            return relayed
        relayed += count
