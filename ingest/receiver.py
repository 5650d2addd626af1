"""``POST /api/v1/alerts``: validate, normalise, append durably, then answer.

Status codes follow what Alertmanager does with them: it retries only 5xx and transport
errors, so anything we could not store is a 503 (retry later) and never a 4xx, and a body we
will never accept is a 4xx (do not retry). No input makes this handler answer 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from eventlog import EventLog, EventLogError
from ingest.auth import Credentials, check_authorization
from ingest.metrics import ReceiverMetrics
from schemas import TOPIC_ALERTS, AlertEventData, Envelope, Webhook, event_type_for, normalise

log = logging.getLogger(__name__)

SOURCE = "/sevpipe/ingest"
RETRY_AFTER_SECONDS = "5"
MAX_ERRORS_SHOWN = 10


@dataclass(frozen=True)
class ReceiverConfig:
    credentials: Credentials = field(default_factory=Credentials)
    max_body_bytes: int = 1024 * 1024


class Rejected(Exception):
    """A request we answer with a 4xx/503 and a JSON error."""

    def __init__(self, status: int, reason: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.body: dict[str, Any] = {"error": message, **extra}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors(include_url=False)[:MAX_ERRORS_SHOWN]:
        out.append({"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]})
    return out


class Receiver:
    """The webhook endpoint; owns nothing but references the log it appends to."""

    def __init__(
        self,
        config: ReceiverConfig,
        eventlog: EventLog,
        metrics: ReceiverMetrics,
        *,
        admit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.log = eventlog
        self.metrics = metrics
        self.admit = admit
        """Awaited before a valid webhook is appended: backpressure from a classifier that
        shares the process (``sevpipe run``); it may delay, never refuse."""

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/api/v1/alerts", self.handle)]

    async def handle(self, request: web.Request) -> web.Response:
        self.metrics.webhooks.inc()
        try:
            # No local holds the parsed body: _accept lets it go before the commit (GC).
            return await self._accept(await self._parse(request))
        except Rejected as rej:
            self.metrics.rejected.labels(rej.reason).inc()
            headers = {"Retry-After": RETRY_AFTER_SECONDS} if rej.status == 503 else None
            if rej.status == 401:
                headers = {"WWW-Authenticate": ", ".join(self.config.credentials.schemes())}
            log.info("webhook rejected (%s): %s", rej.reason, rej)
            return _json(rej.status, rej.body, headers)

    async def _parse(self, request: web.Request) -> Webhook:
        if not check_authorization(request.headers.get("Authorization"), self.config.credentials):
            raise Rejected(401, "auth", "missing or wrong credentials")
        if not _is_json(request.content_type):
            raise Rejected(
                415,
                "content_type",
                f"Content-Type must be application/json, not {request.content_type!r}",
            )
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Rejected(413, "too_large", f"body exceeds the {limit}-byte limit", limit=limit)
        body = await self._read_limited(request, limit)
        try:
            return Webhook.model_validate_json(body)
        except ValidationError as exc:
            errors = _field_errors(exc)
            if any(e.get("type") == "json_invalid" for e in exc.errors(include_url=False)):
                raise Rejected(
                    400, "invalid_json", f"invalid JSON: {errors[0]['message']}"
                ) from None
            first = errors[0]
            raise Rejected(
                400,
                "invalid_schema",
                f"invalid webhook: {first['field']}: {first['message']}",
                field=first["field"],
                errors=errors,
            ) from None

    @staticmethod
    async def _read_limited(request: web.Request, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise Rejected(
                        413, "too_large", f"body exceeds the {limit}-byte limit", limit=limit
                    )
                chunks.append(chunk)
        except web.RequestPayloadError as exc:  # e.g. "Content-Encoding: gzip" that is not
            raise Rejected(400, "invalid_json", f"cannot decode body: {exc}") from None
        return b"".join(chunks)

    async def _accept(self, webhook: Webhook) -> web.Response:
        if self.admit is not None:
            await self.admit()
        payloads = normalise(webhook, webhook.incident_group_key(), datetime.now(UTC))
        # A repeat is an alert whose (startsAt, status) is the latest appended for it: one
        # that fires again after it resolved, with the same startsAt, is a change.
        states = [data.state_key() for data in payloads]
        accepted = len(payloads)
        firing = sum(1 for data in payloads if data.status == "firing")
        appending = self.log.append(TOPIC_ALERTS, _envelopes(payloads), dedup_latest=states)
        # Dozens of webhooks wait for each commit: their models, let go now, die young
        # instead of filling the older GC generations (the log has what it needs).
        del webhook, payloads
        started = time.perf_counter()
        try:
            result = await appending
        except EventLogError as exc:
            raise Rejected(503, "log_unavailable", f"event log unavailable: {exc}") from exc
        self.metrics.append_seconds.observe(time.perf_counter() - started)
        self.metrics.alerts.labels("firing").inc(firing)
        self.metrics.alerts.labels("resolved").inc(accepted - firing)
        if result.duplicates:
            self.metrics.repeats.inc(result.duplicates)
        return _json(
            200,
            {"accepted": accepted, "appended": result.appended, "repeats": result.duplicates},
        )


def _envelopes(payloads: list[AlertEventData]) -> list[Envelope]:
    return [
        Envelope.new(event_type_for(data.status), SOURCE, data.group.group_key, data)
        for data in payloads
    ]
