"""The actions stage: incident events in, the runbook's first moves out, under the guard.

For an incident that opens, escalates or reopens, the first matching playbook's steps are
taken in order, each on the targets the inventory gives it:

- no inventory target, mode ``never``, or a guard refusal (cooldown, rate, concurrency,
  caps): ``action.skipped`` with the reason;
- a step whose ``when`` does not hold given the earlier steps' results: ``action.skipped``;
- mode ``approve``: ``action.awaiting_approval`` with the requests it would make and when the
  request expires. A person answers through the API (``store.actions``: a compare-and-set
  written with its ``action.approved`` or ``.denied`` event in the outbox); the stage reads
  ``action.approved`` back from ``sevpipe.actions`` and runs the action then, the guard
  asked again (cooldown, rate, concurrency) at that moment. Nobody answering in time makes
  it ``action.expired`` (this stage's sweep). An action once answered is not asked again
  for the same incident; one skipped (the guard refused it) is, when the incident escalates;
- mode ``auto``: ``action.planned`` with the exact requests, then, in dry-run, ``skipped``
  ("dry-run") and nothing touched (reads still run: they change nothing, and later steps
  decide on what they find); live, ``started`` and ``succeeded`` or ``failed``, the run
  going through the effects ledger: an action id derives from (incident, step, target), so a
  redelivered event finds it done, and after a crash the action's ``check`` decides, never a
  blind re-run.

Events carry the whole action as it stands and have ids derived from the action and state,
so a re-decided event is recognised downstream. Each is appended before the actions book
records the state it leads to: a crash in between leaves the book behind the log, and the
redelivered trigger catches it up.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from actions.catalogue import ACTION_ID, Catalogue, UnknownAction
from actions.guard import Admitted, Guard, Refused
from actions.inventory import Inventory
from actions.playbooks import PlannedStep, Playbooks, matching, unmet
from actions.stage_action import StageAction
from eventlog import EventLog, Record
from runtime.effects import EffectResult, default_holder, perform
from runtime.relay import relay_outbox
from runtime.stage import about_record
from schemas import TOPIC_ACTIONS, TOPIC_INCIDENTS
from schemas.actions import (
    ACTION_APPROVED,
    ACTION_DENIED,
    ActionEventData,
    Target,
    action_envelope,
)
from schemas.durations import format_duration
from schemas.events import IncidentEnvelope
from schemas.incidents import Incident, IncidentAlert
from store import IncidentStore
from store.actions import ActionConflict, ActionsBook, DecisionRequest
from store.effects import EffectsLedger

log = logging.getLogger(__name__)

CONSUMER_GROUP: Final = "sevpipe-actions"
SOURCE: Final = "/sevpipe/actions"
TRIGGERS: Final = frozenset({"incident.opened", "incident.escalated", "incident.reopened"})
MAX_ALERTS: Final = 500
"""Alerts of an incident whose labels may choose targets: a storm's first few hundred."""
SWEEP_EVERY: Final = 5.0
"""Seconds between looks for approvals that ran out: an expiry is at most this late."""
RELAY_EVERY: Final = 1.0


class ActionBusy(Exception):
    """Another worker has this action in hand now; retried later."""

    retriable = True


class ActionsMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.events = Counter(
            "sevpipe_actions_total",
            "Action events, by catalogue action and state (planned, awaiting_approval, "
            "approved, denied, expired, started, succeeded, failed, skipped)",
            ["action", "state"],
            registry=registry,
        )


class ActionsStage:
    name = "actions"
    topics = (TOPIC_INCIDENTS, TOPIC_ACTIONS)
    source = SOURCE

    def __init__(
        self,
        eventlog: EventLog,
        store: IncidentStore,
        *,
        ledger: EffectsLedger,
        catalogue: Catalogue,
        playbooks: Playbooks,
        inventory: Inventory,
        guard: Guard,
        live: bool = False,
        approval_ttl: timedelta = timedelta(minutes=30),
        lease: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        book: ActionsBook | None = None,
        metrics: ActionsMetrics | None = None,
    ) -> None:
        self.log = eventlog
        self.store = store
        if book is None:
            if not isinstance(store, ActionsBook):
                raise TypeError(f"{type(store).__name__} keeps no actions book: pass book=")
            book = store
        self.book = book
        self.metrics = metrics or ActionsMetrics(CollectorRegistry())
        self.ledger = ledger
        self.catalogue = catalogue
        self.playbooks = playbooks
        self.inventory = inventory
        self.guard = guard
        self.live = live
        self.approval_ttl = approval_ttl
        self.lease = lease
        self.clock = clock
        self.holder = default_holder()
        self._next_sweep = 0.0
        self._next_relay = 0.0

    @property
    def counter(self) -> Counter:
        return self.metrics.events

    async def handle(self, records: Sequence[Record]) -> None:
        for record in records:
            with about_record(record):  # its log lines name its event and incident
                await self._one(record)

    async def _one(self, record: Record) -> None:
        if record.topic == TOPIC_ACTIONS:
            env = record.envelope
            if env.type in (ACTION_APPROVED, ACTION_DENIED):
                # Decided through the API, not here: counted as this stage reads them.
                data = ActionEventData.model_validate(env.data)
                self.metrics.events.labels(data.action, data.state).inc()
                if env.type == ACTION_APPROVED:
                    await self.run_approved(data)
            return
        incident_env = record.decode(IncidentEnvelope)
        if incident_env.type not in TRIGGERS:
            return
        incident = incident_env.data.incident
        alerts = await self.store.list_alerts(incident.id, status="firing", limit=MAX_ALERTS)
        await self.run_playbook(incident, alerts)

    async def tick(self) -> None:
        """Before each poll: approvals that ran out become ``action.expired``; decisions in
        the outbox (the API's, the sweep's) are relayed to the log, so an approval reaches
        this stage even where no classifier runs beside it."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY
            await self.expire_approvals()
        if now >= self._next_relay:
            self._next_relay = now + RELAY_EVERY
            await relay_outbox(self.store, self.log)

    async def expire_approvals(self) -> int:
        """Mark every approval whose time ran out ``expired``; returns how many."""
        at = self.clock()
        expired = 0
        for action_id in await self.book.due_approvals(at):
            why = f"nobody approved it within {format_duration(self.approval_ttl)}"
            try:
                done, _ = await self.book.decide_action(
                    action_id, DecisionRequest("expired", "sevpipe", at, why), source=SOURCE
                )
            except ActionConflict:
                continue  # a person answered first, or another replica expired it
            self.metrics.events.labels(done.action, "expired").inc()
            expired += 1
            log.info("action %s expired: %s", action_id, why)
        return expired

    async def run_approved(self, approved: ActionEventData) -> None:
        """Run an action a person approved: the guard asked now, then as any other run."""
        stored = await self.book.get_action(approved.action_id) or approved
        if stored.state not in ("approved", "started"):
            return  # run before (its outcome recorded after its event): nothing left to do
        action = StageAction.of(self, stored)
        step = action.step
        async with self._held(action):
            prepared = await self._admit(action, step, {}, asked=True)
            if isinstance(prepared, str):
                await action.emit("skipped", reason=prepared)
                return
            spec, params, admitted = prepared
            if not self.live and spec.risk != "read_only":
                await self.guard.release(admitted)
                await action.emit("skipped", reason="dry-run: the requests above were not sent")
                return
            await self._execute(action, admitted, spec, params)

    @contextlib.asynccontextmanager
    async def _held(self, action: StageAction) -> AsyncIterator[None]:
        """This worker alone on the action, its id set for the catalogue (ACTION_ID). When
        another worker has it (the same event handled by two replicas at once, as partitions
        move mid-batch), the batch is retried later rather than the action reported skipped
        or run beside the other: by then the other has finished (its outcome is found) or
        died (its lock and lease run out, and the action's check decides)."""
        token = await self.guard.hold(action.action_id, self.lease)
        if token is None:
            raise ActionBusy(f"action {action.action_id} is being handled by another worker")
        marked = ACTION_ID.set(action.action_id)
        try:
            yield
        finally:
            ACTION_ID.reset(marked)
            await self.guard.let_go(token)

    async def run_playbook(self, incident: Incident, alerts: Sequence[IncidentAlert]) -> None:
        results: dict[str, Mapping[str, Any]] = {}
        for step in matching(self.playbooks, incident, alerts, self.inventory):
            result = await self._step(incident, step, results)
            if result is not None:
                results[step.step] = result

    async def _step(
        self, incident: Incident, step: PlannedStep, results: Mapping[str, Mapping[str, Any]]
    ) -> Mapping[str, Any] | None:
        """Take one step; its result when it ran and succeeded (what ``when`` reads)."""
        target = step.target or Target(kind="unknown")
        action = StageAction(self, incident.id, incident.version, step, target)
        async with self._held(action):
            stored = await self.book.get_action(action.action_id)
            if (
                stored is not None
                and stored.state in ("succeeded", "failed")
                and stored.incident_version != incident.version
            ):
                # Done for an earlier version of the incident (it escalated since): the
                # ledger holds its outcome, and telling it again would read as a second run.
                return stored.result if stored.state == "succeeded" else None
            return await self._take(action, step, results, stored)

    async def _take(
        self,
        action: StageAction,
        step: PlannedStep,
        results: Mapping[str, Mapping[str, Any]],
        stored: ActionEventData | None,
    ) -> Mapping[str, Any] | None:
        if step.mode == "approve" and await self._asked_before(stored):
            return None
        prepared = await self._admit(action, step, results)
        if isinstance(prepared, str):
            await action.emit("skipped", reason=prepared)
            return None
        spec, params, admitted = prepared
        notes = "; ".join(admitted.notes) or None
        if step.mode == "approve":
            await self.guard.release(admitted)
            expires = self.clock() + self.approval_ttl
            await action.emit("awaiting_approval", reason=notes, expires_at=expires)
            return None
        await action.emit("planned", reason=notes)
        if not self.live and spec.risk != "read_only":
            await action.emit("skipped", reason="dry-run: the requests above were not sent")
            return None
        # Reads run in dry-run too: they change nothing, and later steps decide on them.
        return await self._execute(action, admitted, spec, params)

    async def _asked_before(self, stored: ActionEventData | None) -> bool:
        """Whether this approval (as the book holds it) was asked for already: still waiting
        (its event appended again, for a crash between the two writes), answered, or run.
        Only a refused one (skipped) is asked again."""
        if stored is None or stored.state == "skipped":
            return False
        if stored.state == "awaiting_approval":
            env = action_envelope(stored, source=SOURCE, at=stored.decided_at or self.clock())
            await self.log.append(TOPIC_ACTIONS, [env], dedup_keys=[env.id])
        return True

    async def _admit(
        self,
        action: StageAction,
        step: PlannedStep,
        results: Mapping[str, Mapping[str, Any]],
        *,
        asked: bool = False,
    ) -> str | tuple[Any, Any, Admitted]:
        """Why the step must not run, or what to run it with (its requests now planned).
        ``asked``: a person approved it, so the mode is not what stops it now."""
        if step.target is None:
            return step.refusal or "no target"
        try:
            spec = self.catalogue.get(step.action)
            params = spec.params.model_validate(dict(step.params))
        except (UnknownAction, ValidationError) as exc:
            return f"cannot run {step.action}: {exc}"
        action.risk = spec.risk
        if (why := _not_now(step, spec.risk) or unmet(step.when, results)) is not None:
            return why
        began = await self.ledger.get(action.action_id) if self.live else None
        if began is not None:
            # An earlier delivery of this event was admitted and ran or began running: the
            # same caps, no second cooldown or rate check, and its check decides below.
            admitted = self.guard.resume(step, step.target, params.model_dump())
        else:
            # Asking a person consumes nothing: the cooldown and the rate are taken when the
            # action runs, once approved.
            dry = not self.live or (step.mode == "approve" and not asked)
            admitted = await self.guard.admit(
                step,
                step.target,
                params.model_dump(),
                spec.risk,
                dry_run=dry,
                action_id=action.action_id,
            )
        if isinstance(admitted, Refused):
            return admitted.reason
        action.params = admitted.params
        params = spec.params.model_validate(admitted.params)
        refused = await self._plan(action, spec, params, admitted)
        return refused or (spec, params, admitted)

    async def _plan(self, action: StageAction, spec: Any, params: Any, admitted: Admitted) -> str:
        """Plan the action's requests; why it cannot be planned ("" when it was).

        Planning reads the world (the Deployment a restart patches): a refusal there (RBAC,
        not found) is this step's, not the incident's, and a retriable error is raised with
        the guard's hold given back (the retry resumes the admission, see Guard.admit)."""
        try:
            action.requests = await spec.plan(action.target, params)
        except Exception as exc:
            await self.guard.release(admitted)
            if getattr(exc, "retriable", False):
                raise
            return f"cannot plan {action.step.action}: {exc}"
        return ""

    async def _execute(
        self, action: StageAction, admitted: Admitted, spec: Any, params: Any
    ) -> Mapping[str, Any] | None:
        target = action.target
        await action.emit("started")
        try:
            done: EffectResult = await perform(
                self.ledger,
                action.action_id,
                holder=self.holder,
                lease=self.lease,
                do=lambda token: spec.execute(target, params, token),
                check=lambda: spec.check(target, params),
            )
        finally:
            await self.guard.release(admitted)
        if done.status == "failed":
            await action.emit("failed", reason=str(done.outcome.get("error", "failed")))
            return None
        action.result = dict(done.outcome)
        await action.emit("succeeded")
        return action.result


def _not_now(step: PlannedStep, risk: str) -> str | None:
    """Why the step's mode keeps it from running now, whatever the guard would say."""
    if step.mode == "never":
        return "mode never: a person's decision"
    if step.mode == "auto" and risk == "destructive":
        # Playbooks are checked for this at load when the catalogue is known; the stage is
        # the last line, whatever file was loaded how.
        return f"{step.action} is destructive: never automatic (make the step approve)"
    return None
