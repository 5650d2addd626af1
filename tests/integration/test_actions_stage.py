"""The actions stage on real embedded backends, fed by the real classifier, with a catalogue
whose "cluster" is in memory (the Kubernetes actions come with issue 9's next part): what is
planned, run, refused and asked for, once, whatever is redelivered or crashes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from incident_support import T0, alert_json, append_webhook, drain, new_stage, records, webhook
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict

from actions.catalogue import ActionSpec, Catalogue, Outcome
from actions.guard import Guard, Limits, Refused
from actions.inventory import Inventory
from actions.playbooks import PlannedStep, Playbooks
from actions.stage import CONSUMER_GROUP, ActionBusy, ActionsMetrics, ActionsStage
from eventlog import EmbeddedLog
from runtime.relay import relay_outbox
from schemas import TOPIC_ACTIONS, TOPIC_ALERTS, TOPIC_INCIDENTS
from schemas.actions import ActionEventData, ApiRequest, Target
from sevpipe.logs import LogContext
from store import EmbeddedStore, LocalCoordinator
from store.actions import ActionConflict, ActionQuery, Decision, DecisionRequest
from store.effects_embedded import EmbeddedEffectsLedger

NS = "origin-production"
GK = '{}:{service="origin"}'


class Crash(BaseException):
    """kill -9 here: nothing after it runs."""


class Forbidden(Exception):
    """An API's refusal: not retriable."""


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Replicas(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replicas: int


@dataclass
class Cluster:
    """The world the fake actions act on, and every call they made to it."""

    ready: bool = False
    restarts: dict[str, int] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)
    crash_after_restart: bool = False
    crash_in_plan: bool = False
    refuse_plan: bool = False
    planning: asyncio.Event | None = None
    """When set, planning a restart waits for it: a worker caught between the guard's
    admission and the effects ledger's claim."""
    planned: asyncio.Event = field(default_factory=asyncio.Event)

    def catalogue(self) -> Catalogue:
        cat = Catalogue()

        async def no_requests(target: Target, params: Any) -> tuple[ApiRequest, ...]:
            return ()

        async def state(target: Target, params: Any, token: int) -> Outcome:
            return {"ready": self.ready}

        async def nothing(target: Target, params: Any) -> Outcome | None:
            return None

        async def plan_restart(target: Target, params: Any) -> tuple[ApiRequest, ...]:
            self.planned.set()
            if self.planning is not None:
                await self.planning.wait()
            if self.crash_in_plan:
                raise Crash
            if self.refuse_plan:
                raise Forbidden("forbidden: get deployments")
            path = f"/apis/apps/v1/namespaces/{target.namespace}/deployments/{target.name}"
            return (ApiRequest(method="PATCH", path=path, body={"restartedAt": "now"}),)

        async def restart(target: Target, params: Any, token: int) -> Outcome:
            self.restarts[target.name] = self.restarts.get(target.name, 0) + 1
            if self.crash_after_restart:
                raise Crash
            return {"generation": self.restarts[target.name]}

        async def restarted(target: Target, params: Any) -> Outcome | None:
            n = self.restarts.get(target.name, 0)
            return {"generation": n, "found": True} if n else None

        async def plan_scale(target: Target, params: Replicas) -> tuple[ApiRequest, ...]:
            return (ApiRequest(method="PATCH", path="scale", body=params.model_dump()),)

        async def scale(target: Target, params: Replicas, token: int) -> Outcome:
            self.replicas[target.name] = params.replicas
            return {"replicas": params.replicas}

        cat.register(
            ActionSpec(
                "kubernetes.get_state",
                NoParams,
                "read_only",
                "Namespace",
                no_requests,
                state,
                nothing,
            )
        )
        cat.register(
            ActionSpec(
                "kubernetes.rollout_restart",
                NoParams,
                "mutating",
                "Deployment",
                plan_restart,
                restart,
                restarted,
            )
        )
        cat.register(
            ActionSpec(
                "kubernetes.scale", Replicas, "mutating", "Deployment", plan_scale, scale, nothing
            )
        )
        return cat


PLAYBOOKS = Playbooks.model_validate(
    {
        "playbooks": [
            {
                "name": "outage",
                "match": {"min_severity": "SEV-0", "impacts": ["outage"]},
                "steps": [
                    {
                        "id": "state",
                        "action": "kubernetes.get_state",
                        "target": {"kind": "Namespace", "namespace": NS},
                        "mode": "auto",
                    },
                    {
                        "id": "restart",
                        "action": "kubernetes.rollout_restart",
                        "target": {"kind": "Deployment", "name_from_label": "deployment"},
                        "mode": "auto",
                        "when": {"step": "state", "ready": False},
                    },
                    {
                        "id": "scale",
                        "action": "kubernetes.scale",
                        "params": {"replicas": 50},
                        "target": {"kind": "Deployment", "name": "origin-backend"},
                        "mode": "approve",
                    },
                    {
                        "id": "scale-now",
                        "action": "kubernetes.scale",
                        "params": {"replicas": 3},
                        "target": {"kind": "Deployment", "name": "origin-backend"},
                        "mode": "never",
                    },
                ],
            }
        ]
    }
)
INVENTORY = Inventory.model_validate(
    {
        "default_namespace": NS,
        "namespaces": {NS: {"deployments": {"origin-backend": {"max_replicas": 20}}}},
    }
)


@dataclass
class Actions:
    log: EmbeddedLog
    store: EmbeddedStore
    ledger: EmbeddedEffectsLedger
    coordinator: LocalCoordinator

    def stage(
        self,
        cluster: Cluster,
        *,
        live: bool,
        lease: float = 60.0,
        clock: Clock | None = None,
        metrics: ActionsMetrics | None = None,
    ) -> ActionsStage:
        return ActionsStage(
            self.log,
            self.store,
            ledger=self.ledger,
            catalogue=cluster.catalogue(),
            playbooks=PLAYBOOKS,
            inventory=INVENTORY,
            guard=Guard(self.coordinator, Limits(), INVENTORY),
            live=live,
            lease=lease,
            clock=clock or Clock(),
            metrics=metrics,
        )

    async def outage(
        self, deployment: str = "origin-backend", status: str = "firing", minutes: int = 0
    ) -> None:
        alert = alert_json(
            "o1",
            status,
            starts=T0 + timedelta(minutes=minutes),
            impact="outage",
            service="origin",
            deployment=deployment,
        )
        body = webhook(GK, alert)
        await append_webhook(self.log, body)
        await drain(new_stage(self.log, self.store), self.log.subscribe([TOPIC_ALERTS], "cls"))

    async def run(self, stage: ActionsStage, *, commit: bool = True) -> None:
        """The stage over what is on its topics, as its runtime would run it: decisions in
        the outbox relayed first (its tick), then every record, approvals included."""
        await relay_outbox(self.store, self.log)
        sub = self.log.subscribe([TOPIC_INCIDENTS, TOPIC_ACTIONS], CONSUMER_GROUP)
        for _ in range(100):
            batch = await sub.fetch(500, max_wait=0.01)
            if not batch:
                break
            await stage.handle(batch)
            if commit:
                await sub.commit()
        await sub.close()

    async def events(self) -> list[tuple[str, ActionEventData]]:
        """The actions topic read raw: every event appended, repeats included."""
        return [
            (r.envelope.type, ActionEventData.model_validate(r.envelope.data))
            for r in await records(self.log, TOPIC_ACTIONS)
        ]


class Clock:
    """The stage's clock: now, plus what a test moved it on by."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


@asynccontextmanager
async def open_actions(tmp_path: Path) -> AsyncIterator[Actions]:
    async with (
        EmbeddedLog(tmp_path / "events.db") as log,
        EmbeddedStore(tmp_path / "store.db") as store,
        EmbeddedEffectsLedger(tmp_path / "effects.db") as ledger,
    ):
        coord = LocalCoordinator()
        await coord.start()
        try:
            yield Actions(log, store, ledger, coord)
        finally:
            await coord.close()


def by_step(events: list[tuple[str, ActionEventData]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for type_, data in events:
        out.setdefault(data.step, []).append(type_.removeprefix("action."))
    return out


async def test_an_outage_runs_its_playbook_once_even_when_delivered_again(tmp_path: Path) -> None:
    cluster = Cluster(ready=False)
    async with open_actions(tmp_path) as a:
        await a.outage()
        await a.run(a.stage(cluster, live=True), commit=False)
        await a.run(a.stage(cluster, live=True))  # the same incident event, delivered again
        events = await a.events()
    assert cluster.restarts == {"origin-backend": 1}
    assert cluster.replicas == {}  # the scale waits for a person
    assert by_step(events) == {
        "state": ["planned", "started", "succeeded"],
        "restart": ["planned", "started", "succeeded"],
        "scale": ["awaiting_approval"],
        "scale-now": ["skipped"],
    }
    [(_, asked)] = [(t, d) for t, d in events if d.step == "scale"]
    assert asked.params == {"replicas": 20}  # capped by the inventory
    assert asked.reason is not None
    assert "20" in asked.reason
    assert asked.expires_at is not None
    assert asked.expires_at - asked.decided_at > timedelta(minutes=29)  # type: ignore[operator]
    assert [r.method for r in asked.requests] == ["PATCH"]


async def test_dry_run_records_the_requests_and_touches_nothing(tmp_path: Path) -> None:
    cluster = Cluster(ready=False)
    async with open_actions(tmp_path) as a:
        await a.outage()
        await a.run(a.stage(cluster, live=False))
        events = await a.events()
    assert cluster.restarts == {}
    restart = [d for t, d in events if d.step == "restart"]
    assert [d.state for d in restart] == ["planned", "skipped"]
    assert all(d.dry_run for d in restart)
    assert restart[0].requests[0].path.endswith("/deployments/origin-backend")


async def test_a_forged_label_naming_a_deployment_outside_the_inventory_changes_nothing(
    tmp_path: Path,
) -> None:
    cluster = Cluster(ready=False)
    async with open_actions(tmp_path) as a:
        await a.outage(deployment="evil")
        await a.run(a.stage(cluster, live=True))
        events = await a.events()
    assert cluster.restarts == {}
    [(type_, skipped)] = [(t, d) for t, d in events if d.step == "restart"]
    assert type_ == "action.skipped"
    assert skipped.reason is not None
    assert "evil" in skipped.reason
    assert "inventory" in skipped.reason


async def test_a_restart_the_process_died_in_is_checked_not_repeated(tmp_path: Path) -> None:
    cluster = Cluster(ready=False, crash_after_restart=True)
    async with open_actions(tmp_path) as a:
        await a.outage()
        with pytest.raises(Crash):
            await a.run(a.stage(cluster, live=True, lease=0.01), commit=False)
        await asyncio.sleep(0.05)  # the dead holder's lease runs out
        cluster.crash_after_restart = False
        await a.run(a.stage(cluster, live=True))  # a new process; the cooldown is running
        events = await a.events()
    assert cluster.restarts == {"origin-backend": 1}
    restart = [d for t, d in events if d.step == "restart"]
    assert [d.state for d in restart] == ["planned", "started", "succeeded"]
    assert restart[-1].result == {"generation": 1, "found": True}  # what the check found


async def test_a_ready_deployment_is_not_restarted(tmp_path: Path) -> None:
    cluster = Cluster(ready=True)
    async with open_actions(tmp_path) as a:
        await a.outage()
        await a.run(a.stage(cluster, live=True))
        events = await a.events()
    assert cluster.restarts == {}
    [skipped] = [d for t, d in events if d.step == "restart"]
    assert skipped.state == "skipped"
    assert skipped.reason == "step state's ready is True, not False"


# -- approvals ---------------------------------------------------------------------------------


async def decide(a: Actions, step: str, what: Decision, actor: str = "alice") -> ActionEventData:
    [waiting] = await a.store.list_actions(ActionQuery(state="awaiting_approval"))
    assert waiting.step == step
    decided, _ = await a.store.decide_action(
        waiting.action_id,
        DecisionRequest(what, actor, datetime.now(UTC), f"{actor} says {what}"),
        source="/test",
    )
    return decided


async def test_an_approved_action_runs_once_capped_and_names_its_approver(tmp_path: Path) -> None:
    cluster = Cluster(ready=False)
    async with open_actions(tmp_path) as a:
        await a.outage()
        await a.run(a.stage(cluster, live=True))
        assert cluster.replicas == {}
        await decide(a, "scale", "approved")
        registry = CollectorRegistry()
        metrics = ActionsMetrics(registry)
        await a.run(a.stage(cluster, live=True, metrics=metrics), commit=False)
        await a.run(a.stage(cluster, live=True))  # the approval delivered again
        events = await a.events()
        [stored] = await a.store.list_actions(ActionQuery(state="succeeded", limit=1))
    assert cluster.replicas == {"origin-backend": 20}  # asked for 50; the inventory caps 20
    scale = [(t, d) for t, d in events if d.step == "scale"]
    assert [t for t, _ in scale] == [
        "action.awaiting_approval",
        "action.approved",
        "action.started",
        "action.succeeded",
    ]
    assert all(d.actor == "alice" for _, d in scale[1:])
    assert scale[1][1].reason == "alice says approved"
    assert stored.step == "scale"
    assert stored.result == {"replicas": 20}
    for state in ("approved", "started", "succeeded"):
        counted = {"action": "kubernetes.scale", "state": state}
        assert registry.get_sample_value("sevpipe_actions_total", counted) == 1.0


async def test_a_denied_action_never_runs(tmp_path: Path) -> None:
    cluster = Cluster(ready=False)
    async with open_actions(tmp_path) as a:
        await a.outage()
        await a.run(a.stage(cluster, live=True))
        await decide(a, "scale", "denied", actor="bob")
        await a.run(a.stage(cluster, live=True))
        await a.outage()  # the incident's alert again: nothing is asked twice
        await a.run(a.stage(cluster, live=True))
        events = await a.events()
    assert cluster.replicas == {}
    assert by_step(events)["scale"] == ["awaiting_approval", "denied"]


async def test_an_unanswered_approval_expires_and_can_no_longer_be_approved(
    tmp_path: Path,
) -> None:
    cluster = Cluster(ready=False)
    clock = Clock()
    async with open_actions(tmp_path) as a:
        await a.outage()
        stage = a.stage(cluster, live=True, clock=clock)
        await a.run(stage)
        assert await stage.expire_approvals() == 0  # not yet
        clock.ahead = timedelta(minutes=31)
        assert await stage.expire_approvals() == 1
        with pytest.raises(ActionConflict, match="is expired by sevpipe"):
            await a.store.decide_action(
                (await a.store.list_actions(ActionQuery(state="expired")))[0].action_id,
                DecisionRequest("approved", "alice", clock()),
                source="/test",
            )
        await a.run(stage)
        events = await a.events()
    assert cluster.replicas == {}
    [expired] = [d for t, d in events if t == "action.expired"]
    assert expired.reason == "nobody approved it within 30m"
    assert by_step(events)["scale"] == ["awaiting_approval", "expired"]


async def test_an_approval_in_dry_run_runs_nothing(tmp_path: Path) -> None:
    cluster = Cluster(ready=False)
    async with open_actions(tmp_path) as a:
        await a.outage()
        await a.run(a.stage(cluster, live=False))
        await decide(a, "scale", "approved")
        await a.run(a.stage(cluster, live=False))
        events = await a.events()
    assert cluster.replicas == {}
    [(_, skipped)] = [(t, d) for t, d in events if d.step == "scale" and t == "action.skipped"]
    assert skipped.reason == "dry-run: the requests above were not sent"
    assert skipped.requests[0].body == {"replicas": 20}


async def test_the_guard_is_asked_again_when_the_approval_comes(tmp_path: Path) -> None:
    cluster = Cluster(ready=False)
    async with open_actions(tmp_path) as a:
        await a.outage()
        await a.run(a.stage(cluster, live=True))
        # Someone scaled it meanwhile, by hand through sevpipe: the cooldown now runs.
        await a.coordinator.start_cooldown(
            "actions:kubernetes.scale:Deployment/origin-production/origin-backend", 600.0
        )
        await decide(a, "scale", "approved")
        await a.run(a.stage(cluster, live=True))
        events = await a.events()
    assert cluster.replicas == {}
    [(_, skipped)] = [(t, d) for t, d in events if d.step == "scale" and t == "action.skipped"]
    assert skipped.reason is not None
    assert "cooling down" in skipped.reason


async def test_a_reopened_incident_asks_again_what_was_refused_and_reruns_nothing_done(
    tmp_path: Path,
) -> None:
    cluster = Cluster(ready=False)
    async with open_actions(tmp_path) as a:
        await a.outage()
        await a.run(a.stage(cluster, live=True))
        await a.coordinator.start_cooldown(
            "actions:kubernetes.scale:Deployment/origin-production/origin-backend", 600.0
        )
        await decide(a, "scale", "approved")
        await a.run(a.stage(cluster, live=True))  # approved, then refused: cooling down
        a.coordinator = LocalCoordinator()  # ten minutes later: no cooldown runs
        await a.outage(status="resolved")
        await a.outage(minutes=20)  # fires again: incident.reopened, a later version
        await a.run(a.stage(cluster, live=True))
        asked_again = [d for t, d in await a.events() if t == "action.awaiting_approval"]
        assert len(asked_again) == 2
        assert asked_again[1].incident_version > asked_again[0].incident_version
        await decide(a, "scale", "approved", actor="ada")
        await a.run(a.stage(cluster, live=True))
        events = await a.events()
    assert cluster.restarts == {"origin-backend": 1}
    assert cluster.replicas == {"origin-backend": 20}
    steps = by_step(events)
    assert steps["restart"] == ["planned", "started", "succeeded"]  # not told twice
    assert steps["scale"] == [
        "awaiting_approval",
        "approved",
        "skipped",
        "awaiting_approval",
        "approved",
        "started",
        "succeeded",
    ]


async def test_the_same_event_handled_by_two_workers_at_once_runs_once_and_says_so_once(
    tmp_path: Path,
) -> None:
    """Partitions moving mid-batch: the old owner still works on an incident the new owner
    has just read again. The second finds the action held and retries later; it neither
    runs it beside the first nor reports it skipped ("already running", "cooling down")."""
    gate = asyncio.Event()
    cluster = Cluster(ready=False, planning=gate)
    async with open_actions(tmp_path) as a:
        await a.outage()
        await relay_outbox(a.store, a.log)
        [record] = await records(a.log, TOPIC_INCIDENTS)
        first = asyncio.create_task(a.stage(cluster, live=True).handle([record]))
        await cluster.planned.wait()  # admitted by the guard, not yet claimed in the ledger
        with pytest.raises(ActionBusy):
            await a.stage(cluster, live=True).handle([record])
        gate.set()
        await first
        await a.stage(cluster, live=True).handle([record])  # the retry, once the first is done
        events = await a.events()
    assert cluster.restarts == {"origin-backend": 1}
    assert by_step(events)["restart"] == ["planned", "started", "succeeded"]


async def test_a_restart_whose_worker_died_between_admission_and_its_claim_is_resumed(
    tmp_path: Path,
) -> None:
    """kill -9 after the guard admitted the restart (its cooldown started) and before the
    effects ledger heard of it: the next worker resumes it; the cooldown the dead attempt
    started is its own, not a reason to skip it."""
    cluster = Cluster(ready=False, crash_in_plan=True)
    async with open_actions(tmp_path) as a:
        await a.outage()
        with pytest.raises(Crash):
            await a.run(a.stage(cluster, live=True), commit=False)
        cluster.crash_in_plan = False
        await a.run(a.stage(cluster, live=True))
        events = await a.events()
    assert cluster.restarts == {"origin-backend": 1}
    assert by_step(events)["restart"] == ["planned", "started", "succeeded"]


async def test_a_step_that_cannot_be_planned_is_skipped_and_the_playbook_goes_on(
    tmp_path: Path,
) -> None:
    cluster = Cluster(ready=False, refuse_plan=True)
    async with open_actions(tmp_path) as a:
        await a.outage()
        await a.run(a.stage(cluster, live=True))
        events = await a.events()
        # The refused step's hold on (restart, origin-backend) was given back.
        guard = Guard(a.coordinator, Limits(), INVENTORY)
        step = PlannedStep("outage", "other", "kubernetes.rollout_restart", {}, "auto", None)
        target = Target(kind="Deployment", namespace=NS, name="origin-backend")
        again = await guard.admit(step, target, {}, "mutating", dry_run=False)
    assert cluster.restarts == {}
    [skipped] = [d for _, d in events if d.step == "restart"]
    assert skipped.reason == "cannot plan kubernetes.rollout_restart: forbidden: get deployments"
    assert by_step(events)["scale"] == ["awaiting_approval"]  # the next steps still ran
    assert isinstance(again, Refused)
    assert "cooling down" in again.reason  # not "already running": the lock was released


async def test_a_destructive_action_never_runs_automatically_however_it_was_loaded(
    tmp_path: Path,
) -> None:
    """Playbooks built without the catalogue (so unchecked for risk at load) may name a
    destructive action in mode auto: the stage refuses it."""
    wiped: list[str] = []
    cluster = Cluster(ready=False)
    cat = cluster.catalogue()

    async def wipe(target: Target, params: Any, token: int) -> Outcome:
        wiped.append(target.name)
        return {}

    async def no_requests(target: Target, params: Any) -> tuple[ApiRequest, ...]:
        return ()

    async def nothing(target: Target, params: Any) -> Outcome | None:
        return None

    cat.register(
        ActionSpec("test.wipe", NoParams, "destructive", "Deployment", no_requests, wipe, nothing)
    )
    step = {
        "id": "wipe",
        "action": "test.wipe",
        "target": {"kind": "Deployment", "name": "origin-backend"},
        "mode": "auto",
    }
    match = {"min_severity": "SEV-0", "impacts": ["outage"]}
    book = {"name": "x", "match": match, "steps": [step]}
    books = Playbooks.model_validate({"playbooks": [book]})
    async with open_actions(tmp_path) as a:
        await a.outage()
        stage = a.stage(cluster, live=True)
        stage.catalogue = cat
        stage.playbooks = books
        await a.run(stage)
        events = await a.events()
    assert wiped == []
    [(type_, skipped)] = events
    assert type_ == "action.skipped"
    assert skipped.reason == "test.wipe is destructive: never automatic (make the step approve)"


class Cidr(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cidr: str


async def test_params_from_alert_labels_make_one_action_each(tmp_path: Path) -> None:
    blocked: list[str] = []
    cluster = Cluster(ready=True)
    cat = cluster.catalogue()

    async def block(target: Target, params: Any, token: int) -> Outcome:
        blocked.append(params.cidr)
        return {"cidr": params.cidr}

    async def no_requests(target: Target, params: Any) -> tuple[ApiRequest, ...]:
        return ()

    async def nothing(target: Target, params: Any) -> Outcome | None:
        return None

    cat.register(
        ActionSpec("test.block", Cidr, "mutating", "Namespace", no_requests, block, nothing)
    )
    step = {
        "id": "block",
        "action": "test.block",
        "params_from_labels": {"cidr": "client_ip"},
        "target": {"kind": "Namespace", "namespace": NS},
        "mode": "auto",
    }
    match = {"min_severity": "SEV-0", "impacts": ["outage"]}
    books = Playbooks.model_validate(
        {"playbooks": [{"name": "x", "match": match, "steps": [step]}]}
    )
    alerts = [
        alert_json(f"b{i}", impact="outage", service="origin", client_ip=ip)
        for i, ip in enumerate(["203.0.113.7", "198.51.100.9"])
    ]
    async with open_actions(tmp_path) as a:
        await append_webhook(a.log, webhook(GK, *alerts))
        await drain(new_stage(a.log, a.store), a.log.subscribe([TOPIC_ALERTS], "cls"))
        stage = a.stage(cluster, live=True)
        stage.catalogue = cat
        stage.playbooks = books
        await a.run(stage)
        events = await a.events()
    assert sorted(blocked) == ["198.51.100.9", "203.0.113.7"]
    succeeded = [d for t, d in events if t == "action.succeeded"]
    assert len({d.action_id for d in succeeded}) == 2


async def test_the_lines_about_each_incident_of_a_batch_name_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(LogContext())
    cluster = Cluster(ready=True)
    async with open_actions(tmp_path) as a:
        await a.outage()
        await append_webhook(
            a.log, webhook('{}:{service="other"}', alert_json("o2", impact="outage", service="x"))
        )
        await drain(new_stage(a.log, a.store), a.log.subscribe([TOPIC_ALERTS], "cls"))
        await relay_outbox(a.store, a.log)
        batch = await records(a.log, TOPIC_INCIDENTS)
        assert len({r.envelope.subject for r in batch}) == 2
        with caplog.at_level(logging.INFO, logger="actions.stage"):
            await a.stage(cluster, live=True).handle(batch)
        events = await a.events()
    lines = [r for r in caplog.records if r.name == "actions.stage"]
    assert lines
    by_action = {d.action_id: d.incident_id for _, d in events}
    for line in lines:
        action_id = getattr(line, "action_id", None)
        if action_id in by_action:
            assert getattr(line, "incident_id", None) == by_action[action_id], line.getMessage()
    assert {getattr(line, "incident_id", None) for line in lines} == set(by_action.values())
