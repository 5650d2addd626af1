"""The Slack channel against a fake Slack Web API: what the server really received and kept."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from slack_server import BOT_USER, TOKEN, FakeSlack

from comms.channel import ChannelRefused, ChannelRetry, Links, Message, Outcome
from comms.slack import SlackChannel, SlackConfig, SlackWebhookChannel
from schemas.incidents import Incident

T0 = datetime(2026, 3, 1, 12, 7, tzinfo=UTC)
NAME = "incident-20260301-1207-checkout-api-5xx"
INJECTIONS = ("<!channel>", "<!here>", "<@U1>", "<http://x|y>")


def incident(title: str = "Checkout API 5xx", reasons: tuple[str, ...] = ("5xx > 5%",)) -> Incident:
    return Incident(
        id="inc-1",
        key="checkout",
        severity="SEV-1",
        status="open",
        title=title,
        reasons=reasons,
        opened_at=T0,
        updated_at=T0,
    )


def message(
    effect_id: str = "eff-open",
    route: str = "incident_channel",
    inc: Incident | None = None,
    text: str = "Impact: checkout failing\nStatus: open",
) -> Message:
    inc = inc or incident()
    return Message(
        effect_id=effect_id,
        incident=inc,
        kind="opened",
        route=route,
        audience="team",
        subject=f"[{inc.severity}] opened: {inc.title}",
        text=text,
        links=Links(incident="https://sevpipe.example/incidents/inc-1"),
    )


class Sleeps:
    """Records each wait the channel asks for, and yields without waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


def config(slack: FakeSlack, **kw: Any) -> SlackConfig:
    fields: dict[str, Any] = {
        "api_url": slack.api_url,
        "token": SecretStr(TOKEN),
        "team_channel": "#sre",
        "responders": ["U1", "U2"],
        "webhook_url": SecretStr(slack.webhook_url),
        "timeout": 2.0,
        "max_retry_seconds": 5.0,
        "per_channel_interval": 0.0,
    }
    return SlackConfig(**(fields | kw))


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    server = FakeSlack()
    await server.start()
    server.add_channel("sre")
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def channel(slack: FakeSlack, sleeps: Sleeps) -> AsyncIterator[SlackChannel]:
    ch = SlackChannel(config(slack), sleep=sleeps)
    try:
        yield ch
    finally:
        await ch.close()


def no_secret(*things: object) -> None:
    for thing in things:
        text = json.dumps(thing, default=repr) if isinstance(thing, dict) else repr(thing)
        assert TOKEN not in text
        assert TOKEN not in str(thing)
        assert "webhooksecret" not in text
        assert "webhooksecret" not in str(thing)


# -- incident channel


async def test_first_message_creates_the_channel_invites_and_posts_the_card(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    outcome = await channel.send(message(), None)

    created = slack.channel_named(NAME)
    assert created is not None
    assert dict(outcome) == {"channel": created.id, "channel_name": NAME, "ts": outcome["ts"]}
    assert [r.body["name"] for r in slack.calls("conversations.create")] == [NAME]
    assert created.members == {BOT_USER, "U1", "U2"}
    [posted] = slack.roots(created.id)
    assert posted["ts"] == outcome["ts"]
    assert posted["metadata"] == {
        "event_type": "sevpipe_notification",
        "event_payload": {"effect_id": "eff-open", "incident_id": "inc-1"},
    }
    blocks = posted["blocks"]
    assert blocks[0]["text"]["text"] == "SEV-1: Checkout API 5xx"
    assert blocks[1]["text"]["text"] == "Impact: checkout failing\nStatus: open"
    assert "<https://sevpipe.example/incidents/inc-1|Incident>" in json.dumps(blocks)
    assert posted["text"] == "[SEV-1] opened: Checkout API 5xx"
    assert slack.calls("chat.postMessage")[0].headers["Authorization"] == f"Bearer {TOKEN}"
    no_secret(outcome)


async def test_a_later_message_threads_under_the_first(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    first = await channel.send(message(), None)
    second = await channel.send(message("eff-update"), first)

    assert dict(second) == {
        "channel": first["channel"],
        "ts": second["ts"],
        "thread_ts": first["ts"],
    }
    assert len(slack.calls("conversations.create")) == 1
    assert len(slack.roots(first["channel"])) == 1
    [reply] = slack.replies(first["channel"], first["ts"])
    assert reply["ts"] == second["ts"]
    assert reply["metadata"]["event_payload"]["effect_id"] == "eff-update"


async def test_name_taken_reuses_the_channel_found_by_paging(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    slack.page_size_cap = 2
    for i in range(5):
        slack.add_channel(f"other-{i}")
    existing = slack.add_channel(NAME)
    existing.members.add("U1")  # a responder who joined by hand: Slack refuses the batch

    outcome = await channel.send(message(), None)

    assert outcome["channel"] == existing.id
    assert len([c for c in slack.channels if c.name == NAME]) == 1
    assert len(slack.calls("conversations.list")) == 4  # 7 channels, 2 a page
    assert existing.members == {BOT_USER, "U1", "U2"}
    assert len(slack.roots(existing.id)) == 1


async def test_an_unknown_responder_does_not_stop_the_card(
    slack: FakeSlack, channel: SlackChannel, caplog: pytest.LogCaptureFixture
) -> None:
    slack.known_users = {"U1"}  # U2 has left the workspace
    outcome = await channel.send(message(), None)

    created = slack.channel_named(NAME)
    assert created is not None
    assert created.members == {BOT_USER, "U1"}
    assert [r.body["users"] for r in slack.calls("conversations.invite")] == ["U1,U2", "U1", "U2"]
    assert len(slack.roots(outcome["channel"])) == 1
    assert "cannot invite U2" in caplog.text


async def test_name_taken_by_an_archived_channel_is_refused(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    slack.add_channel(NAME, archived=True)
    with pytest.raises(ChannelRefused) as raised:
        await channel.send(message(), None)
    assert raised.value.reason == "name_taken"
    assert slack.calls("chat.postMessage") == []


async def test_a_second_send_of_a_first_message_reuses_its_channel(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    """A crash after posting, before the ledger recorded it: check finds the post; and if
    send runs again anyway, it still makes no second channel."""
    first = await channel.send(message(), None)
    assert await channel.check(message(), None) == first
    again = await channel.send(message(), None)
    assert again["channel"] == first["channel"]
    assert len([c for c in slack.channels if c.name == NAME]) == 1


# -- team channel


async def test_team_channel_posts_first_then_threads(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    sre = slack.channel_named("sre")
    assert sre is not None
    first = await channel.send(message(route="team_channel"), None)
    second = await channel.send(message("eff-2", route="team_channel"), first)

    assert dict(first) == {"channel": sre.id, "ts": first["ts"]}
    assert second["thread_ts"] == first["ts"]
    assert len(slack.roots(sre.id)) == 1
    assert len(slack.replies(sre.id, first["ts"])) == 1
    assert slack.calls("conversations.create") == []
    assert slack.calls("conversations.invite") == []


# -- check


async def test_check_finds_what_was_posted_and_nothing_else(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    assert await channel.check(message(), None) is None  # no channel yet
    root = await channel.send(message(), None)
    reply = await channel.send(message("eff-2"), root)

    assert await channel.check(message(), None) == root
    assert await channel.check(message("eff-2"), root) == reply
    assert await channel.check(message("eff-never"), root) is None
    assert await channel.check(message("eff-never"), None) is None
    for call in slack.calls("conversations.history") + slack.calls("conversations.replies"):
        assert call.body["include_all_metadata"] in ("1", "true")


async def test_check_on_the_team_channel(slack: FakeSlack, channel: SlackChannel) -> None:
    assert await channel.check(message(route="team_channel"), None) is None
    root = await channel.send(message(route="team_channel"), None)
    assert await channel.check(message(route="team_channel"), None) == root
    assert await channel.check(message("eff-x", route="team_channel"), None) is None


# -- retries


async def test_429_retry_after_is_waited_out_then_posts(
    slack: FakeSlack, channel: SlackChannel, sleeps: Sleeps
) -> None:
    slack.fail("chat.postMessage", status=429, error="ratelimited", retry_after="1")
    outcome = await channel.send(message(route="team_channel"), None)

    assert sleeps.waits == [1.0]
    assert len(slack.calls("chat.postMessage")) == 2
    assert slack.calls("conversations.history") == []  # a 429 posted nothing: no need to look
    assert len(slack.roots(outcome["channel"])) == 1


async def test_429_really_waits_with_the_default_sleep(slack: FakeSlack) -> None:
    slack.fail("chat.postMessage", status=429, error="ratelimited", retry_after="1")
    async with SlackChannel(config(slack)) as channel:
        outcome = await channel.send(message(route="team_channel"), None)
    assert len(slack.calls("chat.postMessage")) == 2
    assert len(slack.roots(outcome["channel"])) == 1


async def test_429_longer_than_the_retry_bound_is_handed_back(
    slack: FakeSlack, channel: SlackChannel, sleeps: Sleeps
) -> None:
    slack.fail("chat.postMessage", status=429, error="ratelimited", retry_after="30")
    with pytest.raises(ChannelRetry) as raised:
        await channel.send(message(route="team_channel"), None)
    assert raised.value.retry_after == 30.0
    assert sleeps.waits == []
    assert len(slack.calls("chat.postMessage")) == 1


async def test_500_then_success_looks_first_then_posts_once(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    slack.fail("chat.postMessage", status=500, text="upstream error")
    outcome = await channel.send(message(), None)

    assert len(slack.calls("chat.postMessage")) == 2
    assert len(slack.calls("conversations.history")) == 1
    assert [m["ts"] for m in slack.roots(outcome["channel"])] == [outcome["ts"]]


@pytest.mark.parametrize(
    "failure",
    [
        {"status": 500, "error": "internal_error"},
        {"status": 200, "error": "fatal_error"},
        {"delay": 1.0},  # longer than the client's timeout
    ],
    ids=["500", "ok-false-fatal", "timeout"],
)
async def test_a_post_that_landed_unheard_is_found_not_repeated(
    slack: FakeSlack, sleeps: Sleeps, failure: dict[str, Any]
) -> None:
    slack.fail("chat.postMessage", land=True, **failure)
    async with SlackChannel(config(slack, timeout=0.3), sleep=sleeps) as channel:
        outcome = await channel.send(message(), None)

    [posted] = slack.roots(outcome["channel"])
    assert posted["ts"] == outcome["ts"]
    assert len(slack.calls("chat.postMessage")) == 1


async def test_5xx_that_never_ends_is_a_channel_retry(
    slack: FakeSlack, channel: SlackChannel, sleeps: Sleeps
) -> None:
    slack.fail("chat.postMessage", times=50, status=503, text="<html>down</html>")
    with pytest.raises(ChannelRetry) as raised:
        await channel.send(message(route="team_channel"), None)
    assert raised.value.retry_after is None
    assert 1 < len(slack.calls("chat.postMessage")) <= 8
    assert len(sleeps.waits) == len(slack.calls("chat.postMessage")) - 1
    no_secret(raised.value, str(raised.value))


async def test_slack_away_is_a_channel_retry(slack: FakeSlack, sleeps: Sleeps) -> None:
    await slack.close()  # nothing listens on its port now
    async with SlackChannel(config(slack), sleep=sleeps) as channel:
        with pytest.raises(ChannelRetry, match="ClientConnectorError"):
            await channel.send(message(route="team_channel"), None)
    assert sleeps.waits


# -- refusals


async def test_channel_not_found_is_refused_after_one_request(
    slack: FakeSlack, sleeps: Sleeps
) -> None:
    async with SlackChannel(config(slack, team_channel="#gone"), sleep=sleeps) as channel:
        with pytest.raises(ChannelRefused) as raised:
            await channel.send(message(route="team_channel"), None)
    assert raised.value.reason == "channel_not_found"
    assert len(slack.requests) == 1
    assert sleeps.waits == []


async def test_invalid_auth_is_refused_and_the_token_not_shown(
    slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "xoxb-wrong-0000-secret"
    caplog.set_level(logging.DEBUG)
    async with SlackChannel(config(slack, token=SecretStr(wrong))) as channel:
        with pytest.raises(ChannelRefused) as raised:
            await channel.send(message(), None)
    assert raised.value.reason == "invalid_auth"
    assert len(slack.requests) == 1
    assert wrong not in str(raised.value)
    assert wrong not in repr(raised.value)
    assert wrong not in caplog.text


@pytest.mark.parametrize("error", ["is_archived", "msg_too_long", "not_in_channel"])
async def test_permanent_errors_are_refused(
    slack: FakeSlack, channel: SlackChannel, error: str
) -> None:
    slack.fail("chat.postMessage", error=error)
    with pytest.raises(ChannelRefused) as raised:
        await channel.send(message(route="team_channel"), None)
    assert raised.value.reason == error
    assert len(slack.calls("chat.postMessage")) == 1


async def test_unknown_route_and_bad_thread_are_refused(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    with pytest.raises(ChannelRefused, match="unknown_route"):
        await channel.send(message(route="leadership_email"), None)
    with pytest.raises(ChannelRefused, match="invalid_thread"):
        await channel.send(message(), {"channel": "C1"})
    assert slack.requests == []


# -- pacing


async def test_posts_to_one_channel_are_paced(slack: FakeSlack, sleeps: Sleeps) -> None:
    cfg = config(slack, per_channel_interval=1.0)
    async with SlackChannel(cfg, sleep=sleeps, clock=lambda: 100.0) as channel:
        first = await channel.send(message(route="team_channel"), None)
        assert sleeps.waits == []
        await channel.send(message("eff-2", route="team_channel"), first)
        assert sleeps.waits == [1.0]  # "#sre" and its id are one channel
        await channel.send(message("eff-3"), None)  # another channel: no wait
        assert sleeps.waits == [1.0]


# -- what alerts cannot do, what is never sent


async def test_injected_mentions_and_links_are_sent_escaped(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    evil = " ".join(INJECTIONS) + " & co"
    inc = incident(title=f"DB down {evil}", reasons=(evil,))
    root = await channel.send(message(inc=inc, text=f"Reasons:\n- {evil}"), None)
    await channel.send(message("eff-2", route="team_channel", inc=inc, text=evil), None)
    await channel.send(message("eff-3", inc=inc, text=evil), root)

    posts = slack.calls("chat.postMessage")
    assert len(posts) == 3
    for request in slack.requests:
        for injected in INJECTIONS:
            assert injected not in request.raw
    for post in posts:
        sent = json.dumps({k: post.body[k] for k in ("text", "blocks")})
        assert re.search(r"&(?!amp;|lt;|gt;)", sent) is None, sent
        assert "&lt;!channel&gt;" in sent
    assert root["channel_name"] == "incident-20260301-1207-db-down-channel-here-u1-http-x-y-co"


async def test_no_secret_in_outcomes_errors_or_logs(
    slack: FakeSlack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    cfg = config(slack, token=None, token_file=token_file)
    assert TOKEN not in repr(cfg)
    assert TOKEN not in str(cfg.model_dump())
    outcomes: list[Outcome | None] = []
    async with SlackChannel(cfg, sleep=Sleeps()) as channel:
        outcomes.append(await channel.send(message(), None))
        outcomes.append(await channel.check(message(), None))
        slack.fail("chat.postMessage", times=50, status=500)
        with pytest.raises(ChannelRetry) as retry:
            await channel.send(message("eff-2"), outcomes[0])
    no_secret(*outcomes, retry.value)
    assert TOKEN not in caplog.text


def test_a_token_is_required() -> None:
    with pytest.raises(ValueError, match="no bot token"):
        SlackChannel(SlackConfig(api_url="http://127.0.0.1:1/api/"))


# -- incoming webhook


async def test_webhook_posts_the_card_and_cannot_check(slack: FakeSlack, sleeps: Sleeps) -> None:
    channel = SlackWebhookChannel(config(slack), sleep=sleeps)
    try:
        first = await channel.send(message(), None)
        await channel.send(message("eff-2"), first)
        assert await channel.check(message(), None) is None
    finally:
        await channel.close()

    assert len(slack.webhook_posts) == 2
    assert slack.webhook_posts[0]["blocks"][0]["text"]["text"] == "SEV-1: Checkout API 5xx"
    assert "thread_ts" not in slack.webhook_posts[1]
    assert dict(first) == {"via": "incoming_webhook", "status": 200}
    assert slack.calls("chat.postMessage") == []


async def test_webhook_retries_429_then_posts(slack: FakeSlack, sleeps: Sleeps) -> None:
    slack.fail("webhook", status=429, text="rate_limited", retry_after="1")
    channel = SlackWebhookChannel(config(slack), sleep=sleeps)
    try:
        await channel.send(message(), None)
    finally:
        await channel.close()
    assert sleeps.waits == [1.0]
    assert len(slack.calls("webhook")) == 2
    assert len(slack.webhook_posts) == 1


@pytest.mark.parametrize(
    "case",
    [
        ({"status": 400, "text": "invalid_payload"}, ChannelRefused, "invalid_payload"),
        ({"status": 404, "text": "<html>no</html>"}, ChannelRefused, "http_404"),
        ({"status": 500, "text": "oops", "times": 50}, ChannelRetry, None),
    ],
    ids=["invalid_payload", "404", "500"],
)
async def test_webhook_failures(
    slack: FakeSlack,
    sleeps: Sleeps,
    caplog: pytest.LogCaptureFixture,
    case: tuple[dict[str, Any], type[Exception], str | None],
) -> None:
    failure, raised, reason = case
    caplog.set_level(logging.DEBUG)
    slack.fail("webhook", **failure)
    channel = SlackWebhookChannel(config(slack), sleep=sleeps)
    try:
        with pytest.raises(raised) as error:
            await channel.send(message(), None)
    finally:
        await channel.close()
    if reason is not None:
        assert isinstance(error.value, ChannelRefused)
        assert error.value.reason == reason
        assert len(slack.calls("webhook")) == 1
    no_secret(error.value)
    assert "webhooksecret" not in caplog.text


def test_webhook_needs_its_url() -> None:
    with pytest.raises(ValueError, match="webhook_url"):
        SlackWebhookChannel(SlackConfig(token=SecretStr("x")))
