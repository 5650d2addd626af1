"""``sevpipe act`` (Kafka + PostgreSQL + Redis, beside ``sevpipe ingest`` and ``classify``)
killed -9 in the middle of an AWS mutation, then a new ``sevpipe act``: each mutating step
at most once (issue 10), counted at the AWS API emulator (the moto server's own recording of
every request it received, counted raw), not from sevpipe's events.

- CloudFront: a SEV-1 ``cdn_failure`` alert; the ``sev1-cdn`` playbook's ``invalidate``
  (``aws.cloudfront_invalidate`` on Distribution origin-cdn, mode approve) waits for a person;
  ``sevpipe approve`` it; the act process is killed; a new one runs. One invalidation exists
  for the distribution (ListInvalidations), its CallerReference the action's; moto received
  ONE CreateInvalidation for it (moto does not deduplicate CallerReference as CloudFront does:
  a second request would be a second invalidation).
- RDS: a stopped instance and a SEV-0 outage alert; the ``sev0-outage`` playbook's
  ``database-start`` (``aws.rds_start`` on RdsInstance origin-rds-prod, auto) runs; the act
  process is killed; a new one runs. Moto received ONE StartDBInstance for it; the instance is
  available.

The step ends ``succeeded`` in both. Only the AWS entries the playbooks need are in the
inventory; without a kubeconfig the Kubernetes steps (and evidence) are skipped as unknown
actions, and steps whose target the inventory lacks are skipped.

The kill moments (``moment``):

- ``started``: as soon as the act process has logged ``action <name> started`` (its
  ``action.started`` is on ``sevpipe.actions`` and in the actions book; its claim in the
  effects ledger, its reads and its mutation come next). Where the kill lands among them is
  the scheduler's: so far always before the mutation reached moto, so the new process must
  not lose the step (the guard resumes the admission instead of refusing a cooldown the
  killed process started; a claim it left is checked first), and sends the mutation once.
- ``in_flight``: the mutation reached moto and moto acted on it, but its answer is held by a
  proxy in front of moto (``FaultProxy.hold``, 5 s; sevpipe's AWS endpoint is the proxy) and
  the act process is killed while it waits for it. Without the hold the answer is back in
  milliseconds and the kill cannot reliably land between the effect and the ledger's record
  of it, which is the case that tests the check: the ledger holds a claim without an outcome,
  so the new process, once the lease (``actions_lease``: 15 s) has run out, must find the
  mutation (ListInvalidations/GetInvalidation by CallerReference; the instance's status)
  instead of sending it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
import yaml
from aws_support import FaultProxy, MotoServer, Received, create_distribution, fault_proxy
from services import unique_name

from actions.aws_client import AwsClients

from .act_support import action_events, with_own_redis_db
from .backends import Backend, backend_named
from .harness import Launcher, Server, one_alert_webhook, sevpipe

pytestmark = pytest.mark.e2e

Moment = Literal["started", "in_flight"]
# Each action at one moment, so the file stays quick; between them both paths are covered:
# killed before the mutation left (the next process sends it) and mid-request (the next one's
# check finds it and sends nothing).
AM_TOKEN = "alertmanager-token"
APPROVER = "alex"
LEASE = "15s"
HOLD = 5.0
"""Seconds the proxy keeps moto's answer to the mutation (in_flight): the kill lands in them;
below the client's read timeout (10 s), so it is never retried by botocore meanwhile."""
ASK_DEADLINE = 60.0
KILL_DEADLINE = 60.0
# The killed process's hold on the action and its claim in the effects ledger last
# actions_lease (15 s); the new one retries (backoff of up to 30 s), then resumes or checks.
SETTLE_DEADLINE = 150.0
QUIET = 3.0
"""Seconds the settled pipeline is left alone before the last count: no late duplicate."""
TERMINAL = {"succeeded", "failed", "skipped", "denied", "expired"}


@pytest.fixture
async def production(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Kafka, PostgreSQL and a Redis database of the test's own: the guard's cooldowns are
    per (action, target), and the targets' names (origin-cdn, origin-rds-prod) are fixed."""
    with backend_named("production", request) as backend:
        async with with_own_redis_db(backend) as own:
            yield own


@dataclass
class Aws:
    moto: MotoServer
    proxy: FaultProxy
    """sevpipe's AWS endpoint: a relay to the moto server that can hold an answer."""
    admin: AwsClients
    """The test's own clients, straight to moto (their requests are not counted)."""


@pytest.fixture
async def aws(moto_server: MotoServer) -> AsyncIterator[Aws]:
    async with fault_proxy(moto_server.url) as relay:
        yield Aws(moto_server, relay, AwsClients(moto_server.config()))


@dataclass
class Pipeline:
    ingest: Server
    act: Server
    args: tuple[str, ...]
    backend: Backend
    data: Path
    """The act processes' data dir (``replay`` reads the production log through it)."""


def write_settings(tmp_path: Path, endpoint: str, aws_inventory: dict[str, Any]) -> Path:
    """Live actions on the AWS entries given, through ``endpoint``; an approver."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"aws": aws_inventory}))
    (tmp_path / APPROVER).write_text(f"{APPROVER}-token\n")
    settings = tmp_path / "sevpipe.yaml"
    body = {
        "inventory_file": str(inventory),
        "actions_mode": "live",
        "actions_lease": LEASE,
        "aws": {
            "region": "us-east-1",
            "endpoint_url": endpoint,
            "access_key_id": "testing",
            "secret_access_key": "testing",
        },
        "auth_token": AM_TOKEN,
        "operators": [
            {"name": APPROVER, "token_file": str(tmp_path / APPROVER), "roles": ["approver"]}
        ],
    }
    settings.write_text(yaml.safe_dump(body))
    return settings


async def start_pipeline(
    launcher: Launcher, tmp_path: Path, backend: Backend, settings: Path
) -> Pipeline:
    args, env, start = ("--config", str(settings)), backend.env, launcher.start
    ingest = await asyncio.to_thread(start, tmp_path / "i", *args, env=env, command="ingest")
    await asyncio.to_thread(start, tmp_path / "c", *args, env=env, command="classify")
    act = await asyncio.to_thread(start, tmp_path / "a", *args, env=env, command="act")
    return Pipeline(ingest, act, args, backend, tmp_path / "a")


async def post_alert(pipeline: Pipeline, body: bytes) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {AM_TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(pipeline.ingest.alerts_url, data=body, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()


def alert(alertname: str, impact: str, summary: str) -> bytes:
    """One firing alert of a group of its own (a new incident per test run)."""
    key = unique_name(alertname)
    return one_alert_webhook(
        f'{{}}:{{alertname="{alertname}", run="{key}"}}',
        {"alertname": alertname, "impact": impact, "run": key},
        hashlib.sha256(key.encode()).hexdigest()[:16],
        summary=summary,
        starts_at="2026-11-29T03:00:00Z",
    )


async def step_events(pipeline: Pipeline, step: str) -> list[dict[str, Any]]:
    """The raw ``sevpipe.actions`` events of ``step``, in log order (a re-decided duplicate
    would show twice)."""
    events = await action_events(pipeline.data, pipeline.backend)
    return [e["data"] for e in events if e["data"]["step"] == step]


def states(events: Iterable[dict[str, Any]]) -> list[str]:
    return [e["state"] for e in events]


async def kill_at(pipeline: Pipeline, moment: Moment, action: str, proxy: FaultProxy) -> None:
    """kill -9 the act process at ``moment`` of ``action`` (see the module doc)."""
    started = re.compile(rf"action {re.escape(action)} started")
    async with asyncio.timeout(KILL_DEADLINE):
        while True:
            if started.search(pipeline.act.stderr()) and (moment == "started" or proxy.held):
                pipeline.act.kill()
                return
            await asyncio.sleep(0.005)


async def restart_act(launcher: Launcher, tmp_path: Path, pipeline: Pipeline) -> None:
    """A new ``sevpipe act`` over the same log, store, ledger and Redis."""
    pipeline.act = await asyncio.to_thread(
        launcher.start,
        pipeline.data,
        *pipeline.args,
        env=pipeline.backend.env,
        command="act",
    )


async def settled(pipeline: Pipeline, step: str, *, after: str | None = None) -> list[str]:
    """The states of ``step`` once it has ended (and ``after``, a later step, has an event),
    then once more after QUIET seconds."""
    async with asyncio.timeout(SETTLE_DEADLINE):
        while True:
            found = states(await step_events(pipeline, step))
            if TERMINAL & set(found) and (after is None or await step_events(pipeline, after)):
                break
            await asyncio.sleep(1.0)
    await asyncio.sleep(QUIET)
    return states(await step_events(pipeline, step))


def requests_for(
    moto: MotoServer, service: str, operation: str, *, path: str = "", **params: str
) -> list[Received]:
    """What moto received of ``operation`` on this resource (its path holds ``path``; its
    query parameters are ``params``), one per request: nothing deduplicated."""
    found: list[Received] = []
    for r in moto.received(service):
        if r.operation != operation or path not in r.path:
            continue
        if all(r.params.get(k) == [v] for k, v in params.items()):
            found.append(r)
    return found


# CloudFront


async def invalidations(admin: AwsClients, dist_id: str) -> list[dict[str, Any]]:
    """Every invalidation of the distribution, each as GetInvalidation shows it."""
    found = []
    async with admin.cloudfront() as cf:
        listed = (await cf.list_invalidations(DistributionId=dist_id))["InvalidationList"]
        assert not listed.get("IsTruncated"), listed
        for summary in listed.get("Items") or []:
            got = await cf.get_invalidation(DistributionId=dist_id, Id=summary["Id"])
            found.append(dict(got["Invalidation"]))
    return found


@pytest.mark.parametrize("moment", ["in_flight"])
async def test_an_approved_invalidation_killed_mid_action_is_created_once(
    moment: Moment, production: Backend, launcher: Launcher, tmp_path: Path, aws: Aws
) -> None:
    moto_server, proxy, admin = aws.moto, aws.proxy, aws.admin
    dist_id = await create_distribution(admin)
    aws_inventory = {"cloudfront": {"origin-cdn": {"distribution_id": dist_id, "paths": ["/*"]}}}
    settings = write_settings(tmp_path, proxy.url, aws_inventory)
    pipeline = await start_pipeline(launcher, tmp_path, production, settings)
    await post_alert(pipeline, alert("CdnAssetsFailing", "cdn_failure", "the CDN serves 5xx"))

    async with asyncio.timeout(ASK_DEADLINE):
        while True:
            if asked := await step_events(pipeline, "invalidate"):
                break
            await asyncio.sleep(0.5)
    assert states(asked) == ["awaiting_approval"], asked
    action_id = asked[0]["action_id"]
    assert requests_for(moto_server, "cloudfront", "CreateInvalidation", path=dist_id) == []

    if moment == "in_flight":
        proxy.hold["CreateInvalidation"] = HOLD
    cli = ("--url", pipeline.ingest.base_url, "--token-file", str(tmp_path / APPROVER))
    done = await asyncio.to_thread(sevpipe, "approve", action_id, "--reason", "stale", *cli)
    assert (done.returncode, done.stdout) == (0, f"{action_id} approved by {APPROVER}\n"), (
        done.stderr
    )
    await kill_at(pipeline, moment, "aws.cloudfront_invalidate", proxy)
    killed_pid = pipeline.act.proc.pid
    at_kill = len(requests_for(moto_server, "cloudfront", "CreateInvalidation", path=dist_id))
    await restart_act(launcher, tmp_path, pipeline)

    run = await settled(pipeline, "invalidate")
    events = await step_events(pipeline, "invalidate")
    made = await invalidations(admin, dist_id)
    creates = requests_for(moto_server, "cloudfront", "CreateInvalidation", path=dist_id)
    where = (
        f"killed pid {killed_pid} at {moment} of {action_id}; CreateInvalidation requests "
        f"received by then {at_kill}, in all {len(creates)}; invalidations {made}; "
        f"states {run}; proxy saw {proxy.seen}"
    )
    if moment == "in_flight":
        assert proxy.held == ["CreateInvalidation"], where
        assert at_kill == 1, where  # moto had acted before the kill
    # At most once, counted at moto: one invalidation, one CreateInvalidation request.
    assert len(made) == 1, where
    assert made[0]["InvalidationBatch"]["CallerReference"].startswith(f"sevpipe-{action_id}-")
    assert made[0]["InvalidationBatch"]["Paths"]["Items"] == ["/*"], where
    assert len(creates) == 1, where
    # The step ended, once, succeeded with that invalidation.
    assert run[:2] == ["awaiting_approval", "approved"], where
    assert run.count("succeeded") == 1, where
    assert run[-1] == "succeeded", where
    assert not {"failed", "skipped"} & set(run), where
    assert events[-1]["result"]["invalidation_id"] == made[0]["Id"], where
    if moment == "in_flight":
        # Found by the new process's check, not created by it.
        assert events[-1]["result"]["created"] is False, where


# RDS


async def stopped_instance(admin: AwsClients) -> str:
    ident = unique_name("origin-rds")
    async with admin.rds() as rds:
        await rds.create_db_instance(
            DBInstanceIdentifier=ident,
            DBInstanceClass="db.t3.micro",
            Engine="postgres",
            MasterUsername="origin",
            MasterUserPassword="not-a-secret-1",
            AllocatedStorage=20,
        )
        await rds.stop_db_instance(DBInstanceIdentifier=ident)
    assert await status_of(admin, ident) == "stopped"
    return ident


async def status_of(admin: AwsClients, ident: str) -> str:
    async with admin.rds() as rds:
        found = await rds.describe_db_instances(DBInstanceIdentifier=ident)
    status: str = found["DBInstances"][0]["DBInstanceStatus"]
    return status


@pytest.mark.parametrize("moment", ["started"])
async def test_a_stopped_database_killed_mid_start_is_started_once(
    moment: Moment, production: Backend, launcher: Launcher, tmp_path: Path, aws: Aws
) -> None:
    moto_server, proxy, admin = aws.moto, aws.proxy, aws.admin
    ident = await stopped_instance(admin)
    aws_inventory = {"rds": {"origin-rds-prod": {"identifier": ident}}}
    settings = write_settings(tmp_path, proxy.url, aws_inventory)
    if moment == "in_flight":
        proxy.hold["StartDBInstance"] = HOLD
    pipeline = await start_pipeline(launcher, tmp_path, production, settings)
    await post_alert(pipeline, alert("OriginDown", "outage", "origin is down"))

    await kill_at(pipeline, moment, "aws.rds_start", proxy)
    killed_pid = pipeline.act.proc.pid
    at_kill = len(requests_for(moto_server, "rds", "StartDBInstance", DBInstanceIdentifier=ident))
    await restart_act(launcher, tmp_path, pipeline)

    run = await settled(pipeline, "database-start", after="evidence")
    events = await step_events(pipeline, "database-start")
    starts = requests_for(moto_server, "rds", "StartDBInstance", DBInstanceIdentifier=ident)
    status = await status_of(admin, ident)
    where = (
        f"killed pid {killed_pid} at {moment} of database-start on {ident}; StartDBInstance "
        f"requests received by then {at_kill}, in all {len(starts)}; status {status}; "
        f"states {run}; proxy saw {proxy.seen}"
    )
    if moment == "in_flight":
        assert proxy.held == ["StartDBInstance"], where
        assert at_kill == 1, where  # moto had acted before the kill
    # At most once, counted at moto: one StartDBInstance request; the instance is up.
    assert len(starts) == 1, where
    assert status in ("available", "starting"), where
    # The step ended, once, succeeded.
    assert run[:2] == ["planned", "started"], where
    assert run.count("succeeded") == 1, where
    assert run[-1] == "succeeded", where
    assert not {"failed", "skipped"} & set(run), where
    assert events[-1]["result"]["identifier"] == ident, where
