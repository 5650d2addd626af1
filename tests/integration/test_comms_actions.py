"""Remediation news through the comms stage on real embedded backends: real ``action.*``
events on the log for an incident the real classifier stored, told on the incident's chat
routes (a fake Slack Web API server counting what it received, the console outbox), once,
whatever is redelivered, and only what people must know."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from comms_support import Comms, open_comms, run, sev1
from incident_support import alert_json, records, webhook
from pydantic import SecretStr
from slack_server import TOKEN, FakeSlack

from comms.slack import SlackChannel, SlackConfig
from comms.slack_blocks import channel_name
from comms.stage import CONSUMER_GROUP, CommsStage
from eventlog import Subscription
from schemas import TOPIC_ACTIONS, TOPIC_INCIDENTS, Envelope, derived_event_id
from schemas.actions import ActionEventData, ActionState, ApiRequest, Risk, Target, action_envelope
from schemas.incidents import Incident
from schemas.notifications import NotificationEventData
from store import IncidentQuery
from store.actions import DecisionRequest

GK = '{}:{service="checkout"}'
TARGET = Target(kind="Deployment", namespace="origin-production", name="origin-backend")
SCALE_PATH = "/apis/apps/v1/namespaces/origin-production/deployments/origin-backend/scale"
PUBLIC_URL = "https://sevpipe.example"  # what comms_support's stage is given


def action(
    incident: Incident,
    state: ActionState,
    at: datetime,
    *,
    step: str = "scale-up",
    risk: Risk = "mutating",
    dry_run: bool = False,
    actor: str | None = None,
    reason: str | None = None,
) -> Envelope:
    """The ``action.<state>`` event the actions stage appends for one step of ``incident``."""
    data = ActionEventData(
        action_id=derived_event_id(
            incident.id.removeprefix("inc-").upper(), "action", step, TARGET.key()
        ),
        incident_id=incident.id,
        incident_version=incident.version,
        playbook="checkout-degraded",
        step=step,
        action="kubernetes.get_state" if risk == "read_only" else "kubernetes.scale",
        target=TARGET,
        params={} if risk == "read_only" else {"replicas": 10},
        risk=risk,
        mode="approve",
        state=state,
        dry_run=dry_run,
        requests=(ApiRequest(method="PATCH", path=SCALE_PATH, body={"spec": {"replicas": 10}}),),
        reason=reason,
        actor=actor,
        expires_at=at + timedelta(minutes=30) if state == "awaiting_approval" else None,
        decided_at=at,
    )
    return action_envelope(data, source="/sevpipe/actions", at=at)


async def append(c: Comms, *events: Envelope) -> None:
    """As the actions stage appends (dedup by event id: a re-appended event is dropped)."""
    await c.log.append(TOPIC_ACTIONS, list(events), dedup_keys=[e.id for e in events])


def subscribe(c: Comms, stage: CommsStage) -> Subscription:
    """The stage's own topics, as its runtime subscribes them."""
    return c.log.subscribe(list(stage.topics), CONSUMER_GROUP)


async def the_incident(c: Comms) -> Incident:
    [incident] = await c.store.list_incidents(IncidentQuery(limit=10))
    return incident


def sev3(group: str, fingerprint: str) -> dict[str, Any]:
    return webhook(group, alert_json(fingerprint, impact="minor", service="checkout"))


async def notices(c: Comms, kind: str) -> list[NotificationEventData]:
    found = [NotificationEventData.model_validate(e.data) for e in await c.notifications()]
    return [d for d in found if d.kind == kind]


def outbox(c: Comms, kind: str) -> list[dict[str, Any]]:
    """The console outbox's lines of ``kind``, every line counted (no deduplication)."""
    return [line for line in map(orjson.loads, c.outbox_lines()) if line["kind"] == kind]


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    server = FakeSlack()
    await server.start()
    server.add_channel("sre")
    try:
        yield server
    finally:
        await server.close()


def slack_channel(slack: FakeSlack) -> SlackChannel:
    config = SlackConfig(
        api_url=slack.api_url,
        token=SecretStr(TOKEN),
        team_channel="#sre",
        responders=["U1"],
        timeout=2.0,
        max_retry_seconds=5.0,
        per_channel_interval=0.0,
    )
    return SlackChannel(config)


def posts(slack: FakeSlack) -> list[dict[str, Any]]:
    """Every chat.postMessage the server received, in order: raw requests, not deduplicated."""
    return [r.body for r in slack.calls("chat.postMessage")]


async def test_an_approval_is_told_once_in_the_incident_thread_and_nowhere_public(
    tmp_path: Path, slack: FakeSlack
) -> None:
    async with open_comms(tmp_path) as c:
        channel = slack_channel(slack)
        stage = c.stage(slack=channel)
        await c.incidents_from(sev1(GK, "a1"))  # SEV-1: incident_channel, leadership, status
        incident = await the_incident(c)
        asked = action(incident, "awaiting_approval", c.now[0])
        await append(c, asked)
        sub = subscribe(c, stage)
        await run(stage, sub, commit=False)
        await sub.close()
        # Redelivered (no commit), appended again by an actions stage that crashed, and a
        # restarted comms stage: nothing is posted twice.
        await append(c, asked)
        again = c.stage(slack=channel)
        await run(again, subscribe(c, again))
        approvals = await notices(c, "approval")
        await channel.close()

    opened, approval = posts(slack)
    incident_channel = slack.channel_named(channel_name(incident))
    assert incident_channel is not None
    [root] = slack.roots(incident_channel.id)
    assert opened["channel"] == incident_channel.id
    assert (
        root["metadata"]["event_payload"]["effect_id"]
        == opened["metadata"]["event_payload"]["effect_id"]
    )
    # In the incident's thread, as its other messages.
    assert approval["channel"] == incident_channel.id
    assert approval["thread_ts"] == root["ts"]
    action_id = asked.data["action_id"]
    text = approval["blocks"][1]["text"]["text"]
    what = "kubernetes.scale on Deployment origin-production/origin-backend"
    assert f"Approval needed: {what}" in text
    assert "- replicas: 10" in text
    assert f"PATCH {SCALE_PATH}" in text
    assert "mode approve" in text
    assert f"sevpipe approve {action_id}" in text
    assert f'sevpipe deny {action_id} --reason "..."' in text
    assert f"POST {PUBLIC_URL}/api/v1/actions/{action_id}/approve" in text
    assert "Expires " in text
    assert "(in 30 min)" in text
    assert "DRY-RUN" not in text
    assert approval["text"].startswith("[SEV-1] approval needed by ")
    assert approval["blocks"][0]["text"]["text"].startswith("[SEV-1] approval needed by ")
    # Only to chat: leadership email and the status page (console here) heard nothing of it.
    assert outbox(c, "approval") == []
    [sent] = approvals
    assert (sent.route, sent.channel, sent.cause) == ("incident_channel", "slack", asked.id)
    assert sent.effect_id == derived_event_id(asked.id, "notify", "incident_channel", "approval")


async def test_outcomes_people_must_know_are_told_and_the_rest_is_not(tmp_path: Path) -> None:
    async with open_comms(tmp_path) as c:
        stage = c.stage()
        await c.incidents_from(sev3(GK, "m1"))  # SEV-3: the console outbox
        incident = await the_incident(c)
        now = c.now[0]
        later = now + timedelta(seconds=1)
        events = [
            # Not news: a read, the steps before an outcome, an approval given, a dry-run skip.
            action(incident, "succeeded", now, step="look", risk="read_only"),
            action(incident, "failed", now, step="look-again", risk="read_only", reason="403"),
            action(incident, "planned", now, step="restart"),
            action(incident, "started", now, step="restart"),
            action(incident, "approved", now, step="scale-up", actor="alice"),
            action(incident, "skipped", now, step="dry", dry_run=True, reason="dry-run: not sent"),
            # News.
            action(incident, "succeeded", later, step="scale-up", actor="alice"),
            action(incident, "failed", later, step="restart", reason="ApiException: 422 bad"),
            action(incident, "denied", later, step="flush", actor="bob", reason="not in freeze"),
            action(incident, "expired", later, step="failover", reason="nobody approved it"),
        ]
        await append(c, *events)
        sub = subscribe(c, stage)
        await run(stage, sub, commit=False)
        await sub.close()
        await run(stage, subscribe(c, stage))  # redelivered: nothing twice
        told = await notices(c, "action")

    lines = outbox(c, "action")
    assert [line["subject"] for line in lines] == [
        "[SEV-3] action done: kubernetes.scale on Deployment origin-production/origin-backend",
        "[SEV-3] action failed: kubernetes.scale on Deployment origin-production/origin-backend",
        "[SEV-3] action denied by bob: kubernetes.scale on Deployment "
        "origin-production/origin-backend",
        "[SEV-3] approval expired, not run: kubernetes.scale on Deployment "
        "origin-production/origin-backend",
    ]
    done, failed, denied, expired = (line["text"] for line in lines)
    assert done.startswith("Done: kubernetes.scale on Deployment origin-production/")
    assert "approved by alice" in done
    assert "Reason: ApiException: 422 bad" in failed
    assert "Denied by bob:" in denied
    assert "Why: not in freeze" in denied
    assert "Expired, not run:" in expired
    assert "Why: nobody approved it" in expired
    assert {line["route"] for line in lines} == {"outbox"}
    assert len({line["effect_id"] for line in lines}) == 4
    assert sorted(d.cause or "" for d in told) == sorted(e.id for e in events[6:])


async def test_what_is_no_longer_news_or_has_no_incident_is_not_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_comms(tmp_path) as c:
        stage = c.stage()
        await c.incidents_from(sev3(GK, "m1"))
        incident = await the_incident(c)
        now = c.now[0]
        # An approval that ran out before comms saw it (asked 31 minutes ago).
        ran_out = action(incident, "awaiting_approval", now - timedelta(minutes=31), step="a")
        # One answered meanwhile: the actions book holds the denial, decided after the ask.
        answered = action(incident, "awaiting_approval", now - timedelta(minutes=2), step="b")
        book_data = ActionEventData.model_validate(answered.data)
        await c.store.record_action(book_data)
        await c.store.decide_action(
            book_data.action_id,
            DecisionRequest("denied", "bob", now - timedelta(minutes=1), "no"),
            source="/sevpipe/api",
        )
        # History: an outcome from two hours ago (a group reading the topic from its start).
        old = action(incident, "failed", now - timedelta(hours=2), step="c", reason="boom")
        # An incident the store does not have.
        ghost = incident.model_copy(update={"id": "inc-01JNQ00000000000000000GHST"})
        orphan = action(ghost, "awaiting_approval", now, step="d")
        # Still news: told, so the test would see any message at all.
        fresh = action(incident, "awaiting_approval", now, step="e", dry_run=True)
        await append(c, ran_out, answered, old, orphan, fresh)
        with caplog.at_level(logging.INFO, logger="comms.actions_news"):
            await run(stage, subscribe(c, stage))

    [told] = outbox(c, "approval")
    assert told["effect_id"] == derived_event_id(fresh.id, "notify", "outbox", "approval")
    assert "DRY-RUN: approving runs nothing" in told["text"]
    assert "(dry-run: approving runs nothing)" in told["subject"]
    assert outbox(c, "action") == []
    said = caplog.text
    assert f"action {ran_out.data['action_id']} not told: the approval ran out" in said
    assert f"action {answered.data['action_id']} not told: it was denied meanwhile" in said
    assert f"action {old.data['action_id']} not told: it happened more than 1h ago" in said
    assert f"incident {ghost.id} is not in the store" in said


async def test_news_that_comes_before_the_incident_card_never_takes_its_thread(
    tmp_path: Path, slack: FakeSlack
) -> None:
    """On Kafka two topics are not ordered together: an approval may come before the
    incident's first message. It is posted on its own; the card still opens the thread."""
    async with open_comms(tmp_path) as c:
        channel = slack_channel(slack)
        stage = c.stage(slack=channel)
        await c.incidents_from(sev1(GK, "a1"))
        incident = await the_incident(c)
        now = c.now[0]
        await append(c, action(incident, "awaiting_approval", now))
        [asked] = await records(c.log, TOPIC_ACTIONS)
        await stage.handle([asked])  # before the incident's events
        await stage.handle(await records(c.log, TOPIC_INCIDENTS))
        denied = action(incident, "denied", now, actor="bob", reason="not now")
        await append(c, denied)
        await stage.handle(
            [r for r in await records(c.log, TOPIC_ACTIONS) if r.offset > asked.offset]
        )
        await channel.close()

    approval, opened, denial = posts(slack)
    found = slack.channel_named(channel_name(incident))
    assert found is not None
    roots = slack.roots(found.id)
    assert [m["metadata"]["event_payload"]["effect_id"] for m in roots] == [
        approval["metadata"]["event_payload"]["effect_id"],
        opened["metadata"]["event_payload"]["effect_id"],
    ]
    card = roots[1]
    assert card["blocks"][0]["text"]["text"] == f"{incident.severity}: {incident.title}"
    assert denial["thread_ts"] == card["ts"]
    assert "Denied by bob" in denial["blocks"][1]["text"]["text"]
