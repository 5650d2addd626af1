"""The comms stage on real embedded backends, fed by the real classifier: who is told what,
once, whatever is redelivered or crashes, and on the runbook's cadence."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from comms_support import (
    Crash,
    RecordingChannel,
    open_comms,
    refused,
    retry,
    run,
    sev1,
)
from incident_support import alert_json, webhook

from classifier.people import acknowledge
from comms.routing import Routing, default_routing
from runtime.relay import relay_outbox
from schemas import TOPIC_INCIDENTS
from schemas.notifications import NotificationEventData
from store import IncidentQuery
from store.base import IncidentWrite, OutboxEvent

GK = '{}:{service="checkout"}'
ACK = "01JNQ0000000000000000000AK"
STORM = 10_000


def data(env_data: dict[str, object]) -> NotificationEventData:
    return NotificationEventData.model_validate(env_data)


async def test_a_sev1_reaches_its_routes_once_and_unconfigured_ones_go_to_the_outbox(
    tmp_path: Path,
) -> None:
    async with open_comms(tmp_path) as c:
        slack = RecordingChannel(c.posted)
        stage = c.stage(slack=slack)
        await c.incidents_from(sev1(GK, "a1", "a2"))
        sub = c.subscribe()
        await run(stage, sub, commit=False)
        await sub.close()
        # Delivered again (no commit): nothing is posted twice, no event appended twice.
        sub = c.subscribe()
        await run(stage, sub)
        events = await c.notifications()

    assert [m.route for m, _ in c.posted.posts] == ["incident_channel"]
    sent = [data(e.data) for e in events]
    assert [e.type for e in events] == ["notification.sent"] * 3
    assert len({e.id for e in events}) == 3
    assert {(d.route, d.channel) for d in sent} == {
        ("incident_channel", "slack"),
        ("leadership_email", "console"),
        ("status_page", "console"),
    }
    lines = [orjson.loads(line) for line in c.outbox_lines()]
    assert sorted(line["route"] for line in lines) == ["leadership_email", "status_page"]
    assert all(d.severity == "SEV-1" and d.kind == "opened" for d in sent)


async def test_public_routes_never_carry_alert_text(tmp_path: Path) -> None:
    marker = "<!channel> secret-db-host-42"
    routing = default_routing().model_copy(
        update={
            "severities": {
                **default_routing().severities,
                "SEV-0": (*default_routing().severities["SEV-0"], "support_email"),
            }
        }
    )
    async with open_comms(tmp_path) as c:
        stage = c.stage(routing)
        body = webhook(GK, alert_json("x1", alertname=marker, impact="outage", service="checkout"))
        await c.incidents_from(body)
        await run(stage, c.subscribe())
    lines = {line["route"]: line for line in map(orjson.loads, c.outbox_lines())}
    assert set(lines) == {
        "incident_channel",
        "team_email",
        "leadership_email",
        "org_email",
        "support_email",
        "status_page",
    }
    for route in ("org_email", "support_email", "status_page"):
        assert lines[route]["public"] is True
        assert marker not in lines[route]["subject"] + lines[route]["text"]
        assert "a major outage" in lines[route]["text"]
    assert marker in lines["incident_channel"]["subject"]  # internal text does say it


async def test_later_messages_thread_under_the_first_and_resolve_is_one_more(
    tmp_path: Path,
) -> None:
    async with open_comms(tmp_path) as c:
        slack = RecordingChannel(c.posted)
        stage = c.stage(slack=slack)
        await c.incidents_from(sev1(GK, "a1"))
        await run(stage, c.subscribe())
        await c.incidents_from(sev1(GK, "a1", status="resolved"))
        await run(stage, c.subscribe())
    (first, root), (last, thread) = c.posted.posts
    assert (first.kind, root) == ("opened", None)
    assert last.kind == "resolved"
    assert thread is not None
    assert thread["ts"] == "1.0001"
    assert thread["message"] == first.effect_id


async def test_a_crash_after_the_post_is_found_by_the_check_not_posted_again(
    tmp_path: Path,
) -> None:
    async with open_comms(tmp_path) as c:
        slack = RecordingChannel(c.posted)
        slack.crash_after_post = True
        await c.incidents_from(sev1(GK, "a1"))
        sub = c.subscribe()
        with pytest.raises(Crash):
            await run(c.stage(slack=slack, lease=0.01), sub)
        await sub.close()
        await asyncio.sleep(0.05)  # the dead holder's lease runs out
        # A new process: the claim's lease has run out, the check finds the post.
        again = RecordingChannel(c.posted)
        sub = c.subscribe()
        await run(c.stage(slack=again), sub)
        events = await c.notifications()
    assert len(c.posted.posts) == 1
    assert again.sends == 0
    slack_events = [data(e.data) for e in events if data(e.data).route == "incident_channel"]
    assert [(d.source, d.outcome["ts"]) for d in slack_events] == [("checked", "1.0001")]


async def test_a_refusal_is_one_failed_notification_and_never_retried(tmp_path: Path) -> None:
    async with open_comms(tmp_path) as c:
        slack = RecordingChannel(c.posted)
        slack.fail_next = [refused("channel_not_found")]
        await c.incidents_from(sev1(GK, "a1"))
        sub = c.subscribe()
        await run(c.stage(slack=slack), sub, commit=False)
        await sub.close()
        await run(c.stage(slack=slack), c.subscribe())  # redelivered
        events = await c.notifications()
    assert slack.sends == 1
    failed = [data(e.data) for e in events if e.type == "notification.failed"]
    assert [(d.route, d.reason) for d in failed] == [("incident_channel", "channel_not_found")]


async def test_a_retriable_failure_is_retried_by_the_runtime_and_sent_once(
    tmp_path: Path,
) -> None:
    async with open_comms(tmp_path) as c:
        slack = RecordingChannel(c.posted)
        slack.fail_next = [retry()]
        await c.incidents_from(sev1(GK, "a1"))
        sub = c.subscribe()
        with pytest.raises(Exception, match="503") as raised:
            await run(c.stage(slack=slack), sub)
        assert getattr(raised.value, "retriable", False)
        await sub.close()
        await run(c.stage(slack=slack), c.subscribe())
        events = await c.notifications()
    assert slack.sends == 2
    assert len(c.posted.posts) == 1
    assert sum(e.type == "notification.sent" for e in events) == 3


async def test_updates_follow_the_cadence_and_a_restart_neither_repeats_nor_skips(
    tmp_path: Path,
) -> None:
    async with open_comms(tmp_path) as c:
        slack = RecordingChannel(c.posted)
        await c.incidents_from(sev1(GK, "a1"))
        stage = c.stage(slack=slack)
        await run(stage, c.subscribe())
        [incident] = await c.store.list_incidents(IncidentQuery())
        opened = incident.opened_at

        async def at(minutes: float, fresh: bool = False) -> int:
            nonlocal stage
            c.now[0] = opened + timedelta(minutes=minutes)
            if fresh:
                stage = c.stage(slack=slack)  # a restart: nothing kept in memory
            return await stage.send_due_updates(c.now[0])

        assert await at(4) == 0
        assert await at(5) == 1  # nobody acknowledged it: leadership is told, once
        assert await at(14) == 0
        assert await at(15) == 1  # the channel's first update
        assert await at(16) == 0
        # Restarted: update 1 and the unacknowledged notice decided again, found done.
        assert await at(29, fresh=True) == 2
        assert await at(30) == 2  # channel update 2, leadership update 1
        assert await at(31, fresh=True) == 3  # again: all found done
        updates = [m for m, _ in c.posted.posts if m.kind == "update"]
        events = await c.notifications()
    assert [(m.route, m.effect_id) for m in updates] == [
        ("incident_channel", updates[0].effect_id),
        ("incident_channel", updates[1].effect_id),
    ]
    assert updates[0].effect_id != updates[1].effect_id
    leadership = [
        data(e.data)
        for e in events
        if data(e.data).route == "leadership_email" and data(e.data).kind == "update"
    ]
    assert [d.channel for d in leadership] == ["console"]  # one update, sent once
    unacked = [data(e.data) for e in events if data(e.data).kind == "unacknowledged"]
    assert [(d.route, d.source) for d in unacked] == [("leadership_email", "performed")]
    assert {data(e.data).source for e in events} <= {
        "performed",
        "recorded",
    }


async def test_a_storm_in_one_incident_is_one_message_per_route(tmp_path: Path) -> None:
    async with open_comms(tmp_path) as c:
        slack = RecordingChannel(c.posted)
        stage = c.stage(slack=slack)
        fps = [f"s{i}" for i in range(STORM)]
        for start in range(0, STORM, 1000):
            await c.incidents_from(sev1(GK, *fps[start : start + 1000]))
            await run(stage, c.subscribe())
        events = await c.notifications()
    assert len(c.posted.posts) == 1
    assert len(events) == 3  # one per route of a SEV-1


async def test_routing_decides_the_routes_and_sev3_goes_to_the_outbox_only(
    tmp_path: Path,
) -> None:
    routing = Routing.model_validate(
        {
            "severities": {
                "SEV-0": [],
                "SEV-1": ["team_channel"],
                "SEV-2": ["team_channel"],
                "SEV-3": ["outbox"],
            }
        }
    )
    async with open_comms(tmp_path) as c:
        slack = RecordingChannel(c.posted)
        stage = c.stage(routing, slack=slack)
        await c.incidents_from(
            sev1(GK, "a1"),
            webhook('{}:{service="docs"}', alert_json("d1", impact="cosmetic", service="docs")),
        )
        await run(stage, c.subscribe())
        events = [data(e.data) for e in await c.notifications()]
    assert sorted((d.severity, d.route, d.channel) for d in events) == [
        ("SEV-1", "team_channel", "slack"),
        ("SEV-3", "outbox", "console"),
    ]


async def test_acknowledging_is_said_in_the_channel_and_stops_the_leadership_escalation(
    tmp_path: Path,
) -> None:
    async with open_comms(tmp_path) as c:
        slack = RecordingChannel(c.posted)
        stage = c.stage(slack=slack)
        await c.incidents_from(sev1(GK, "a1"))
        await run(stage, c.subscribe())
        [incident] = await c.store.list_incidents(IncidentQuery())
        decided = acknowledge(
            incident, actor="erin", at=incident.opened_at + timedelta(minutes=2), request_id=ACK
        )
        assert decided is not None
        acked, change = decided
        await c.store.save(
            [],
            [IncidentWrite(acked, incident.version)],
            [OutboxEvent(TOPIC_INCIDENTS, incident.id, change.envelope())],
        )
        await relay_outbox(c.store, c.log)
        await run(stage, c.subscribe())
        c.now[0] = incident.opened_at + timedelta(minutes=10)
        assert await stage.send_due_updates(c.now[0]) == 0
        events = [data(e.data) for e in await c.notifications()]
    (_, _), (said, thread) = c.posted.posts
    assert said.kind == "acknowledged"
    assert "acknowledged by erin" in said.subject
    assert thread is not None  # in the incident's thread
    assert [d.route for d in events if d.kind == "acknowledged"] == ["incident_channel"]
    assert not [d for d in events if d.kind == "unacknowledged"]
