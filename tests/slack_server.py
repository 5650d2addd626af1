"""A fake Slack Web API (and one incoming webhook) on 127.0.0.1, for the Slack channel's tests.

It speaks the real shapes (``{"ok": true, ...}``, ``{"ok": false, "error": ...}``, 429 with
``Retry-After``, cursor paging), records every request in order, lets a test script failures
(``fail``), and keeps channels and messages so a test counts what really landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BOT_USER = "UBOT0001"
TOKEN = "xoxb-fake-token-0001"
_NAME = re.compile(r"[a-z0-9_-]{1,80}")
Handler = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Request:
    method: str
    """The Slack API method (``chat.postMessage``), or ``webhook``."""
    http_method: str
    body: dict[str, Any]
    """Query, form and JSON fields merged."""
    raw: str
    """The query string and the body as sent, to search for what must never be sent."""
    headers: dict[str, str]


@dataclass(frozen=True)
class Failure:
    error: str | None = None
    """Answer ``{"ok": false, "error": error}``; None with status 200: the normal answer."""
    status: int = 200
    retry_after: str | None = None
    land: bool = False
    """Do the work first, then answer with the failure (Slack posted, we never heard)."""
    delay: float = 0.0
    """Seconds before answering: longer than the client's timeout makes a timeout."""
    text: str | None = None
    """A plain-text body instead of JSON (a proxy's 502 page, a webhook's error)."""


@dataclass
class FakeChannel:
    id: str
    name: str
    is_archived: bool = False
    members: set[str] = field(default_factory=lambda: {BOT_USER})
    messages: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "is_channel": True,
            "is_private": False,
            "is_archived": self.is_archived,
            "num_members": len(self.members),
        }


def _truthy(value: Any) -> bool:
    return value in (True, 1, "1", "true", "True")


class FakeSlack:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.webhook_path = "/services/T0000/B0000/webhooksecret0001"
        self.requests: list[Request] = []
        self.webhook_posts: list[dict[str, Any]] = []
        self.channels: list[FakeChannel] = []
        self.page_size_cap = 1000
        """Slack's own cap on ``limit``; lower it to make paging happen."""
        self.known_users: set[str] | None = None
        """When set, inviting anyone else answers ``user_not_found``."""
        self._failures: dict[str, deque[Failure]] = {}
        self._ids = itertools.count(1)
        self._last_ts = 0.0
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._methods: dict[str, Handler] = {
            "conversations.create": self._create,
            "conversations.list": self._list,
            "conversations.invite": self._invite,
            "conversations.history": self._history,
            "conversations.replies": self._replies,
            "chat.postMessage": self._post,
        }

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/api/"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self._port}{self.webhook_path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post(self.webhook_path, self._webhook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- scripting and counting

    def fail(self, method: str, times: int = 1, **failure: Any) -> None:
        """The next ``times`` calls of ``method`` (or ``webhook``) answer with ``Failure``."""
        self._failures.setdefault(method, deque()).extend([Failure(**failure)] * times)

    def add_channel(self, name: str, *, archived: bool = False) -> FakeChannel:
        channel = FakeChannel(id=f"C{next(self._ids):08d}", name=name, is_archived=archived)
        self.channels.append(channel)
        return channel

    def channel_named(self, name: str) -> FakeChannel | None:
        return next((c for c in self.channels if c.name == name), None)

    def channel(self, id_or_name: str) -> FakeChannel | None:
        name = id_or_name.removeprefix("#")
        return next((c for c in self.channels if id_or_name == c.id or name == c.name), None)

    def calls(self, method: str) -> list[Request]:
        return [r for r in self.requests if r.method == method]

    def roots(self, channel_id: str) -> list[dict[str, Any]]:
        channel = self.channel(channel_id)
        assert channel is not None, channel_id
        return [m for m in channel.messages if m.get("thread_ts", m["ts"]) == m["ts"]]

    def replies(self, channel_id: str, thread_ts: str) -> list[dict[str, Any]]:
        channel = self.channel(channel_id)
        assert channel is not None, channel_id
        return [m for m in channel.messages if m.get("thread_ts") == thread_ts != m["ts"]]

    # -- HTTP

    async def _read(self, request: web.Request) -> tuple[dict[str, Any], str]:
        raw = await request.text()
        body: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json" and raw:
            body.update(json.loads(raw))
        elif request.content_type == "application/x-www-form-urlencoded":
            body.update((await request.post()).items())
        return body, f"{request.query_string}\n{raw}"

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        body, raw = await self._read(request)
        self.requests.append(Request(method, request.method, body, raw, dict(request.headers)))
        failure = self._next_failure(method)
        if failure is not None and not failure.land:
            return await self._fail(failure)
        auth = request.headers.get("Authorization", "")
        if not auth:
            answer = {"ok": False, "error": "not_authed"}
        elif auth != f"Bearer {self.token}":
            answer = {"ok": False, "error": "invalid_auth"}
        elif method not in self._methods:
            answer = {"ok": False, "error": "unknown_method"}
        else:
            answer = self._methods[method](body)
        if failure is not None:
            return await self._fail(failure)
        return web.json_response(answer)

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        body, raw = await self._read(request)
        self.requests.append(Request("webhook", "POST", body, raw, dict(request.headers)))
        failure = self._next_failure("webhook")
        if failure is not None and not failure.land:
            return await self._fail(failure)
        self.webhook_posts.append(body)
        if failure is not None:
            return await self._fail(failure)
        return web.Response(text="ok")

    def _next_failure(self, method: str) -> Failure | None:
        queue = self._failures.get(method)
        return queue.popleft() if queue else None

    async def _fail(self, failure: Failure) -> web.StreamResponse:
        if failure.delay:
            # Wakes early when the server closes, so no test waits for a dead client.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), failure.delay)
        headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
        if failure.text is not None:
            return web.Response(status=failure.status, text=failure.text, headers=headers)
        answer: dict[str, Any] = {"ok": failure.error is None}
        if failure.error is not None:
            answer["error"] = failure.error
        return web.json_response(answer, status=failure.status, headers=headers)

    # -- the Web API methods

    def _next_ts(self) -> str:
        self._last_ts = max(time.time(), self._last_ts + 0.000001)
        return f"{self._last_ts:.6f}"

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = str(body.get("name", ""))
        if not _NAME.fullmatch(name):
            return {"ok": False, "error": "invalid_name_specials"}
        if self.channel_named(name) is not None:
            return {"ok": False, "error": "name_taken"}
        return {"ok": True, "channel": self.add_channel(name).summary()}

    def _list(self, body: dict[str, Any]) -> dict[str, Any]:
        channels = [
            c
            for c in self.channels
            if not (c.is_archived and _truthy(body.get("exclude_archived")))
        ]
        limit = min(int(body.get("limit", 100)), self.page_size_cap)
        start = int(str(body.get("cursor") or "offset:0").split(":")[1])
        page = channels[start : start + limit]
        more = start + limit < len(channels)
        return {
            "ok": True,
            "channels": [c.summary() for c in page],
            "response_metadata": {"next_cursor": f"offset:{start + limit}" if more else ""},
        }

    def _invite(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = self.channel(str(body.get("channel", "")))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        users = [u for u in str(body.get("users", "")).split(",") if u]
        if not users:
            return {"ok": False, "error": "no_user"}
        # Like Slack, one bad user refuses the whole list and invites nobody.
        if BOT_USER in users:
            return {"ok": False, "error": "cant_invite_self"}
        if self.known_users is not None and not self.known_users.issuperset(users):
            return {"ok": False, "error": "user_not_found"}
        if any(u in channel.members for u in users):
            return {"ok": False, "error": "already_in_channel"}
        channel.members.update(users)
        return {"ok": True, "channel": channel.summary()}

    def _history(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = self.channel(str(body.get("channel", "")))
        if channel is None or channel.id != body.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        oldest = float(body.get("oldest") or 0)
        roots = [m for m in self.roots(channel.id) if float(m["ts"]) > oldest]
        return self._page(list(reversed(roots)), body)

    def _replies(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = self.channel(str(body.get("channel", "")))
        if channel is None or channel.id != body.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        ts = str(body.get("ts", ""))
        root = [m for m in channel.messages if m["ts"] == ts]
        if not root:
            return {"ok": False, "error": "thread_not_found"}
        return self._page(root + self.replies(channel.id, ts), body)

    def _page(self, messages: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
        limit = min(int(body.get("limit", 100)), self.page_size_cap)
        start = int(str(body.get("cursor") or "offset:0").split(":")[1])
        page = messages[start : start + limit]
        if not _truthy(body.get("include_all_metadata")):
            page = [{k: v for k, v in m.items() if k != "metadata"} for m in page]
        more = start + limit < len(messages)
        return {
            "ok": True,
            "messages": page,
            "has_more": more,
            "response_metadata": {"next_cursor": f"offset:{start + limit}" if more else ""},
        }

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = self.channel(str(body.get("channel", "")))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        if channel.is_archived:
            return {"ok": False, "error": "is_archived"}
        if not body.get("text") and not body.get("blocks"):
            return {"ok": False, "error": "no_text"}
        thread_ts = body.get("thread_ts")
        if thread_ts is not None and not any(m["ts"] == thread_ts for m in channel.messages):
            return {"ok": False, "error": "thread_not_found"}
        message: dict[str, Any] = {
            "type": "message",
            "user": BOT_USER,
            "text": body.get("text", ""),
            "blocks": body.get("blocks", []),
            "ts": self._next_ts(),
        }
        if thread_ts is not None:
            message["thread_ts"] = thread_ts
        if body.get("metadata"):
            message["metadata"] = body["metadata"]
        channel.messages.append(message)
        return {"ok": True, "channel": channel.id, "ts": message["ts"], "message": message}
