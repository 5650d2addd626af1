"""Helpers for the classifier's integration tests: alert events made the way ingest makes them,
a classifier stage on a real EmbeddedLog + EmbeddedStore, and snapshots to compare.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from classifier.policy import Policy, default_policy
from classifier.stage import ClassifierMetrics, ClassifierStage
from eventlog import EmbeddedLog, Record, Subscription
from runtime.relay import relay_outbox
from schemas import (
    TOPIC_ALERTS,
    TOPIC_INCIDENTS,
    AlertEventData,
    Envelope,
    Webhook,
    event_type_for,
    normalise,
)
from schemas.incidents import Incident, IncidentAlert, IncidentEventData
from store import EmbeddedStore
from store.base import IncidentQuery, IncidentStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INGEST_SOURCE = "/sevpipe/ingest"


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def alert_json(
    fingerprint: str,
    status: str = "firing",
    *,
    starts: datetime = T0,
    alertname: str = "HighErrorRate",
    labels: Mapping[str, str] | None = None,
    **more_labels: str,
) -> dict[str, Any]:
    """One alert of a webhook body, as Alertmanager writes it."""
    return {
        "status": status,
        "labels": {"alertname": alertname, **(labels or {}), **more_labels},
        "annotations": {"summary": f"{alertname} {fingerprint}"},
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(starts + timedelta(minutes=5))
        if status == "resolved"
        else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint,
    }


def webhook(group_key: str, *alerts: dict[str, Any]) -> dict[str, Any]:
    """A version-4 webhook body around ``alerts``."""
    statuses = {a["status"] for a in alerts}
    return {
        "version": "4",
        "groupKey": group_key,
        "status": "firing" if "firing" in statuses else "resolved",
        "receiver": "sevpipe",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


def alert_envelopes(body: dict[str, Any], *, at: datetime | None = None) -> list[Envelope]:
    """What ingest appends for ``body``: normalise + Envelope.new (event time ``at`` if given)."""
    hook = Webhook.model_validate(body)
    received = at or datetime.now(UTC)
    out = []
    for data in normalise(hook, hook.incident_group_key(), received):
        env = Envelope.new(event_type_for(data.status), INGEST_SOURCE, data.group.group_key, data)
        out.append(env.model_copy(update={"time": received}) if at is not None else env)
    return out


async def append_webhook(
    log: EmbeddedLog, body: dict[str, Any], *, at: datetime | None = None
) -> list[Envelope]:
    """Append ``body``'s alerts to ``sevpipe.alerts`` as the receiver does (with dedup keys)."""
    envelopes = alert_envelopes(body, at=at)
    states = [AlertEventData.model_validate(e.data).state_key() for e in envelopes]
    await log.append(TOPIC_ALERTS, envelopes, dedup_latest=states)
    return envelopes


def new_stage(
    log: EmbeddedLog, store: EmbeddedStore, policy: Policy | None = None
) -> ClassifierStage:
    return ClassifierStage(
        log, store, policy or default_policy(), ClassifierMetrics(CollectorRegistry())
    )


async def drain(stage: ClassifierStage, sub: Subscription, *, commit: bool = True) -> int:
    """What the stage's loop does, until the topic is exhausted; returns records processed."""
    await relay_outbox(stage.store, stage.log)
    count = 0
    for _ in range(1000):  # bounded: a test never spins forever
        records = await sub.fetch(500, max_wait=0.01)
        if not records:
            return count
        await stage.handle(records)
        if commit:
            await sub.commit()
        count += len(records)
    raise AssertionError("the alerts topic never ran dry")


@dataclass
class Backends:
    log: EmbeddedLog
    store: EmbeddedStore
    data_dir: Path


@asynccontextmanager
async def open_backends(data_dir: Path) -> AsyncIterator[Backends]:
    """A real EmbeddedLog and EmbeddedStore in ``data_dir``, as ``sevpipe run`` opens them."""
    async with (
        EmbeddedLog(data_dir / "events.db") as log,
        EmbeddedStore(data_dir / "store.db") as store,
    ):
        yield Backends(log, store, data_dir)


async def records(log: EmbeddedLog, topic: str | None = None) -> list[Record]:
    return [r async for r in log.read([topic] if topic else None)]


async def incident_events(log: EmbeddedLog) -> list[Envelope]:
    return [r.envelope for r in await records(log, TOPIC_INCIDENTS)]


async def all_incidents(store: EmbeddedStore) -> list[Incident]:
    return await store.list_incidents(IncidentQuery(limit=1000))


async def alerts_of(store: IncidentStore, incident_id: str) -> list[IncidentAlert]:
    """Every alert of an incident, by fingerprint (paged through as the API does)."""
    out: list[IncidentAlert] = []
    while True:
        page = await store.list_alerts(
            incident_id, limit=500, after=out[-1].fingerprint if out else None
        )
        out += page
        if len(page) < 500:
            return out


async def snapshot(
    store: EmbeddedStore,
) -> dict[str, tuple[Incident, list[str], list[IncidentAlert]]]:
    """Every incident with the ids of its timeline and its alerts, by id."""
    out = {}
    for inc in await all_incidents(store):
        timeline = [e.id for e in await store.timeline(inc.id)]
        out[inc.id] = (inc, timeline, await alerts_of(store, inc.id))
    return out


def event_incident(env: Envelope) -> Incident:
    return IncidentEventData.model_validate(env.data).incident


def by_key(incidents: Sequence[Incident]) -> dict[str, list[Incident]]:
    out: dict[str, list[Incident]] = {}
    for inc in incidents:
        out.setdefault(inc.key, []).append(inc)
    return out
