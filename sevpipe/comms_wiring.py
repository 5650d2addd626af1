"""The comms stage as settings make it: channels, routing, templates, on the stage runtime."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from comms.channel import Channel
from comms.console import ConsoleChannel
from comms.render import Renderer
from comms.stage import CONSUMER_GROUP, CommsMetrics, CommsStage
from eventlog import EventLog
from runtime.stage import StageRuntime
from sevpipe.http import ConsumerLagCollector
from sevpipe.settings import Settings
from store import IncidentStore
from store.effects import EffectsLedger


def channels_of(settings: Settings) -> dict[str, Channel]:
    """The console outbox always; Slack, email and Statuspage where configured."""
    channels: dict[str, Channel] = {
        "console": ConsoleChannel(settings.data_dir / "outbox" / "notifications.jsonl")
    }
    if settings.slack is not None:
        from comms.slack import SlackChannel, SlackWebhookChannel  # noqa: PLC0415

        slack = settings.slack
        has_token = slack.token is not None or slack.token_file is not None
        channels["slack"] = SlackChannel(slack) if has_token else SlackWebhookChannel(slack)
    if settings.email is not None:
        from comms.email import EmailChannel  # noqa: PLC0415

        channels["email"] = EmailChannel(settings.email)
    if settings.statuspage is not None:
        from comms.statuspage import StatuspageChannel  # noqa: PLC0415

        channels["statuspage"] = StatuspageChannel(settings.statuspage)
    return channels


def comms_stage(
    settings: Settings,
    eventlog: EventLog,
    store: IncidentStore,
    ledger: EffectsLedger,
    registry: CollectorRegistry,
) -> CommsStage:
    renderer = Renderer(settings.templates_dir)
    renderer.check()
    return CommsStage(
        eventlog,
        store,
        ledger=ledger,
        routing=settings.routing(),
        renderer=renderer,
        channels=channels_of(settings),
        metrics=CommsMetrics(registry),
        public_url=settings.public_url,
        lease=settings.notify_lease,
    )


def comms_runtime(
    settings: Settings,
    eventlog: EventLog,
    store: IncidentStore,
    ledger: EffectsLedger,
    registry: CollectorRegistry,
) -> StageRuntime:
    """The comms stage on its runtime, its lag exported; run it with ``.run(stop)``."""
    stage = comms_stage(settings, eventlog, store, ledger, registry)
    group = settings.consumer_group_prefix + CONSUMER_GROUP
    runtime = StageRuntime(eventlog, stage, registry, group=group, batch_size=200)
    registry.register(ConsumerLagCollector(group, runtime.lag))
    return runtime
