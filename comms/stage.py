"""The comms stage: incident events in, messages out through the effects ledger, and a
``notification.*`` event for each on ``sevpipe.notifications``. Remediation news (an action
waiting for approval, and what became of one) comes from ``sevpipe.actions``: see
``comms.actions_news``.

What is said and to whom is decided here (routing, templates, cadence); channels only say
it. Every message has a deterministic effect id (the triggering event, the route, the kind;
for cadence updates the incident, the route and the slot number), and is sent by
``runtime.effects.perform``: a redelivered event or a restart finds it done, and a send a
crash interrupted is checked for before it is sent again.

Routes: the incident's severity's, and those its impacts add (``comms.impacts``); cadence
updates follow the severity's routes alone.

Threads: an incident's first message on a threaded route is its root (the Slack channel's
first post, the Statuspage incident); later ones follow it. Remediation news follows it too
but never becomes it (``deliver(root=False)``). Once the first is sent, a pointer
keyed by (incident, route) records its outcome: an effect of its own, so it is set once.

Cadence: while an incident of the cadence's severities is open, update ``n`` on a route is due
``n`` periods after it opened. Slots are effects too, so a restart neither repeats an update
nor skips the one due now (updates missed while stopped are not sent late: only the latest
slot is).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from prometheus_client import CollectorRegistry, Counter

from comms.actions_news import ActionNews
from comms.channel import Channel, Links, Message, MessageKind, Outcome
from comms.impacts import incident_routes
from comms.render import Context, Renderer
from comms.routing import CHAT_ROUTES, ROUTES, Route, Routing
from eventlog import EventLog, Record
from runtime.effects import EffectResult, default_holder, perform
from runtime.stage import about_record
from schemas import TOPIC_ACTIONS, TOPIC_INCIDENTS, TOPIC_NOTIFICATIONS, Envelope, derived_event_id
from schemas.actions import ActionEventData
from schemas.events import IncidentEnvelope
from schemas.incidents import Incident
from schemas.notifications import (
    NOTIFICATION_FAILED,
    NOTIFICATION_SENT,
    NOTIFICATION_SUPPRESSED,
    NotificationEventData,
)
from store import IncidentQuery, IncidentStore
from store.effects import EffectsLedger

log = logging.getLogger(__name__)

CONSUMER_GROUP: Final = "sevpipe-comms"
SOURCE: Final = "/sevpipe/comms"
KINDS: Final[dict[str, MessageKind]] = {
    "incident.opened": "opened",
    "incident.escalated": "escalated",
    "incident.reopened": "reopened",
    "incident.resolved": "resolved",
    "incident.acknowledged": "acknowledged",
    "incident.commander": "commander",
}
"""Incident events that are news to people; ``incident.updated`` (alerts coming and going
inside an open incident) is told by the cadence, so a storm is never a message per alert."""
PEOPLE_KINDS: Final = frozenset({"acknowledged", "commander"})
"""Said on ``CHAT_ROUTES`` only: the responders' own channels."""


class CommsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.notifications = Counter(
            "sevpipe_notifications_total",
            "Messages decided, by route, channel and result (sent, failed, suppressed)",
            ["route", "channel", "result"],
            registry=registry,
        )


class CommsStage:
    name = "comms"
    topics = (TOPIC_INCIDENTS, TOPIC_ACTIONS)

    def __init__(
        self,
        eventlog: EventLog,
        store: IncidentStore,
        *,
        ledger: EffectsLedger,
        routing: Routing,
        renderer: Renderer,
        channels: Mapping[str, Channel],
        metrics: CommsMetrics,
        public_url: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lease: float = 120.0,
        cadence_every: float = 1.0,
    ) -> None:
        self.log = eventlog
        self.store = store
        self.ledger = ledger
        self.routing = routing
        self.renderer = renderer
        self.channels = dict(channels)
        """By channel kind; ``console`` must be there: it takes every unconfigured route."""
        self.metrics = metrics
        self.public_url = public_url.rstrip("/")
        self.clock = clock
        self.lease = lease
        self.cadence_every = timedelta(seconds=cadence_every)
        self.holder = default_holder()
        self._next_cadence: datetime | None = None
        self._slots_done: dict[tuple[str, str], int] = {}
        self.action_news = ActionNews(self)

    # -- incident events ---------------------------------------------------------------------

    async def handle(self, records: Sequence[Record]) -> None:
        for record in records:
            with about_record(record):  # its log lines name its event and incident
                await self._one(record)

    async def _one(self, record: Record) -> None:
        if record.topic == TOPIC_ACTIONS:
            await self.action_news.handle(record)
            return
        env = record.decode(IncidentEnvelope)
        kind = KINDS.get(env.type)
        if kind is None:
            return
        incident = env.data.incident
        routes = await incident_routes(self.routing, self.store, incident, env.data.alerts)
        if kind in PEOPLE_KINDS:
            routes = tuple(r for r in routes if r.name in CHAT_ROUTES)
        if not routes:
            await self.suppressed(env.id, incident, kind, "no route for " + incident.severity)
        for route in routes:
            message = self._message(
                incident,
                kind,
                route,
                effect_id=derived_event_id(env.id, "notify", route.name, kind),
                cause=env.id,
                previous=env.data.previous_severity,
                change=env.data.change,
            )
            await self.deliver(message, route)

    async def suppressed(
        self, cause: str, incident: Incident, kind: MessageKind, reason: str
    ) -> None:
        """``notification.suppressed``: the event ``cause`` is news of ``kind`` that no route
        takes, and why."""
        effect_id = derived_event_id(cause, "notify", "none", kind)
        data = NotificationEventData(
            incident_id=incident.id,
            incident_version=incident.version,
            severity=incident.severity,
            effect_id=effect_id,
            kind=kind,
            route="none",
            channel="none",
            audience="none",
            subject="",
            cause=cause,
            reason=reason,
            source="decided",
        )
        self.metrics.notifications.labels("none", "none", "suppressed").inc()
        await self.publish(NOTIFICATION_SUPPRESSED, effect_id, data)

    # -- cadence -----------------------------------------------------------------------------

    async def tick(self) -> None:
        now = self.clock()
        if self._next_cadence is not None and now < self._next_cadence:
            return
        self._next_cadence = now + self.cadence_every
        await self.send_due_updates(now)

    async def send_due_updates(self, now: datetime) -> int:
        """Post the cadence updates due by ``now``, and tell leadership of an incident nobody
        acknowledged in time; returns how many messages were decided now."""
        cadence = self.routing.cadence
        every = {
            "incident_channel": cadence.channel_every,
            "leadership_email": cadence.leadership_every,
        }
        decided = 0
        open_incidents = await self.store.list_incidents(IncidentQuery(status="open", limit=1000))
        for incident in open_incidents:
            if incident.severity not in cadence.severities:
                continue
            decided += await self._unacknowledged(incident, now)
            for route in self.routing.routes(incident.severity):
                if route.name not in every:
                    continue
                period = every[route.name]
                slot = int((now - incident.opened_at) / period)
                if slot < 1 or self._slots_done.get((incident.id, route.name), 0) >= slot:
                    continue
                message = self._message(
                    incident,
                    "update",
                    route,
                    effect_id=derived_event_id(_ulid(incident.id), "update", route.name, str(slot)),
                    update_number=slot,
                    next_update=period,
                )
                await self.deliver(message, route)
                self._slots_done[(incident.id, route.name)] = slot
                decided += 1
        return decided

    async def _unacknowledged(self, incident: Incident, now: datetime) -> int:
        waited = self.routing.acknowledge_within
        key = (incident.id, "unacknowledged")
        if incident.acknowledged_at is not None or now - incident.opened_at < waited:
            return 0
        if self._slots_done.get(key):
            return 0
        route = ROUTES["leadership_email"]  # whatever the severity's routes: the runbook says so
        message = self._message(
            incident,
            "unacknowledged",
            route,
            effect_id=derived_event_id(_ulid(incident.id), "unacknowledged"),
            waited=waited,
        )
        await self.deliver(message, route)
        self._slots_done[key] = 1
        return 1

    # -- sending -----------------------------------------------------------------------------

    def _message(
        self,
        incident: Incident,
        kind: MessageKind,
        route: Route,
        *,
        effect_id: str,
        cause: str = "",
        previous: str | None = None,
        change: str = "",
        update_number: int = 0,
        next_update: timedelta | None = None,
        waited: timedelta | None = None,
        action: ActionEventData | None = None,
    ) -> Message:
        api = f"{self.public_url}/api/v1" if self.public_url else ""
        links = Links(
            incident=f"{api}/incidents/{incident.id}" if api else "",
            runbook=self.routing.runbook_url,
            action=f"{api}/actions/{action.action_id}" if api and action else "",
        )
        components = self.routing.components_of(incident.key)
        ctx = Context(
            kind,
            incident,
            links,
            components=components,
            previous_severity=previous,  # type: ignore[arg-type]
            change=change,
            update_number=update_number,
            next_update=next_update,
            waited=waited,
            action=action,
            now=self.clock(),
        )
        text = self.renderer.render(ctx, public=route.public)
        return Message(
            effect_id=effect_id,
            incident=incident,
            kind=kind,
            route=route.name,
            audience=route.audience,
            subject=text.subject,
            text=text.text,
            html=text.html,
            public=route.public,
            links=links,
            components=components,
            cause=cause,
        )

    def channel_for(self, route: Route) -> Channel:
        return self.channels.get(route.channel) or self.channels["console"]

    async def deliver(self, message: Message, route: Route, *, root: bool = True) -> EffectResult:
        """Send ``message`` once (see the module doc) and publish what became of it.
        ``root``: whether it may be the incident's first on a threaded route (the one later
        messages follow); if not and none was sent yet, it goes out on its own."""
        channel = self.channel_for(route)
        result = await self._send(channel, message, route, may_root=root)
        failed = result.status == "failed"
        data = NotificationEventData(
            incident_id=message.incident.id,
            incident_version=message.incident.version,
            severity=message.incident.severity,
            effect_id=message.effect_id,
            kind=message.kind,
            route=message.route,
            channel=channel.name,
            audience=message.audience,
            subject=message.subject,
            cause=message.cause or None,
            outcome={} if failed else dict(result.outcome),
            reason=_reason(result.outcome) if failed else None,
            source=result.source,
        )
        self.metrics.notifications.labels(route.name, channel.name, result.status).inc()
        await self.publish(
            NOTIFICATION_FAILED if failed else NOTIFICATION_SENT, message.effect_id, data
        )
        return result

    async def _send(
        self, channel: Channel, message: Message, route: Route, *, may_root: bool
    ) -> EffectResult:
        if not route.threaded:
            return await self._perform(message.effect_id, channel, message, None)
        root_id = derived_event_id(_ulid(message.incident.id), "root", route.name)
        root = await self.ledger.get(root_id)
        thread = root.outcome if root is not None and root.state == "succeeded" else None
        result = await self._perform(message.effect_id, channel, message, thread)
        if may_root and thread is None and result.status == "succeeded":
            # This message is the incident's first on the route: later ones follow it. Done
            # again on redelivery if a crash came between (the redelivered batch comes first).
            async def point(token: int) -> Outcome:
                return result.outcome

            async def nothing() -> Outcome | None:
                return None

            await perform(
                self.ledger, root_id, holder=self.holder, lease=self.lease, do=point, check=nothing
            )
        return result

    async def _perform(
        self, effect_id: str, channel: Channel, message: Message, thread: Outcome | None
    ) -> EffectResult:
        async def do(token: int) -> Outcome:
            return {**await channel.send(message, thread), "message": message.effect_id}

        async def check() -> Outcome | None:
            found = await channel.check(message, thread)
            return None if found is None else {**found, "message": message.effect_id}

        return await perform(
            self.ledger, effect_id, holder=self.holder, lease=self.lease, do=do, check=check
        )

    async def publish(self, type_: str, effect_id: str, data: NotificationEventData) -> None:
        env = Envelope(
            id=derived_event_id(effect_id, type_),
            type=type_,
            source=SOURCE,
            time=datetime.now(UTC),
            subject=data.incident_id,
            data=data.model_dump(mode="json"),
        )
        # The same id again after a redelivery: the log drops it where it can tell.
        await self.log.append(TOPIC_NOTIFICATIONS, [env], dedup_keys=[env.id])


def _ulid(incident_id: str) -> str:
    """The ULID an incident id is made of, for ids derived from the incident."""
    return incident_id.removeprefix("inc-").upper()


def _reason(outcome: Mapping[str, object]) -> str:
    error = str(outcome.get("error", "failed"))
    return error.split(":", 1)[0].strip() or "failed"


__all__ = ["CHAT_ROUTES", "CONSUMER_GROUP", "ROUTES", "CommsMetrics", "CommsStage"]
