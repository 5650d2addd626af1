"""``evidence.collect`` (Namespace; read_only): an evidence bundle of the namespace as it is,
kept in sevpipe's own store (:mod:`actions.evidence_store`), listed on the incident.

It reads the world and writes only sevpipe's store, so it runs in dry-run too. Its parts
(:mod:`actions.evidence_parts`, :mod:`actions.evidence_logs`): ``objects.yaml`` (never a
Secret, never a ConfigMap's values), ``top.json``, ``prometheus/<query>.json``
(``prometheus``: an inventory entry; ``queries``: its named queries, default all),
``logs/<pod>/<container>.log`` (``pods``: an inventory pod group of the namespace;
``logs_since``, ``max_log_bytes``), and ``manifest.json``. The bundle is bounded by
``evidence_max_bytes`` (:mod:`actions.evidence_bundle`). A part that cannot be read is
listed as missing, and why (RBAC, no metrics API, Prometheus down, a pod group or Prometheus
the inventory lacks): the action succeeds with what it got. Only the store's refusal fails it
(retried when the store says it may pass), or a target that is not a Namespace.

Idempotent: the bundle's name derives from the action id (``evidence-<action id>``), so a
retried run overwrites the same bundle; ``check`` finds it in the store. The incident is the
one the actions book holds the action under (the stage records the action before it runs);
the plan's write names ``INCIDENT`` while the book does not know it yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actions.catalogue import ACTION_ID, ActionSpec, Catalogue, Outcome
from actions.evidence_bundle import Missing, pack
from actions.evidence_logs import list_pods, logs_plan, read_logs
from actions.evidence_parts import (
    Read,
    objects_plan,
    prometheus_plan,
    read_objects,
    read_prometheus,
    read_top,
)
from actions.evidence_store import EvidenceStore
from actions.inventory import Inventory
from actions.inventory_services import Name, PrometheusEntry
from actions.kubernetes_observe import Observe, TopParams
from actions.kubernetes_reads import ApiClientFactory, KubernetesError, namespace_of
from actions.prometheus_actions import chosen_queries
from actions.prometheus_api import PrometheusError
from schemas.actions import ApiRequest, Target
from schemas.durations import Duration
from store.actions import ActionsBook

Queries = tuple[PrometheusEntry, list[tuple[str, str]]]
log = logging.getLogger(__name__)

IncidentOf = Callable[[str], Awaitable[str | None]]
"""The incident an action belongs to, by the action's id; None when not known."""
MAX_LOG_BYTES: Final = 16 * 1024 * 1024
MAX_SHOWN: Final = 20
"""Entries of each list (missing, cut) the outcome carries: the manifest has them all."""
PLACEHOLDER: Final = "INCIDENT"


class EvidenceError(Exception):
    """The action cannot run (outside the stage, whose incident unknown, not a Namespace):
    reported, not retried."""

    retriable = False


class EvidenceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pods: Name | None = Field(None, description="an inventory pod group of the namespace: logs")
    prometheus: Name | None = Field(None, description="an inventory Prometheus: its queries")
    queries: tuple[Name, ...] | None = Field(
        None, description="of that Prometheus's named queries, these (default: all)"
    )
    logs_since: Duration = Field(timedelta(hours=1), description="how far back logs reach")
    max_log_bytes: int = Field(
        1024 * 1024, ge=1024, le=MAX_LOG_BYTES, description="the newest bytes kept per container"
    )

    @model_validator(mode="after")
    def _sane(self) -> EvidenceParams:
        if self.queries is not None and self.prometheus is None:
            raise ValueError("queries needs prometheus (the inventory entry they belong to)")
        if not timedelta(seconds=1) <= self.logs_since <= timedelta(days=7):
            raise ValueError("logs_since must be from 1s to 7d")
        return self


def bundle_name(action_id: str) -> str:
    return f"evidence-{action_id.lower()}"


def book_incidents(book: ActionsBook | None) -> IncidentOf:
    """IncidentOf from the actions book (none: never known)."""

    async def incident_of(action_id: str) -> str | None:
        found = await book.get_action(action_id) if book is not None else None
        return found.incident_id if found is not None else None

    return incident_of


class Evidence:
    def __init__(
        self,
        factory: ApiClientFactory,
        inventory: Inventory,
        store: EvidenceStore,
        *,
        max_bytes: int,
        incident_of: IncidentOf,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.factory = factory
        self.inventory = inventory
        self.store = store
        self.max_bytes = max_bytes
        self.incident_of = incident_of
        self.clock = clock

    def _selector(self, ns: str, params: EvidenceParams) -> str | Missing | None:
        """The pod group's label selector; why there is none (not in the inventory: its
        logs are missing, the rest is still collected); None when no group is asked for."""
        if params.pods is None:
            return None
        entry = self.inventory.namespaces.get(ns)
        group = entry.pods.get(params.pods) if entry is not None else None
        if group is None:
            return Missing("logs/", f"pod group {ns}/{params.pods} is not in the inventory")
        return ",".join(f"{k}={v}" for k, v in sorted(group.items()))

    def _queries(self, params: EvidenceParams) -> Queries | Missing | None:
        """The Prometheus entry and its chosen queries; why not (as ``_selector``)."""
        if params.prometheus is None:
            return None
        entry = self.inventory.entry("Prometheus", params.prometheus)
        if not isinstance(entry, PrometheusEntry):
            why = f"prometheus {params.prometheus} is not in the inventory"
            return Missing("prometheus/", why)
        try:
            named = Target(kind="Prometheus", name=params.prometheus)
            return entry, chosen_queries(named, entry, params.queries)
        except PrometheusError as exc:  # no named queries, or not those asked for
            return Missing("prometheus/", str(exc))

    async def _whose(self) -> tuple[str, str]:
        """(incident id, action id) of the action being run."""
        action_id = ACTION_ID.get()
        if action_id is None:
            raise EvidenceError("evidence.collect runs in the actions stage (no action id)")
        incident = await self.incident_of(action_id)
        if incident is None:
            raise EvidenceError(f"the actions book holds no action {action_id}: whose evidence?")
        return incident, action_id

    def _target(self, target: Target) -> str:
        if target.kind != "Namespace":
            raise EvidenceError(f"evidence.collect takes a Namespace target, not {target.kind}")
        return namespace_of(target)

    async def plan(self, target: Target, params: EvidenceParams) -> tuple[ApiRequest, ...]:
        ns = self._target(target)
        selector, prom = self._selector(ns, params), self._queries(params)
        planned = [*objects_plan(ns), *await Observe(self.factory).plan_top(target, TopParams())]
        if isinstance(prom, tuple):
            planned += prometheus_plan(*prom, self.clock())
        if isinstance(selector, str):
            pods: dict[str, Any] = {}
            try:
                async with await self.factory() as api:
                    pods = await list_pods(api, ns, selector)
            except KubernetesError:
                pass  # the run says why in its manifest; the plan shows the listing alone
            since = int(params.logs_since.total_seconds())
            planned += logs_plan(ns, selector, pods, since, params.max_log_bytes)
        action_id = ACTION_ID.get()
        incident = await self.incident_of(action_id) if action_id is not None else None
        name = bundle_name(action_id or "ACTION")
        planned.append(self.store.write_request(incident or PLACEHOLDER, name))
        return tuple(planned)

    async def _read(self, target: Target, ns: str, params: EvidenceParams, now: float) -> Read:
        selector, prom = self._selector(ns, params), self._queries(params)
        since = int(params.logs_since.total_seconds())

        async def kubernetes() -> Read:
            async with await self.factory() as api:
                read = await read_objects(api, ns)
                if isinstance(selector, str):
                    read.merge(await read_logs(api, ns, selector, since, params.max_log_bytes))
            return read

        reads = [kubernetes(), read_top(self.factory, target)]
        if isinstance(prom, tuple):
            reads.append(read_prometheus(*prom, now))
        done = Read(missing=[m for m in (selector, prom) if isinstance(m, Missing)])
        for one in await asyncio.gather(*reads):
            done.merge(one)
        return done

    async def execute(self, target: Target, params: EvidenceParams, token: int) -> Outcome:
        ns = self._target(target)
        incident, action_id = await self._whose()
        now = self.clock()
        created = datetime.fromtimestamp(now, UTC)
        read = await self._read(target, ns, params, now)
        about = {
            "incident_id": incident,
            "action_id": action_id,
            "created_at": created.isoformat(),
            "namespace": ns,
            "params": params.model_dump(mode="json"),
        }
        packed = await asyncio.to_thread(pack, read.parts, read.missing, about, self.max_bytes, now)
        name = bundle_name(action_id)
        info = await self.store.put(
            incident, name, packed.data, action_id=action_id, created_at=created
        )
        manifest = packed.manifest
        log.info(
            "evidence %s of incident %s: %d bytes, %d parts, %d cut, %d missing",
            name,
            incident,
            info.size,
            len(manifest["parts"]),
            len(manifest["cut"]),
            len(manifest["missing"]),
        )
        return {
            "incident_id": incident,
            "bundle": name,
            "size": info.size,
            "sha256": info.sha256,
            "parts": [p["path"] for p in manifest["parts"]][:MAX_SHOWN],
            "parts_total": len(manifest["parts"]),
            "trimmed": [p["path"] for p in manifest["parts"] if "trimmed_from" in p][:MAX_SHOWN],
            "cut": [c["path"] for c in manifest["cut"]][:MAX_SHOWN],
            "cut_total": len(manifest["cut"]),
            "missing": manifest["missing"][:MAX_SHOWN],
            "missing_total": len(manifest["missing"]),
        }

    async def check(self, target: Target, params: EvidenceParams) -> Outcome | None:
        """The bundle, when the store has it (a run that stored it and then died)."""
        action_id = ACTION_ID.get()
        incident = await self.incident_of(action_id) if action_id is not None else None
        if action_id is None or incident is None:
            return None
        info = await self.store.info(incident, bundle_name(action_id))
        if info is None:
            return None
        return {"incident_id": incident, **info.to_json(), "bundle": info.name}


def evidence_catalogue(
    factory: ApiClientFactory,
    inventory: Inventory,
    store: EvidenceStore,
    *,
    max_bytes: int,
    incident_of: IncidentOf,
    catalogue: Catalogue | None = None,
    clock: Callable[[], float] = time.time,
) -> Catalogue:
    """``evidence.collect``, registered in CATALOGUE (a new one by default)."""
    cat = catalogue if catalogue is not None else Catalogue()
    evidence = Evidence(
        factory, inventory, store, max_bytes=max_bytes, incident_of=incident_of, clock=clock
    )
    cat.register(
        ActionSpec(
            name="evidence.collect",
            params=EvidenceParams,
            risk="read_only",
            target_kind="Namespace",
            plan=evidence.plan,
            execute=evidence.execute,
            check=evidence.check,
            description="a bounded tar.gz of the namespace's objects, top, metrics and logs",
        )
    )
    return cat
