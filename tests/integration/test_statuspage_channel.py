"""The Statuspage channel against a fake Statuspage API: what the server really received."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from statuspage_server import API_KEY, PAGE_ID, FakeStatuspage

from comms.channel import Channel, ChannelRefused, ChannelRetry, Message, MessageKind, Outcome
from comms.statuspage import (
    RateLimiter,
    StatuspageChannel,
    StatuspageConfig,
    parse_retry_after,
    shared_limiter,
)
from schemas.incidents import Incident
from schemas.severity import Severity

COMPONENT_IDS = {"api": "cmp_api", "web": "cmp_web", "db": "cmp_db"}
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def incident(severity: Severity = "SEV-1", status: str = "open") -> Incident:
    return Incident.model_validate(
        {
            "id": "inc-42",
            "key": "team=payments",
            "severity": severity,
            "status": status,
            "title": "Checkout errors",
            "reasons": ("error_rate 12% > 5%",),
            "opened_at": T0,
            "updated_at": T0,
        }
    )


def message(
    kind: MessageKind = "opened",
    *,
    severity: Severity = "SEV-1",
    text: str = "We are investigating elevated checkout errors.",
    components: tuple[str, ...] = ("api", "web"),
    public: bool = True,
    subject: str = "Elevated checkout errors",
) -> Message:
    status = "resolved" if kind == "resolved" else "open"
    return Message(
        effect_id=f"eff-{kind}-{severity}-{hash(text) & 0xFFFF:x}",
        incident=incident(severity, status),
        kind=kind,
        route="status_page",
        audience="public",
        subject=subject,
        text=text,
        public=public,
        components=components,
    )


class Sleeps:
    """Records the waits the channel asks for, and waits for none of them."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await asyncio.sleep(0)


Make = Callable[..., StatuspageChannel]


@pytest.fixture
async def server() -> AsyncIterator[FakeStatuspage]:
    fake = FakeStatuspage()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def make(server: FakeStatuspage, sleeps: Sleeps) -> AsyncIterator[Make]:
    made: list[StatuspageChannel] = []

    def _make(**overrides: Any) -> StatuspageChannel:
        settings: dict[str, Any] = {
            "api_url": server.url,
            "page_id": PAGE_ID,
            "api_key": API_KEY,
            "components": COMPONENT_IDS,
            "timeout": 5.0,
            "max_retry_seconds": 30.0,
            "retry_backoff": 0.01,
            "requests_per_second": 1000.0,
            **overrides,
        }
        limiter = settings.pop("limiter", None)
        channel = StatuspageChannel(
            StatuspageConfig.model_validate(settings), limiter=limiter, sleep=sleeps
        )
        made.append(channel)
        return channel

    yield _make
    for channel in made:
        await channel.close()


@pytest.fixture
async def channel(make: Make) -> StatuspageChannel:
    return make()


async def open_incident(channel: StatuspageChannel, severity: Severity = "SEV-1") -> Outcome:
    return await channel.send(message("opened", severity=severity), None)


# -- the lifecycle, as the page shows it ------------------------------------------------------


def test_it_is_a_channel(channel: StatuspageChannel) -> None:
    as_channel: Channel = channel  # mypy checks the protocol here
    assert as_channel.name == "statuspage"


async def test_open_posts_one_incident_with_impact_components_and_metadata(
    server: FakeStatuspage, channel: StatuspageChannel
) -> None:
    msg = message("opened", severity="SEV-1")
    outcome = await channel.send(msg, None)

    [post] = server.sent()
    assert (post.method, post.path) == ("POST", f"/v1/pages/{PAGE_ID}/incidents")
    assert post.headers["Authorization"] == f"OAuth {API_KEY}"
    fields = post.json["incident"]
    assert fields["name"] == "Elevated checkout errors"
    assert fields["body"] == msg.text
    assert fields["status"] == "investigating"
    assert fields["impact_override"] == "major"
    assert fields["component_ids"] == ["cmp_api", "cmp_web"]
    assert fields["components"] == {"cmp_api": "partial_outage", "cmp_web": "partial_outage"}
    assert fields["metadata"] == {"sevpipe": {"incident_id": "inc-42", "effect_id": msg.effect_id}}

    [created] = server.incidents.values()
    assert outcome == {
        "statuspage_incident_id": created["id"],
        "status": "investigating",
        "shortlink": created["shortlink"],
        "component_ids": ["cmp_api", "cmp_web"],
    }
    assert created["impact"] == "major"
    assert server.components["cmp_api"]["status"] == "partial_outage"
    assert server.components["cmp_db"]["status"] == "operational"


@pytest.mark.parametrize(
    ("severity", "impact", "component_status"),
    [
        ("SEV-0", "critical", "major_outage"),
        ("SEV-1", "major", "partial_outage"),
        ("SEV-2", "minor", "degraded_performance"),
        ("SEV-3", "none", "degraded_performance"),
    ],
)
async def test_severity_sets_impact_and_component_status(
    server: FakeStatuspage,
    channel: StatuspageChannel,
    severity: Severity,
    impact: str,
    component_status: str,
) -> None:
    await open_incident(channel, severity)
    [created] = server.incidents.values()
    assert created["impact"] == impact
    assert {c["status"] for c in created["components"]} == {component_status}


async def test_update_patches_the_same_incident_as_identified(
    server: FakeStatuspage, channel: StatuspageChannel
) -> None:
    thread = await open_incident(channel)
    update = message("update", text="We found the cause: a bad deploy.")
    outcome = await channel.send(update, thread)

    _, patch = server.sent()
    assert patch.method == "PATCH"
    assert patch.path == f"/v1/pages/{PAGE_ID}/incidents/{thread['statuspage_incident_id']}"
    assert patch.json["incident"]["status"] == "identified"
    assert patch.json["incident"]["body"] == update.text
    assert "name" not in patch.json["incident"]
    assert len(server.incidents) == 1
    created = server.incidents[thread["statuspage_incident_id"]]
    assert created["status"] == "identified"
    assert [u["status"] for u in created["incident_updates"]] == ["identified", "investigating"]
    assert outcome["statuspage_incident_id"] == thread["statuspage_incident_id"]
    assert outcome["status"] == "identified"
    assert outcome["update_id"] == created["incident_updates"][0]["id"]


async def test_escalation_raises_impact_on_the_page(
    server: FakeStatuspage, channel: StatuspageChannel
) -> None:
    thread = await open_incident(channel, "SEV-2")
    await channel.send(message("escalated", severity="SEV-0", text="Now a full outage."), thread)
    created = server.incidents[thread["statuspage_incident_id"]]
    assert (created["status"], created["impact"]) == ("investigating", "critical")
    assert server.components["cmp_api"]["status"] == "major_outage"


async def test_resolve_sets_resolved_and_every_component_operational(
    server: FakeStatuspage, channel: StatuspageChannel
) -> None:
    thread = await open_incident(channel)
    # The resolve names fewer components than the open: the open's go back all the same.
    resolved = message("resolved", text="Checkout is working again.", components=("api",))
    outcome = await channel.send(resolved, thread)

    patch = server.sent("PATCH")[-1].json["incident"]
    assert patch["status"] == "resolved"
    assert patch["components"] == {"cmp_api": "operational", "cmp_web": "operational"}
    assert "impact_override" not in patch
    created = server.incidents[thread["statuspage_incident_id"]]
    assert created["status"] == "resolved"
    assert created["resolved_at"] is not None
    assert {c["id"]: c["status"] for c in created["components"]} == {
        "cmp_api": "operational",
        "cmp_web": "operational",
    }
    assert outcome["status"] == "resolved"


async def test_reopen_patches_back_to_investigating(
    server: FakeStatuspage, channel: StatuspageChannel
) -> None:
    thread = await open_incident(channel)
    await channel.send(message("resolved", text="Fixed."), thread)
    outcome = await channel.send(message("reopened", text="The errors are back."), thread)

    assert [r.method for r in server.sent()] == ["POST", "PATCH", "PATCH"]
    assert len(server.incidents) == 1
    created = server.incidents[thread["statuspage_incident_id"]]
    assert created["status"] == "investigating"
    assert created["resolved_at"] is None
    assert server.components["cmp_api"]["status"] == "partial_outage"
    assert outcome["status"] == "investigating"


async def test_unknown_component_is_left_out_with_a_warning(
    server: FakeStatuspage, channel: StatuspageChannel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="comms.statuspage"):
        await channel.send(message(components=("api", "billing")), None)
    assert server.sent()[0].json["incident"]["components"] == {"cmp_api": "partial_outage"}
    assert "billing" in caplog.text


async def test_long_multiline_subject_becomes_one_bounded_line(
    server: FakeStatuspage, channel: StatuspageChannel
) -> None:
    await channel.send(message(subject="Checkout\nerrors  " + "x" * 300), None)
    name = server.sent()[0].json["incident"]["name"]
    assert name.startswith("Checkout errors x")
    assert len(name) == 255


# -- check --------------------------------------------------------------------------------------


async def test_check_finds_a_created_incident_by_effect_id(
    server: FakeStatuspage, channel: StatuspageChannel
) -> None:
    opened = message("opened")
    sent = await channel.send(opened, None)
    # Another incident on the page, not this message's.
    await channel.send(replace(opened, effect_id="eff-other"), None)

    found = await channel.check(opened, None)

    assert found == sent
    assert [r.method for r in server.sent()] == ["POST", "POST", "GET"]
    assert server.sent()[-1].path == f"/v1/pages/{PAGE_ID}/incidents/unresolved"


async def test_check_returns_none_for_a_message_never_sent(
    server: FakeStatuspage, channel: StatuspageChannel
) -> None:
    await open_incident(channel)
    assert await channel.check(replace(message(), effect_id="eff-never"), None) is None
    assert [r.method for r in server.sent()] == ["POST", "GET"]


async def test_check_of_a_patch_reads_the_incident_itself(
    server: FakeStatuspage, channel: StatuspageChannel
) -> None:
    thread = await open_incident(channel)
    resolved = message("resolved", text="Checkout is working again.")
    assert await channel.check(resolved, thread) is None

    sent = await channel.send(resolved, thread)
    found = await channel.check(resolved, thread)

    assert found == sent
    assert found is not None
    assert found["update_id"] == sent["update_id"]
    path = f"/v1/pages/{PAGE_ID}/incidents/{thread['statuspage_incident_id']}"
    assert [(r.method, r.path) for r in server.sent()[1:]] == [
        ("GET", path),
        ("PATCH", path),
        ("GET", path),
    ]
    # Same status, other words: a different update, not sent yet.
    assert await channel.check(replace(resolved, text="Another resolution note."), thread) is None


# -- retries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [420, 429])
async def test_rate_limit_waits_out_retry_after_then_succeeds(
    server: FakeStatuspage, channel: StatuspageChannel, sleeps: Sleeps, status: int
) -> None:
    server.fail_next(status, retry_after="7")
    outcome = await channel.send(message(), None)

    # A rate-limited request was refused before anything happened: posted again at once,
    # with no check in between, and the page has one incident.
    assert [r.method for r in server.sent()] == ["POST", "POST"]
    assert sleeps.asked == [7.0]
    assert len(server.incidents) == 1
    assert outcome["statuspage_incident_id"] in server.incidents


async def test_retry_after_beyond_the_budget_is_handed_to_the_stage(
    server: FakeStatuspage, make: Make, sleeps: Sleeps
) -> None:
    channel = make(max_retry_seconds=10)
    server.fail_next(429, retry_after="120")
    with pytest.raises(ChannelRetry) as raised:
        await channel.send(message(), None)
    assert raised.value.retry_after == 120.0
    assert len(server.sent()) == 1
    assert sleeps.asked == []


async def test_server_error_then_success_checks_before_posting_again(
    server: FakeStatuspage, channel: StatuspageChannel, sleeps: Sleeps
) -> None:
    server.fail_next(500)
    outcome = await channel.send(message(), None)

    # A 500 may have created it: the retry looks first, finds nothing, then posts.
    assert [r.method for r in server.sent()] == ["POST", "GET", "POST"]
    assert len(sleeps.asked) == 1
    assert len(server.incidents) == 1
    assert outcome["statuspage_incident_id"] in server.incidents


async def test_lost_response_is_found_instead_of_posted_twice(
    server: FakeStatuspage, make: Make
) -> None:
    channel = make(timeout=0.2)
    server.hang_next(applied=True)
    outcome = await channel.send(message(), None)

    assert [r.method for r in server.sent()] == ["POST", "GET"]
    [created] = server.incidents.values()
    assert outcome["statuspage_incident_id"] == created["id"]


async def test_timeout_then_success(server: FakeStatuspage, make: Make) -> None:
    channel = make(timeout=0.2)
    thread = await open_incident(channel)
    server.hang_next()
    outcome = await channel.send(message("update", text="Identified."), thread)

    assert [r.method for r in server.sent()] == ["POST", "PATCH", "GET", "PATCH"]
    assert outcome["status"] == "identified"


async def test_persistent_server_errors_end_in_channel_retry(
    server: FakeStatuspage, make: Make, sleeps: Sleeps
) -> None:
    channel = make(max_attempts=3)
    server.fail_next(503, count=10)
    with pytest.raises(ChannelRetry) as raised:
        await channel.send(message(), None)
    assert "HTTP 503" in str(raised.value)
    assert raised.value.retry_after is None
    assert [r.method for r in server.sent()] == ["POST", "GET", "GET"]
    assert len(sleeps.asked) == 2


async def test_retries_stay_within_max_retry_seconds(
    server: FakeStatuspage, make: Make, sleeps: Sleeps
) -> None:
    channel = make(max_attempts=100, retry_backoff=1.0, max_retry_seconds=10)
    server.fail_next(500, count=100)
    with pytest.raises(ChannelRetry):
        await channel.send(message(), None)
    # Backoff 1, 2, 4 fits in 10 s; the next (8) would not.
    assert sleeps.asked == [1.0, 2.0, 4.0]


async def test_server_away_is_channel_retry(make: Make, sleeps: Sleeps) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    channel = make(api_url=f"http://127.0.0.1:{port}/v1/", max_attempts=2)
    with pytest.raises(ChannelRetry) as raised:
        await channel.send(message(), None)
    assert "ClientConnectorError" in str(raised.value)
    assert len(sleeps.asked) == 1


# -- refusals: exactly one request, or none ------------------------------------------------------


async def test_wrong_key_is_unauthorized_after_one_request(
    server: FakeStatuspage, make: Make
) -> None:
    channel = make(api_key="not-the-key")
    with pytest.raises(ChannelRefused) as raised:
        await channel.send(message(), None)
    assert raised.value.reason == "unauthorized"
    assert len(server.sent()) == 1


async def test_unknown_incident_is_not_found_after_one_request(
    server: FakeStatuspage, channel: StatuspageChannel
) -> None:
    thread = {"statuspage_incident_id": "inc-gone"}
    with pytest.raises(ChannelRefused) as raised:
        await channel.send(message("update"), thread)
    assert raised.value.reason == "not_found"
    assert len(server.sent()) == 1


async def test_missing_name_is_invalid_with_the_servers_text(
    server: FakeStatuspage, channel: StatuspageChannel
) -> None:
    with pytest.raises(ChannelRefused) as raised:
        await channel.send(message(subject=" "), None)
    assert raised.value.reason == "invalid"
    assert raised.value.detail == "Name can't be blank"
    assert len(server.sent()) == 1


async def test_other_client_errors_are_refused_by_code(
    server: FakeStatuspage, channel: StatuspageChannel
) -> None:
    server.fail_next(403)
    with pytest.raises(ChannelRefused) as raised:
        await channel.send(message(), None)
    assert raised.value.reason == "http_403"
    assert len(server.sent()) == 1


@pytest.mark.parametrize("call", ["send", "check"])
async def test_non_public_message_is_refused_without_a_request(
    server: FakeStatuspage, channel: StatuspageChannel, call: str
) -> None:
    method = getattr(channel, call)
    with pytest.raises(ChannelRefused) as raised:
        await method(message(public=False), None)
    assert raised.value.reason == "not_public"
    assert server.sent() == []


async def test_kinds_a_status_page_does_not_show_are_refused_without_a_request(
    server: FakeStatuspage, channel: StatuspageChannel
) -> None:
    with pytest.raises(ChannelRefused) as raised:
        await channel.send(message("acknowledged"), None)
    assert raised.value.reason == "unsupported_kind"
    assert server.sent() == []


# -- the key stays secret -------------------------------------------------------------------------


async def test_api_key_never_in_outcomes_errors_or_logs(
    server: FakeStatuspage, make: Make, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "statuspage.key"
    key_file.write_text(API_KEY + "\n", encoding="utf-8")
    channel = make(api_key=None, api_key_file=key_file, max_attempts=2)
    inline = StatuspageConfig(page_id=PAGE_ID, api_key=API_KEY)
    seen: list[str] = [repr(channel.config), repr(inline), str(inline.model_dump())]

    async def attempt(call: Awaitable[Any]) -> None:
        try:
            seen.append(repr(await call))
        except (ChannelRetry, ChannelRefused) as exc:
            seen.extend([str(exc), repr(exc), getattr(exc, "detail", "")])

    with caplog.at_level(logging.DEBUG):
        thread = await channel.send(message(), None)
        seen.append(repr(thread))
        await attempt(channel.send(message("update"), thread))
        await attempt(channel.check(message("update"), thread))
        server.fail_next(429, count=2, retry_after="1")
        await attempt(channel.send(message("resolved"), thread))
        server.fail_next(500, count=3)
        await attempt(channel.send(message("resolved"), thread))
        await attempt(channel.send(message(subject=""), None))
        await attempt(channel.send(message("update"), {"statuspage_incident_id": "nope"}))

    assert server.sent()[0].headers["Authorization"] == f"OAuth {API_KEY}"
    assert len(seen) > 10
    for text in [*seen, caplog.text]:
        assert API_KEY not in text


@pytest.mark.parametrize("status", [422, 500])
async def test_server_text_echoing_the_key_is_redacted(
    server: FakeStatuspage, make: Make, status: int
) -> None:
    channel = make(max_attempts=1)
    server.fail_next(status, error=f"bad header: Authorization: OAuth {API_KEY}")
    with pytest.raises((ChannelRefused, ChannelRetry)) as raised:
        await channel.send(message(), None)
    assert "bad header" in str(raised.value)
    assert API_KEY not in str(raised.value)


def test_config_needs_a_key() -> None:
    with pytest.raises(ValueError, match="api_key or api_key_file"):
        StatuspageConfig(page_id=PAGE_ID)


def test_unreadable_key_file_names_the_file_not_the_key(tmp_path: Path) -> None:
    config = StatuspageConfig(page_id=PAGE_ID, api_key_file=tmp_path / "missing.key")
    with pytest.raises(ValueError, match=r"api_key_file: cannot read .*missing\.key"):
        StatuspageChannel(config)


def test_retry_after_parses_seconds_and_dates() -> None:
    assert parse_retry_after("60") == 60.0
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("inf") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


# -- the rate limiter -----------------------------------------------------------------------------


class ManualClock:
    """A clock that moves only when told; ``sleep`` returns once it has moved far enough."""

    def __init__(self) -> None:
        self.now = 0.0
        self.asked: list[float] = []
        self._waiting: list[tuple[float, asyncio.Future[None]]] = []
        self._slept = asyncio.Condition()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((self.now + seconds, done))
        async with self._slept:
            self._slept.notify_all()
        await done

    @property
    def sleepers(self) -> int:
        return len(self._waiting)

    async def wait_for_sleepers(self, count: int) -> None:
        async with self._slept:
            await self._slept.wait_for(lambda: len(self._waiting) >= count)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [w for w in self._waiting if w[0] <= self.now]
        self._waiting = [w for w in self._waiting if w[0] > self.now]
        for _, done in due:
            done.set_result(None)


async def settled(*waits: Awaitable[None]) -> None:
    """Each wait done; the timeout only turns a hang into a failure, it is not measured."""
    async with asyncio.timeout(10):
        for wait in waits:
            await wait


async def test_limiter_spaces_acquisitions_evenly() -> None:
    clock = ManualClock()
    limiter = RateLimiter(2.0, clock=clock, sleep=clock.sleep)
    waiters = [asyncio.create_task(limiter.acquire()) for _ in range(3)]
    await settled(clock.wait_for_sleepers(2), waiters[0])
    assert [w.done() for w in waiters] == [True, False, False]
    assert clock.asked == [0.5, 1.0]
    clock.advance(0.5)
    await settled(waiters[1])
    assert not waiters[2].done()
    clock.advance(0.5)
    await asyncio.gather(*waiters)

    # After a quiet spell the next one goes at once: no burst is saved up, none is owed.
    clock.advance(10)
    await limiter.acquire()
    assert clock.asked == [0.5, 1.0]


async def test_channel_requests_go_one_per_slot(server: FakeStatuspage, make: Make) -> None:
    clock = ManualClock()
    channel = make(limiter=RateLimiter(1.0, clock=clock, sleep=clock.sleep))
    sends = [
        asyncio.create_task(channel.send(replace(message(), effect_id=f"eff-{i}"), None))
        for i in range(3)
    ]
    await settled(clock.wait_for_sleepers(2), server.wait_for_requests(1))
    assert len(server.sent()) == 1
    clock.advance(1.0)
    await settled(server.wait_for_requests(2))
    assert clock.sleepers == 1
    clock.advance(1.0)
    await asyncio.gather(*sends)
    assert [r.method for r in server.sent()] == ["POST"] * 3
    assert clock.asked == [1.0, 2.0]


async def test_retries_wait_their_turn_too(
    server: FakeStatuspage, make: Make, sleeps: Sleeps
) -> None:
    clock = ManualClock()
    channel = make(limiter=RateLimiter(1.0, clock=clock, sleep=clock.sleep))
    server.fail_next(429, retry_after="0")
    send = asyncio.create_task(channel.send(message(), None))
    await settled(clock.wait_for_sleepers(1))
    assert len(server.sent()) == 1
    clock.advance(1.0)
    await send
    assert len(server.sent()) == 2


def test_channels_with_one_key_share_a_limiter() -> None:
    first = shared_limiter("key-a", 5.0)
    assert shared_limiter("key-a", 1.0) is first
    assert first.rate == 1.0
    assert shared_limiter("key-b", 5.0) is not first
