"""``POST /api/v1/slack/interactions``: the Acknowledge and I'm commander buttons of the Slack
cards. Slack signs every request with the app's signing secret (v0 HMAC of the timestamp and
body); a request that is not signed, is signed wrong, or is older than 5 minutes is a 401 and
changes nothing. The acting person is the Slack user who clicked, as Slack says."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import orjson
from aiohttp import web

from classifier.api import IncidentsApi
from comms.slack_blocks import ACKNOWLEDGE, COMMANDER
from comms.slack_signing import BadSlackSignature, verify_slack_request
from store.base import StoreError

log = logging.getLogger(__name__)

ACTIONS = {ACKNOWLEDGE: "acknowledge", COMMANDER: "commander"}


def slack_routes(
    api: IncidentsApi, signing_secret: str, clock: Callable[[], float] = time.time
) -> list[web.RouteDef]:
    async def interactions(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify_slack_request(
                signing_secret,
                request.headers.get("X-Slack-Request-Timestamp", ""),
                request.headers.get("X-Slack-Signature", ""),
                body,
                clock(),
            )
        except BadSlackSignature as exc:
            return web.json_response({"error": str(exc)}, status=401)
        payload = _payload(body)
        if payload is None:
            return web.json_response(
                {"error": "payload: expected a form with one JSON object field, payload"},
                status=400,
            )
        if payload.get("type") != "block_actions":
            return web.Response(status=200)  # other interactions are not ours to answer
        actor = _actor(payload)
        for action in payload.get("actions") or []:
            what = ACTIONS.get(str(action.get("action_id")))
            incident_id = action.get("value")
            if what is None or not isinstance(incident_id, str):
                continue
            # A click Slack delivers twice (its retries) carries the same trigger id.
            key = f"slack\x1f{payload.get('trigger_id') or action.get('action_ts')}"
            try:
                await api.act_as(incident_id, what, actor, key)
            except LookupError:
                log.warning("slack %s on unknown incident %s by %s", what, incident_id, actor)
            except StoreError as exc:
                return web.json_response({"error": f"unavailable: {exc}"}, status=503)
        return web.Response(status=200)

    return [web.post("/api/v1/slack/interactions", interactions)]


def _payload(body: bytes) -> dict[str, Any] | None:
    """Slack's form body: one field, ``payload``, a JSON object; None if it is not that."""
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True)
        [raw] = form["payload"]
        payload = orjson.loads(raw)
    except (UnicodeDecodeError, ValueError, KeyError, orjson.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def _actor(payload: dict[str, Any]) -> str:
    user = payload.get("user") or {}
    name = user.get("username") or user.get("name") or user.get("id") or "unknown"
    return f"slack:{str(name)[:100]}"
