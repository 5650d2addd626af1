"""Relay the store's outbox to the log: the second half of every dual write.

Events reach the log only through here, after the transaction that decided them is
committed; a crash between the two re-relays on restart, and the log drops the repeat by
event id (``dedup_keys``), so downstream sees each decision once.
"""

from __future__ import annotations

from collections import defaultdict

from eventlog import EventLog
from schemas import Envelope
from store.base import IncidentStore

BATCH = 500


async def relay_outbox(store: IncidentStore, eventlog: EventLog) -> int:
    """Append every unrelayed event, oldest first; returns how many were relayed."""
    relayed = 0
    while True:
        pending = await store.unrelayed(BATCH)
        if not pending:
            return relayed
        by_topic: dict[str, list[Envelope]] = defaultdict(list)
        for item in pending:
            by_topic[item.topic].append(item.envelope)
        for topic, envelopes in by_topic.items():
            await eventlog.append(topic, envelopes, dedup_keys=[e.id for e in envelopes])
        await store.mark_relayed([item.seq for item in pending])
        relayed += len(pending)
