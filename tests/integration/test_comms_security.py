"""A security breach's news through the comms stage on real embedded backends, a real SMTP
server (aiosmtpd) and a fake Slack Web API: an incident whose alert has impact
security_breach (classified by the real classifier) also reaches the security team's
channel and mail; the credential-rotation task a ``people.credential_rotation`` action opened
is told there (and on the responders' chat), once, whatever is redelivered; an approval
reaches the security channel too. Every message is counted raw, as the servers received it.
An outage is not told to the security team; a breach that joined an outage later is."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from comms_support import Comms, open_comms, run
from incident_support import alert_json, webhook
from pydantic import SecretStr
from slack_server import TOKEN, FakeChannel, FakeSlack
from smtp_server import Received, SmtpServer, smtp_server

from actions.people_tasks import people_catalogue
from comms.channel import ChannelRefused, Message
from comms.email import EmailChannel, EmailConfig
from comms.slack import SlackChannel, SlackConfig
from comms.slack_blocks import channel_name
from comms.stage import CONSUMER_GROUP, CommsStage
from schemas import TOPIC_ACTIONS, Envelope, derived_event_id
from schemas.actions import ActionEventData, ApiRequest, Target, action_envelope
from schemas.incidents import Incident
from schemas.notifications import NotificationEventData
from store import IncidentQuery

GK = '{}:{service="checkout"}'
NS = Target(kind="Namespace", namespace="origin-production")
INGRESS = Target(kind="ConfigMap", namespace="ingress-nginx", name="ingress-nginx-controller")
SECURITY = "security@example.com"
AUDIENCES = {
    "team": ["team@example.com"],
    "leadership": ["leaders@example.com"],
    "org": ["everyone@example.com"],
    "support": ["support@example.com"],
    "security": [SECURITY],
}
ROTATE = {"credentials": ["db-password", "api-keys"], "reason": "session tokens in the auth logs"}
TASK_SUBJECT = (
    "[SEV-0] task for people: Rotate credentials in origin-production: db-password, api-keys"
)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    server = FakeSlack()
    await server.start()
    server.add_channel("sre")
    server.add_channel("security")
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    with smtp_server(tmp_path) as running:
        yield running


def channels(slack: FakeSlack, smtp: SmtpServer) -> dict[str, Any]:
    config = SlackConfig(
        api_url=slack.api_url,
        token=SecretStr(TOKEN),
        team_channel="#sre",
        security_channel="#security",
        timeout=2.0,
        max_retry_seconds=5.0,
        per_channel_interval=0.0,
    )
    email = EmailConfig(
        host=smtp.host,
        port=smtp.port,
        security="none",
        from_address="sevpipe@example.com",
        audiences=AUDIENCES,
        timeout=5.0,
        max_retry_seconds=2.0,
        retry_initial_wait=0.01,
    )
    return {"slack": SlackChannel(config), "email": EmailChannel(email)}


async def the_incident(c: Comms) -> Incident:
    [incident] = await c.store.list_incidents(IncidentQuery(limit=10))
    return incident


async def task_event(incident: Incident, at: datetime) -> Envelope:
    """The ``action.succeeded`` the actions stage appends once the task is recorded: its
    result is what the real action returns."""
    spec = people_catalogue(clock=lambda: at).get("people.credential_rotation")
    result = await spec.execute(NS, spec.params.model_validate(ROTATE), 1)
    data = ActionEventData(
        action_id=derived_event_id(_ulid(incident), "action", "rotate", NS.key()),
        incident_id=incident.id,
        incident_version=incident.version,
        playbook="security-breach",
        step="rotate",
        action="people.credential_rotation",
        target=NS,
        params=ROTATE,
        risk="mutating",
        mode="auto",
        state="succeeded",
        dry_run=False,
        result=dict(result),
        decided_at=at,
    )
    return action_envelope(data, source="/sevpipe/actions", at=at)


def approval_event(incident: Incident, at: datetime) -> Envelope:
    path = "/api/v1/namespaces/ingress-nginx/configmaps/ingress-nginx-controller"
    data = ActionEventData(
        action_id=derived_event_id(_ulid(incident), "action", "block", INGRESS.key()),
        incident_id=incident.id,
        incident_version=incident.version,
        playbook="security-breach",
        step="block",
        action="kubernetes.block_ip",
        target=INGRESS,
        params={"cidr": "203.0.113.7/32", "key": "block-cidrs"},
        risk="mutating",
        mode="approve",
        state="awaiting_approval",
        dry_run=False,
        requests=(
            ApiRequest(method="PATCH", path=path, body={"data": {"block-cidrs": "203.0.113.7/32"}}),
        ),
        expires_at=at + timedelta(minutes=30),
        decided_at=at,
    )
    return action_envelope(data, source="/sevpipe/actions", at=at)


def _ulid(incident: Incident) -> str:
    return incident.id.removeprefix("inc-").upper()


async def tell(c: Comms, make: Any, *events: Envelope) -> None:
    """The comms stage over the events, then again as after a crash: the batch redelivered,
    the events appended again by a restarted actions stage, a new comms stage."""
    await c.log.append(TOPIC_ACTIONS, list(events), dedup_keys=[e.id for e in events])
    first: CommsStage = make()
    sub = c.log.subscribe(list(first.topics), CONSUMER_GROUP)
    await run(first, sub, commit=False)
    await sub.close()
    await c.log.append(TOPIC_ACTIONS, list(events), dedup_keys=[e.id for e in events])
    again: CommsStage = make()
    await run(again, c.log.subscribe(list(again.topics), CONSUMER_GROUP))


def mail_to(smtp: SmtpServer, address: str) -> list[Received]:
    return [r for r in smtp.recorder.received if address in r.rcpt_tos]


def posts_to(slack: FakeSlack, channel: FakeChannel) -> list[dict[str, Any]]:
    """Every chat.postMessage the server received for CHANNEL: raw, not deduplicated."""
    posts = []
    for request in slack.calls("chat.postMessage"):
        to = slack.channel(str(request.body.get("channel", "")))  # by id or "#name"
        if to is not None and to.id == channel.id:
            posts.append(request.body)
    return posts


def text_of(post: dict[str, Any]) -> str:
    return str(post["blocks"][1]["text"]["text"])


async def notices(c: Comms, kind: str) -> list[NotificationEventData]:
    found = [NotificationEventData.model_validate(e.data) for e in await c.notifications()]
    return [d for d in found if d.kind == kind]


async def test_a_breachs_rotation_task_reaches_the_security_team_once(
    tmp_path: Path, slack: FakeSlack, smtp: SmtpServer
) -> None:
    async with open_comms(tmp_path) as c:
        chans = channels(slack, smtp)
        await c.incidents_from(
            webhook(GK, alert_json("s1", alertname="TokenTheft", impact="security_breach"))
        )
        incident = await the_incident(c)
        assert incident.severity == "SEV-0"
        task = await task_event(incident, c.now[0])
        approval = approval_event(incident, c.now[0])
        await tell(c, lambda: c.stage(**chans), approval, task)
        tasks = await notices(c, "task")
        for channel in chans.values():
            await channel.close()

    security = slack.channel_named("security")
    sre = slack.channel_named("sre")
    incident_channel = slack.channel_named(channel_name(incident))
    assert security is not None
    assert sre is not None
    assert incident_channel is not None

    # The security email: the incident's opening, then the task; once each.
    mails = mail_to(smtp, SECURITY)
    subjects = [str(m.message["Subject"]) for m in mails]
    assert subjects.count(TASK_SUBJECT) == 1
    assert len(mails) == 2, subjects
    assert subjects[0] == "[SEV-0] opened: TokenTheft: TokenTheft s1"
    [mail] = [m for m in mails if str(m.message["Subject"]) == TASK_SUBJECT]
    body = mail.message.get_body(("plain",))
    assert body is not None
    text = str(body.get_content())
    assert "Task for people: Rotate credentials in origin-production: db-password, api-keys" in text
    assert "Why: session tokens in the auth logs" in text
    assert "[ ] db-password: issue a new value" in text
    assert "[ ] api-keys: revoke the old value, and check that it is refused" in text
    assert f"Incident: https://sevpipe.example/api/v1/incidents/{incident.id}" in text
    assert mail.rcpt_tos == (SECURITY,)
    # Nobody else's mail carries the task (nor the approval: that is for chat).
    others = [r for r in smtp.recorder.received if SECURITY not in r.rcpt_tos]
    assert others  # the incident's own mails went out...
    assert all("task for people" not in str(m.message["Subject"]) for m in others)
    assert all("approval" not in str(m.message["Subject"]) for m in smtp.recorder.received)

    # The security channel: the incident's card, the approval and the task in its thread.
    sec_posts = posts_to(slack, security)
    task_posts = [p for p in sec_posts if p["text"].startswith("[SEV-0] task for people")]
    approvals = [p for p in sec_posts if p["text"].startswith("[SEV-0] approval needed")]
    assert len(task_posts) == 1, [p["text"] for p in sec_posts]
    assert len(approvals) == 1
    assert len(sec_posts) == 3
    [root] = slack.roots(security.id)
    assert task_posts[0]["thread_ts"] == root["ts"] == approvals[0]["thread_ts"]
    card = text_of(task_posts[0])
    assert "[ ] db-password: store it where origin-production's workloads read it" in card
    assert "Why: session tokens in the auth logs" in card
    assert task_posts[0]["blocks"][0]["text"]["text"] == TASK_SUBJECT
    # The responders' own channel hears of the task too; the team channel is not SEV-0's.
    assert len([p for p in posts_to(slack, incident_channel) if p["text"] == TASK_SUBJECT]) == 1
    assert posts_to(slack, sre) == []

    # One notification per route, whatever was redelivered.
    assert sorted((n.route, n.channel, n.audience) for n in tasks) == [
        ("incident_channel", "slack", "team"),
        ("security_channel", "slack", "security"),
        ("security_email", "email", "security"),
    ]


async def test_an_outage_is_not_told_to_the_security_team(
    tmp_path: Path, slack: FakeSlack, smtp: SmtpServer
) -> None:
    async with open_comms(tmp_path) as c:
        chans = channels(slack, smtp)
        await c.incidents_from(webhook(GK, alert_json("o1", impact="outage")))
        incident = await the_incident(c)
        assert incident.severity == "SEV-0"
        await tell(c, lambda: c.stage(**chans), await task_event(incident, c.now[0]))
        tasks = await notices(c, "task")
        for channel in chans.values():
            await channel.close()

    security = slack.channel_named("security")
    assert security is not None
    assert posts_to(slack, security) == []
    assert mail_to(smtp, SECURITY) == []
    assert [n.route for n in tasks] == ["incident_channel"]  # the responders still hear of it


async def test_a_breach_that_joined_an_outage_later_is_found_among_its_alerts(
    tmp_path: Path, slack: FakeSlack, smtp: SmtpServer
) -> None:
    """The incident's reasons are the outage's (it was SEV-0 already), and the task's event
    carries no alert: comms finds the breach among the incident's stored alerts."""
    async with open_comms(tmp_path) as c:
        chans = channels(slack, smtp)
        await c.incidents_from(webhook(GK, alert_json("o1", impact="outage")))
        opening = c.stage(**chans)
        await run(opening, c.log.subscribe(list(opening.topics), CONSUMER_GROUP))
        assert mail_to(smtp, SECURITY) == []  # an outage, so far
        await c.incidents_from(
            webhook(
                GK,
                alert_json("o1", impact="outage"),
                alert_json("s1", alertname="TokenTheft", impact="security_breach"),
            ),
        )
        incident = await the_incident(c)
        assert not any("security_breach" in r for r in incident.reasons), incident.reasons
        await tell(c, lambda: c.stage(**chans), await task_event(incident, c.now[0]))
        tasks = await notices(c, "task")
        for channel in chans.values():
            await channel.close()

    security = slack.channel_named("security")
    assert security is not None
    sec_posts = posts_to(slack, security)
    assert [p["text"] for p in sec_posts] == [TASK_SUBJECT]
    assert [str(m.message["Subject"]) for m in mail_to(smtp, SECURITY)] == [TASK_SUBJECT]
    assert sorted(n.route for n in tasks) == [
        "incident_channel",
        "security_channel",
        "security_email",
    ]


async def test_the_security_channel_is_posted_to_and_checked_like_the_team_channel(
    slack: FakeSlack,
) -> None:
    now = datetime.now(UTC)
    incident = Incident(
        id="inc-sec",
        key=GK,
        severity="SEV-0",
        status="open",
        title="Token theft",
        reasons=("TokenTheft: impact security_breach",),
        opened_at=now,
        updated_at=now,
    )
    message = Message(
        effect_id="eff-security-task",
        incident=incident,
        kind="task",
        route="security_channel",
        audience="security",
        subject=TASK_SUBJECT,
        text="[ ] db-password: issue a new value",
    )
    base: dict[str, Any] = {
        "api_url": slack.api_url,
        "token": SecretStr(TOKEN),
        "team_channel": "#sre",
        "timeout": 2.0,
        "max_retry_seconds": 1.0,
        "per_channel_interval": 0.0,
    }
    channel = SlackChannel(SlackConfig(**base, security_channel="#security"))
    unset = SlackChannel(SlackConfig(**base))
    try:
        security = slack.channel_named("security")
        assert security is not None
        assert await channel.check(message, None) is None  # not posted yet
        sent = await channel.send(message, None)
        assert sent["channel"] == security.id
        # After a crash, the post is found where it went: not posted twice.
        assert await channel.check(message, None) == {"channel": security.id, "ts": sent["ts"]}
        assert len(security.messages) == 1
        with pytest.raises(ChannelRefused, match="no_security_channel"):
            await unset.send(message, None)
    finally:
        await channel.close()
        await unset.close()
