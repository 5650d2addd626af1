"""Slack: an incident channel and a team-channel thread per incident, over the Web API; for a
security incident, a thread in the security team's channel too.

Every post carries the message's effect id in Slack message metadata, so ``check`` finds what
an earlier, interrupted ``send`` posted, and an in-process retry after an answer that may
have come too late (a timeout, a 5xx) looks before it posts again. ``SlackWebhookChannel`` is
the simpler incoming-webhook variant, which can do neither.

The bot needs ``chat:write``, ``channels:manage`` (create, invite), ``channels:read`` (find a
channel by name) and ``channels:history`` (``check``), and must be a member of the team
channel and of the security channel.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from slack_sdk.webhook.async_client import AsyncWebhookClient

from comms.channel import ChannelRefused, Message, Outcome
from comms.slack_blocks import card, channel_name, fallback_text
from comms.slack_retry import (
    Pacer,
    Retrier,
    Sleep,
    Transient,
    api_failure,
    io_failure,
    retry_after_of,
)

log = logging.getLogger(__name__)


EVENT_TYPE: Final = "sevpipe_notification"
"""The Slack message-metadata event type every post carries."""
ROUTES: Final = ("incident_channel", "team_channel", "security_channel")

_HISTORY_PAGES: Final = 5
_PAGE: Final = 200
# One bad or departed responder must not keep the incident's card from being posted.
_INVITE_USER_ERRORS: Final = frozenset(
    {
        "already_in_channel",
        "cant_invite_self",
        "user_not_found",
        "user_is_bot",
        "user_is_restricted",
        "user_is_ultra_restricted",
        "cant_invite",
    }
)
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{6,}")
_ERROR_CODE = re.compile(r"[a-z0-9_]{1,64}")


class SlackConfig(BaseModel):
    """How to reach Slack. The token and the webhook URL are secrets: never logged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_url: str = Field(
        "https://slack.com/api/", description="the Web API's base URL (a proxy, a test server)"
    )
    token: SecretStr | None = Field(None, description="the bot token (xoxb-...)")
    token_file: Path | None = Field(None, description="a file holding the bot token")
    team_channel: str = Field("", description='channel id or "#name" of the team channel')
    security_channel: str = Field(
        "", description='channel id or "#name" of the security team\'s channel'
    )
    responders: list[str] = Field(
        default_factory=list, description="Slack user ids invited to every incident channel"
    )
    webhook_url: SecretStr | None = Field(None, description="for the incoming-webhook variant")
    timeout: float = Field(10.0, gt=0, description="seconds per HTTP request")
    max_retry_seconds: float = Field(
        30.0, ge=0, description="retry in-process at most this long before ChannelRetry"
    )
    per_channel_interval: float = Field(
        1.0, ge=0, description="seconds between two posts to one Slack channel"
    )
    signing_secret: SecretStr | None = Field(
        None,
        description="the app's signing secret: set, cards carry Acknowledge and I'm commander "
        "buttons, answered on POST /api/v1/slack/interactions",
    )
    signing_secret_file: Path | None = Field(None, description="a file holding signing_secret")

    def signing_secret_value(self) -> str | None:
        if self.signing_secret is not None:
            return self.signing_secret.get_secret_value().strip() or None
        if self.signing_secret_file is not None:
            return self.signing_secret_file.read_text(encoding="utf-8").strip() or None
        return None

    def bot_token(self) -> str:
        if self.token is not None:
            value = self.token.get_secret_value().strip()
        elif self.token_file is not None:
            value = self.token_file.read_text(encoding="utf-8").strip()
        else:
            raise ValueError("slack: no bot token; set token or token_file")
        if not value:
            raise ValueError("slack: the bot token is empty")
        return value


def _thread_of(thread: Outcome) -> tuple[str, str]:
    channel, ts = thread.get("channel"), thread.get("ts")
    if not isinstance(channel, str) or not isinstance(ts, str):
        raise ChannelRefused("invalid_thread", detail="the thread outcome has no channel and ts")
    return channel, ts


def _route(message: Message) -> str:
    if message.route not in ROUTES:
        raise ChannelRefused("unknown_route", detail=f"slack has no route {message.route!r}")
    return message.route


class _SessionOwner:
    """Opens one aiohttp session on first use (inside the loop) and closes it."""

    _config: SlackConfig
    _session: aiohttp.ClientSession | None = None

    def _new_session(self) -> aiohttp.ClientSession:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._config.timeout)
        )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class SlackChannel(_SessionOwner):
    """Slack over the Web API: ``incident_channel`` (a new channel per incident, responders
    invited), ``team_channel`` and ``security_channel`` (the first message posted there, the
    rest threaded)."""

    name = "slack"

    def __init__(
        self,
        config: SlackConfig,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._token = config.bot_token()
        self._buttons = config.signing_secret is not None or config.signing_secret_file is not None
        self._retrier = Retrier(config.max_retry_seconds, sleep)
        self._pacer = Pacer(config.per_channel_interval, clock, sleep)
        self._client: AsyncWebClient | None = None
        self._ids: dict[str, str] = {}
        """Channel names we posted to or looked up, to their ids."""

    async def send(self, message: Message, thread: Outcome | None) -> Outcome:
        route = _route(message)
        if thread is not None:
            channel, thread_ts = _thread_of(thread)
            posted = await self._post(channel, message, thread_ts)
            return {"channel": posted["channel"], "ts": posted["ts"], "thread_ts": thread_ts}
        if route != "incident_channel":
            posted = await self._post(self._shared_channel(route), message, None)
            return {"channel": posted["channel"], "ts": posted["ts"]}
        name = channel_name(message.incident)
        channel = await self._open(name)
        await self._invite(channel)
        posted = await self._post(channel, message, None)
        return {"channel": channel, "channel_name": name, "ts": posted["ts"]}

    async def check(self, message: Message, thread: Outcome | None) -> Outcome | None:
        route = _route(message)
        effect_id = message.effect_id
        if thread is not None:
            channel, thread_ts = _thread_of(thread)
            ts = await self._retrier.run(lambda: self._find_posted(channel, effect_id, thread_ts))
            return None if ts is None else {"channel": channel, "ts": ts, "thread_ts": thread_ts}
        oldest = message.incident.opened_at - timedelta(minutes=5)  # allow for clock skew
        name = (
            channel_name(message.incident)
            if route == "incident_channel"
            else self._shared_channel(route)
        )

        async def find() -> Outcome | None:
            channel = await self._channel_id(name)
            if channel is None:
                return None
            ts = await self._find_posted(channel, effect_id, None, oldest.timestamp())
            if ts is None:
                return None
            if route == "incident_channel":
                return {"channel": channel, "channel_name": name, "ts": ts}
            return {"channel": channel, "ts": ts}

        return await self._retrier.run(find)

    def _shared_channel(self, route: str) -> str:
        """The configured channel of ``team_channel`` or ``security_channel``."""
        config = self._config
        channel = {
            "team_channel": config.team_channel,
            "security_channel": config.security_channel,
        }[route]
        if not channel:
            raise ChannelRefused(f"no_{route}", detail=f"slack {route} is not set")
        return channel

    def _web(self) -> AsyncWebClient:
        if self._client is None or self._session is None:
            self._client = AsyncWebClient(
                token=self._token,
                base_url=self._config.api_url,
                session=self._new_session(),
                retry_handlers=[],  # tenacity retries, and looks before posting again
            )
        return self._client

    async def _call(
        self, method: str, params: dict[str, Any], *, get: bool = False, json: bool = False
    ) -> AsyncSlackResponse:
        """One Web API call; Slack's answer mapped to ``Transient`` or ``ChannelRefused``."""
        client = self._web()
        try:
            if json:
                return await client.api_call(method, json=params)
            return await client.api_call(method, http_verb="GET" if get else "POST", params=params)
        except SlackApiError as exc:
            raise api_failure(method, exc) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise io_failure(method, exc) from None

    async def _open(self, name: str) -> str:
        """The incident channel's id: created now, or found when an earlier try made it."""
        try:
            created = await self._retrier.run(
                lambda: self._call("conversations.create", {"name": name})
            )
            return str(created["channel"]["id"])
        except ChannelRefused as exc:
            if exc.reason != "name_taken":
                raise
        found = await self._retrier.run(lambda: self._lookup(name))
        if found is None:
            raise ChannelRefused("name_taken", detail=f"#{name} exists but is archived or hidden")
        return found

    async def _invite(self, channel: str) -> None:
        users = self._config.responders
        if not users:
            return
        try:
            await self._invite_users(channel, users)
        except ChannelRefused as exc:
            if exc.reason not in _INVITE_USER_ERRORS:
                raise
            # Slack refuses the whole list for one user's sake: invite each on their own.
            for user in users:
                await self._invite_users(channel, [user])

    async def _invite_users(self, channel: str, users: list[str]) -> None:
        params = {"channel": channel, "users": ",".join(users)}
        try:
            await self._retrier.run(lambda: self._call("conversations.invite", params))
        except ChannelRefused as exc:
            if exc.reason not in _INVITE_USER_ERRORS or len(users) > 1:
                raise
            if exc.reason not in ("already_in_channel", "cant_invite_self"):
                log.warning("slack: cannot invite %s to %s: %s", users[0], channel, exc.reason)

    async def _post(self, channel: str, message: Message, thread_ts: str | None) -> Outcome:
        payload: dict[str, Any] = {
            "channel": channel,
            "text": fallback_text(message),
            "blocks": card(message, buttons=self._buttons),
            "metadata": {
                "event_type": EVENT_TYPE,
                "event_payload": {
                    "effect_id": message.effect_id,
                    "incident_id": message.incident.id,
                },
            },
            "unfurl_links": False,
            "unfurl_media": False,
        }
        if thread_ts is not None:
            payload["thread_ts"] = thread_ts
        maybe_posted = False
        oldest = time.time() - 60

        async def attempt() -> Outcome:
            nonlocal maybe_posted
            if maybe_posted:
                found = await self._posted_already(channel, message.effect_id, thread_ts, oldest)
                if found is not None:
                    return found
            try:
                posted = await self._call("chat.postMessage", payload, json=True)
            except Transient as exc:
                maybe_posted = maybe_posted or exc.ambiguous
                raise
            self._ids[channel] = str(posted["channel"])
            return {"channel": str(posted["channel"]), "ts": str(posted["ts"])}

        key = self._ids.get(channel, channel)
        async with self._pacer.slot(key):
            posted = await self._retrier.run(attempt)
        if posted["channel"] != key:
            self._pacer.mark(posted["channel"])
        return posted

    async def _posted_already(
        self, channel: str, effect_id: str, thread_ts: str | None, oldest: float
    ) -> Outcome | None:
        try:
            channel_id = await self._channel_id(channel)
            if channel_id is None:
                return None
            ts = await self._find_posted(channel_id, effect_id, thread_ts, oldest)
        except ChannelRefused as exc:
            # Unable to read the channel (a missing scope): posting twice beats not at all.
            log.warning("slack: cannot look for %s in %s: %s", effect_id, channel, exc.reason)
            return None
        return None if ts is None else {"channel": channel_id, "ts": ts}

    async def _channel_id(self, channel: str) -> str | None:
        if _CHANNEL_ID.fullmatch(channel):
            return channel
        if channel in self._ids:
            return self._ids[channel]
        found = await self._lookup(channel.removeprefix("#"))
        if found is not None:
            self._ids[channel] = found
        return found

    async def _lookup(self, name: str) -> str | None:
        """The id of the unarchived public channel called ``name``, paging conversations.list."""
        params: dict[str, Any] = {"limit": _PAGE, "exclude_archived": True}
        while True:
            page = await self._call("conversations.list", params, get=True)
            for found in page.get("channels") or ():
                if found.get("name") == name:
                    return str(found["id"])
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
            params = {**params, "cursor": cursor}

    async def _find_posted(
        self, channel: str, effect_id: str, thread_ts: str | None, oldest: float | None = None
    ) -> str | None:
        """The ts of the message marked with ``effect_id`` (the channel's recent top level,
        or the thread), or None."""
        method = "conversations.history" if thread_ts is None else "conversations.replies"
        params: dict[str, Any] = {"channel": channel, "include_all_metadata": True, "limit": _PAGE}
        if thread_ts is not None:
            params["ts"] = thread_ts
        if oldest is not None:
            params["oldest"] = f"{oldest:.6f}"
        for _ in range(_HISTORY_PAGES):
            page = await self._call(method, params, get=True)
            for posted in page.get("messages") or ():
                metadata = posted.get("metadata") or {}
                payload = metadata.get("event_payload") or {}
                if (
                    metadata.get("event_type") == EVENT_TYPE
                    and payload.get("effect_id") == effect_id
                ):
                    return str(posted["ts"])
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
            params = {**params, "cursor": cursor}
        return None


class SlackWebhookChannel(_SessionOwner):
    """Slack through one incoming webhook: the same card, in the webhook's own channel.

    A webhook cannot thread, and Slack gives no way to read back what it posted, so ``check``
    always answers None: a crash (or a timeout) between Slack posting and us hearing so posts
    the message a second time.
    """

    name = "slack"

    def __init__(
        self,
        config: SlackConfig,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.webhook_url is None:
            raise ValueError("slack: no webhook_url for the incoming-webhook channel")
        self._config = config
        self._url = config.webhook_url
        self._retrier = Retrier(config.max_retry_seconds, sleep)
        self._pacer = Pacer(config.per_channel_interval, clock, sleep)
        self._client: AsyncWebhookClient | None = None

    async def send(self, message: Message, thread: Outcome | None) -> Outcome:
        body = {
            "text": fallback_text(message),
            "blocks": card(message),
            "unfurl_links": False,
            "unfurl_media": False,
        }
        async with self._pacer.slot("webhook"):
            status = await self._retrier.run(lambda: self._post(body))
        return {"via": "incoming_webhook", "status": status}

    async def check(self, message: Message, thread: Outcome | None) -> Outcome | None:
        return None

    def _webhook(self) -> AsyncWebhookClient:
        if self._client is None or self._session is None:
            # The SDK logs the URL (the secret) at debug level: give it a logger that won't.
            sdk_log = logging.getLogger(f"{__name__}.webhook_sdk")
            sdk_log.setLevel(logging.INFO)
            self._client = AsyncWebhookClient(
                self._url.get_secret_value(),
                session=self._new_session(),
                retry_handlers=[],
                logger=sdk_log,
            )
        return self._client

    async def _post(self, body: dict[str, Any]) -> int:
        try:
            response = await self._webhook().send_dict(body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Not chained: aiohttp's exception text may carry the URL.
            raise io_failure("webhook", exc) from None
        status = response.status_code
        if status == 200:
            return status
        if status == 429:
            raise Transient("webhook: ratelimited", retry_after=retry_after_of(response.headers))
        if status >= 500:
            raise Transient(f"webhook: http_{status}")
        error = (response.body or "").strip()
        raise ChannelRefused(error if _ERROR_CODE.fullmatch(error) else f"http_{status}", "webhook")
