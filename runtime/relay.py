"""Relay the store's outbox to the log: the second half of every dual write.

Events reach the log only through here, after the transaction that decided them is committed.
The store hands the outbox to one relayer at a time (``IncidentStore.relay``), in the order
the events were decided, so replicas never publish the same rows and an incident's versions
reach the log in order. A relayer that dies between publishing and marking leaves its rows
for the next one, counted as attempted: the next relayer reads the tail of the log for them
and publishes only those that are not there, so no event reaches the log twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from eventlog import EventLog
from store.base import IncidentStore, StoredEvent

BATCH = 500


async def relay_outbox(store: IncidentStore, eventlog: EventLog, *, batch: int = BATCH) -> int:
    """Append unrelayed events, oldest first, until none are left or another relayer holds
    the outbox; returns how many this call relayed."""

    async def publish(events: Sequence[StoredEvent]) -> None:
        by_topic: dict[str, list[StoredEvent]] = defaultdict(list)
        for item in events:
            by_topic[item.topic].append(item)
        for topic, items in by_topic.items():
            published: set[str] = set()
            if any(i.attempts for i in items):
                published = await _tail_ids(eventlog, topic, len(items))
            envelopes = [i.envelope for i in items if i.envelope.id not in published]
            await eventlog.append(topic, envelopes, dedup_keys=[e.id for e in envelopes])

    relayed = 0
    while True:
        count = await store.relay(publish, limit=batch)
        relayed += count or 0
        if count is None or count < batch:
            # Drained (a short batch), or another relayer has it: asking again would only
            # cost the store a round trip per call, and a stage relays after every batch.
            return relayed


async def _tail_ids(eventlog: EventLog, topic: str, count: int) -> set[str]:
    """Ids of the last ``count`` events of each partition of ``topic``.

    Only relayers append to an outbox's topics, one at a time: what a relayer that died had
    published of its rows, and nobody has marked since, is the tail of each partition, and no
    longer than the rows it held. The log's own dedup drops such a repeat where it can (the
    embedded log); Kafka's producer cannot know what another process sent.
    """
    found = set()
    async for record in eventlog.read([topic], last=count):
        try:
            found.add(record.envelope.id)
        except ValueError:  # not an envelope: certainly none of ours
            continue
    return found
