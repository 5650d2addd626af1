"""The actions stage as settings make it: the catalogue (probes always; Kubernetes, AWS when
given), playbooks, inventory and guard, on the stage runtime."""

from __future__ import annotations

from datetime import timedelta

from kubernetes_asyncio import client, config
from prometheus_client import CollectorRegistry

from actions.aws_catalogue import aws_catalogue
from actions.catalogue import Catalogue
from actions.databases import database_catalogue
from actions.evidence import book_incidents, evidence_catalogue
from actions.guard import Guard, Limits
from actions.inventory import Inventory
from actions.kubernetes import kubernetes_catalogue
from actions.people_tasks import people_catalogue
from actions.probes import probes_catalogue
from actions.stage import CONSUMER_GROUP, ActionsMetrics, ActionsStage
from eventlog import EventLog
from runtime.stage import StageRuntime
from sevpipe.evidence_http import evidence_store_of
from sevpipe.http import ConsumerLagCollector
from sevpipe.settings import Settings
from store import Coordinator, IncidentStore
from store.actions import ActionsBook
from store.effects import EffectsLedger


def catalogue_of(
    settings: Settings, inventory: Inventory, book: ActionsBook | None = None
) -> Catalogue:
    """Every action the settings make possible: the probes, Prometheus queries, the
    application's PostgreSQL and Redis and the tasks for people always (over the inventory's
    entries); the Kubernetes
    actions and evidence.collect (into the settings' evidence store, each bundle on the
    incident BOOK holds its action under) when a kubeconfig is set; the AWS actions when
    ``aws`` is. A step naming an action not here is skipped as an unknown action, and says so."""
    cat = probes_catalogue(inventory)
    database_catalogue(inventory, cat)
    people_catalogue(cat)
    kubeconfig = settings.kubeconfig
    if kubeconfig is not None:

        async def api() -> client.ApiClient:
            return await config.new_client_from_config(config_file=str(kubeconfig))

        kubernetes_catalogue(api, cat)
        evidence = evidence_store_of(settings)
        limit, incident_of = settings.evidence_max_bytes, book_incidents(book)
        evidence_catalogue(
            api, inventory, evidence, max_bytes=limit, incident_of=incident_of, catalogue=cat
        )
    if settings.aws is not None:
        aws_catalogue(settings.aws, inventory, cat)
    return cat


def actions_runtime(
    settings: Settings,
    eventlog: EventLog,
    store: IncidentStore,
    *,
    ledger: EffectsLedger,
    coordinator: Coordinator,
    registry: CollectorRegistry,
) -> StageRuntime:
    inventory = settings.inventory()
    stage = ActionsStage(
        eventlog,
        store,
        ledger=ledger,
        catalogue=catalogue_of(
            settings, inventory, store if isinstance(store, ActionsBook) else None
        ),
        playbooks=settings.playbooks(),
        inventory=inventory,
        guard=Guard(coordinator, Limits(), inventory),
        live=settings.actions_mode == "live",
        approval_ttl=timedelta(seconds=settings.approval_ttl),
        lease=settings.actions_lease,
        metrics=ActionsMetrics(registry),
    )
    group = settings.consumer_group_prefix + CONSUMER_GROUP
    runtime = StageRuntime(eventlog, stage, registry, group=group, batch_size=50)
    registry.register(ConsumerLagCollector(group, runtime.lag))
    return runtime
