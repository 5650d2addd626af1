"""``sevpipe rebuild``: the store re-made from the ``sevpipe.incidents`` topic alone."""

from __future__ import annotations

from eventlog import EventLog
from schemas import TOPIC_INCIDENTS, Envelope
from schemas.incidents import INCIDENT_EVENT_TYPES
from store.base import IncidentStore

BATCH = 1000


async def rebuild_store(store: IncidentStore, eventlog: EventLog) -> int:
    """Forget the store's incidents and fold every incident event back in; returns the count.

    Run it with the classifier stopped. Its consumer offset lives in the log and is kept,
    so alerts whose decisions never reached the log are decided again when it restarts.
    """
    await store.reset()
    batch: list[tuple[str, Envelope]] = []
    count = 0
    async for record in eventlog.read([TOPIC_INCIDENTS]):
        if record.envelope.type not in INCIDENT_EVENT_TYPES:
            continue
        batch.append((record.topic, record.envelope))
        if len(batch) >= BATCH:
            await store.restore(batch)
            count += len(batch)
            batch = []
    if batch:
        await store.restore(batch)
        count += len(batch)
    return count
