"""The Statuspage channel: public incidents on an Atlassian Statuspage page (REST API v1).

The first message of an incident on this route creates a Statuspage incident; every later one
PATCHes it (status, body, impact, component statuses). Only public messages, rendered from the
approved templates, go out here: the page is read by customers.

The API key is sent as ``Authorization: OAuth <key>`` and nowhere else: not in outcomes, logs
or exception text (the server's error text is redacted too, in case it echoes the header).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from comms.channel import ChannelRefused, ChannelRetry, Message, Outcome
from schemas.severity import Severity

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

STATUS_BY_KIND: Final[Mapping[str, str]] = {
    "opened": "investigating",
    "escalated": "investigating",
    "reopened": "investigating",
    "update": "identified",
    "resolved": "resolved",
}
IMPACT: Final[Mapping[Severity, str]] = {
    "SEV-0": "critical",
    "SEV-1": "major",
    "SEV-2": "minor",
    "SEV-3": "none",
}
COMPONENT_STATUS: Final[Mapping[Severity, str]] = {
    "SEV-0": "major_outage",
    "SEV-1": "partial_outage",
    "SEV-2": "degraded_performance",
    "SEV-3": "degraded_performance",
}
MAX_NAME_CHARS: Final = 255
"""Statuspage refuses longer incident names (422)."""


class StatuspageConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    api_url: str = Field("https://api.statuspage.io/v1/", description="the API's base URL")
    page_id: str = Field(min_length=1, description="the status page's id")
    api_key: SecretStr | None = Field(None, description="the API key; or api_key_file")
    api_key_file: Path | None = Field(None, description="a file holding the API key")
    components: dict[str, str] = Field(
        default_factory=dict, description="sevpipe component name -> Statuspage component id"
    )
    timeout: float = Field(10.0, gt=0, description="seconds per request")
    max_retry_seconds: float = Field(
        60.0, ge=0, description="how long a message is retried in-process before ChannelRetry"
    )
    max_attempts: int = Field(8, ge=1, description="requests per call at most, retries included")
    retry_backoff: float = Field(0.5, gt=0, description="first backoff after a 5xx or timeout")
    requests_per_second: float = Field(1.0, gt=0, description="Statuspage's limit per API key")
    deliver_notifications: bool = Field(
        True, description="let Statuspage notify the page's subscribers of each update"
    )

    @model_validator(mode="after")
    def _has_key(self) -> StatuspageConfig:
        if self.api_key is None and self.api_key_file is None:
            raise ValueError("api_key or api_key_file is required")
        return self

    def read_api_key(self) -> str:
        """The key (``api_key`` wins over ``api_key_file``), read when the channel is made."""
        if self.api_key is not None:
            key = self.api_key.get_secret_value().strip()
        else:
            assert self.api_key_file is not None  # noqa: S101 - the validator guarantees it
            try:
                key = self.api_key_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(
                    f"api_key_file: cannot read {self.api_key_file}: {exc.strerror}"
                ) from None
        if not key:
            raise ValueError("the Statuspage API key is empty")
        return key


class RateLimiter:
    """At most ``rate`` acquisitions a second, evenly spaced (no burst).

    Each caller reserves the next free slot before it sleeps, so concurrent callers queue in
    order with one sleep each and no polling. A caller cancelled while it waits leaves its slot
    unused: the limiter errs on the slow side.
    """

    def __init__(
        self, rate: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")

    async def acquire(self) -> None:
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + 1.0 / self.rate
        if slot > now:
            await self._sleep(slot - now)


# Statuspage limits each API key, not each channel: channels sharing a key share a limiter
# (keyed by the key's digest so the key itself is not kept here).
_LIMITERS: weakref.WeakValueDictionary[str, RateLimiter] = weakref.WeakValueDictionary()


def shared_limiter(api_key: str, rate: float) -> RateLimiter:
    """The process's limiter for ``api_key``; the lowest rate asked for wins."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    limiter = _LIMITERS.get(digest)
    if limiter is None:
        limiter = _LIMITERS[digest] = RateLimiter(rate)
    limiter.rate = min(limiter.rate, rate)
    return limiter


class _Transient(Exception):
    def __init__(
        self, text: str, retry_after: float | None = None, *, maybe_applied: bool = True
    ) -> None:
        super().__init__(text)
        self.retry_after = retry_after
        self.maybe_applied = maybe_applied


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_text(text: str) -> str:
    try:
        error = json.loads(text).get("error", text)
    except (ValueError, AttributeError):
        error = text
    if isinstance(error, list):
        return "; ".join(str(e) for e in error)
    return str(error)[:500]


def _latest_update(incident: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The newest incident update: Statuspage lists them newest first, but a created_at
    decides when present (ties keep the list's order)."""
    updates = [u for u in incident.get("incident_updates") or () if isinstance(u, Mapping)]
    if not updates:
        return None
    return max(updates, key=lambda u: str(u.get("created_at") or ""))


class StatuspageChannel:
    """``send`` creates or PATCHes one Statuspage incident per sevpipe incident.

    The subject becomes the incident's name (one line, at most 255 characters) and the text
    its update body, as given: both are plain text from approved templates.

    Errors: 420/429 and 5xx, timeouts and connection errors are retried in-process (tenacity,
    ``Retry-After`` honoured) for at most ``max_retry_seconds`` and ``max_attempts``, then
    ``ChannelRetry``; 401 ``unauthorized``, 404 ``not_found``, 422 ``invalid`` (with the
    server's text) and any other 4xx ``http_<code>`` are ``ChannelRefused`` after one request.
    A write that may have taken effect (timeout, 5xx) is looked for before it is retried.
    Every request, retries and checks included, waits for the API key's rate limiter.
    """

    name = "statuspage"

    def __init__(
        self,
        config: StatuspageConfig,
        *,
        limiter: RateLimiter | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.config = config
        self._key = config.read_api_key()
        self._limiter = (
            limiter
            if limiter is not None
            else shared_limiter(self._key, config.requests_per_second)
        )
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._base = f"{config.api_url.rstrip('/')}/pages/{quote(config.page_id, safe='')}"

    # -- the Channel contract ------------------------------------------------------------------

    async def send(self, message: Message, thread: Outcome | None) -> Outcome:
        status = self._status(message)
        ids = self._component_ids(message, thread)
        fields = self._fields(message, status, ids)
        if thread is None:
            fields["name"] = _one_line(message.subject)
            fields["metadata"] = {
                "sevpipe": {"incident_id": message.incident.id, "effect_id": message.effect_id}
            }
            method, path = "POST", "/incidents"
        else:
            method, path = "PATCH", _incident_path(thread)

        async def write() -> Outcome:
            incident = await self._once(method, path, {"incident": fields})
            return _outcome(incident, ids, with_update=thread is not None)

        async def recheck() -> Outcome | None:
            return await self._find(message, thread, status, ids)

        return await self._retrying(f"{method} {path}", write, recheck)

    async def check(self, message: Message, thread: Outcome | None) -> Outcome | None:
        """Whether an earlier ``send`` of ``message`` reached Statuspage.

        A create is found among the page's unresolved incidents by the ``metadata.sevpipe.
        effect_id`` it was created with: the only mark Statuspage keeps that is ours, and a
        new incident is unresolved unless someone resolved it by hand in between (then the
        message goes again, as a second incident). A PATCH leaves no mark of its own (incident
        updates carry no metadata), so the incident itself is fetched (it may be resolved: the
        unresolved list would miss it) and its newest update must have the status and body
        this message sets; an identical earlier update would count as this one, which costs
        nothing since the page already says it.
        """
        status = self._status(message)
        ids = self._component_ids(message, thread)
        return await self._retrying(
            "check", lambda: self._find(message, thread, status, ids), recheck=None
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- what a message sets -------------------------------------------------------------------

    def _status(self, message: Message) -> str:
        # Checked before anything else so a refused message makes no request at all.
        if not message.public:
            raise ChannelRefused("not_public", f"route {message.route}")
        status = STATUS_BY_KIND.get(message.kind)
        if status is None:
            raise ChannelRefused("unsupported_kind", message.kind)
        return status

    def _component_ids(self, message: Message, thread: Outcome | None) -> list[str]:
        ids: list[str] = []
        for name in message.components:
            component_id = self.config.components.get(name)
            if component_id is None:
                log.warning("statuspage: no component id for %r; left out", name)
            elif component_id not in ids:
                ids.append(component_id)
        if message.kind == "resolved" and thread is not None:
            # Whatever the incident was opened with goes back to operational too, even if
            # the inventory named fewer components by the time it resolved.
            for component_id in thread.get("component_ids") or ():
                if isinstance(component_id, str) and component_id not in ids:
                    ids.append(component_id)
        return ids

    def _fields(self, message: Message, status: str, ids: Sequence[str]) -> dict[str, Any]:
        severity = message.incident.severity
        fields: dict[str, Any] = {
            "status": status,
            "body": message.text,
            "deliver_notifications": self.config.deliver_notifications,
        }
        if status != "resolved":
            fields["impact_override"] = IMPACT[severity]
        if ids:
            component_status = "operational" if status == "resolved" else COMPONENT_STATUS[severity]
            fields["component_ids"] = list(ids)
            fields["components"] = dict.fromkeys(ids, component_status)
        return fields

    # -- HTTP ----------------------------------------------------------------------------------

    async def _find(
        self, message: Message, thread: Outcome | None, status: str, ids: Sequence[str]
    ) -> Outcome | None:
        if thread is None:
            listed = await self._once("GET", "/incidents/unresolved")
            for incident in listed if isinstance(listed, list) else ():
                if _effect_id(incident) == message.effect_id:
                    return _outcome(incident, ids)
            return None
        incident = await self._once("GET", _incident_path(thread))
        update = _latest_update(incident) if isinstance(incident, Mapping) else None
        if (
            update is None
            or update.get("status") != status
            or str(update.get("body") or "").strip() != message.text.strip()
        ):
            return None
        return _outcome(incident, ids, with_update=True)

    async def _retrying(
        self,
        what: str,
        op: Callable[[], Awaitable[T]],
        recheck: Callable[[], Awaitable[T | None]] | None,
    ) -> T:
        """``op`` retried while it fails transiently, within the retry budget. After a failure
        that may have taken effect (a timeout or 5xx on a write), ``recheck`` runs before the
        next attempt, so an in-process retry does not post twice either."""
        maybe_applied = False
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            wait=self._wait,
            stop=self._stop,
            sleep=self._sleep,
            before_sleep=lambda rs: log.warning(
                "statuspage %s: %s; retrying in %.2fs",
                what,
                rs.outcome.exception() if rs.outcome else "?",
                rs.upcoming_sleep,
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if maybe_applied and recheck is not None:
                        found = await recheck()
                        if found is not None:
                            return found
                    try:
                        return await op()
                    except _Transient as exc:
                        maybe_applied = maybe_applied or exc.maybe_applied
                        raise
        except _Transient as exc:
            raise ChannelRetry(str(exc), retry_after=exc.retry_after) from None
        raise AssertionError("unreachable: tenacity returns or raises")

    def _wait(self, rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return exc.retry_after
        backoff = wait_exponential(multiplier=self.config.retry_backoff, max=30)
        return float(backoff(rs))

    def _stop(self, rs: RetryCallState) -> bool:
        # idle_for sums the waits asked for, seconds_since_start the time really spent
        # (requests included): either may be the larger, so the budget takes the larger.
        spent = max(rs.seconds_since_start or 0.0, rs.idle_for)
        return (
            rs.attempt_number >= self.config.max_attempts
            or spent + rs.upcoming_sleep > self.config.max_retry_seconds
        )

    async def _once(self, method: str, path: str, body: Any = None) -> Any:
        await self._limiter.acquire()
        what = f"statuspage {method} {path}"
        try:
            async with self._session_for().request(
                method,
                self._base + path,
                json=body,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            ) as response:
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                text = await response.text()
                payload = _json(text) if 200 <= status < 300 else None
        except TimeoutError:
            raise _Transient(f"{what}: timed out after {self.config.timeout}s") from None
        except aiohttp.ClientConnectorError as exc:
            # Never connected: nothing was sent, so a retry needs no recheck.
            text = self._redact(f"{what}: {type(exc).__name__}: {exc}")
            raise _Transient(text, maybe_applied=False) from None
        except aiohttp.ClientError as exc:
            raise _Transient(self._redact(f"{what}: {type(exc).__name__}: {exc}")) from None
        if 200 <= status < 300:
            if payload is None:
                raise _Transient(f"{what}: HTTP {status} without a JSON body")
            return payload
        detail = self._redact(_error_text(text))
        if status in (420, 429):
            # Rate limited: refused before anything was done.
            raise _Transient(f"{what}: HTTP {status}", retry_after, maybe_applied=False)
        if status >= 500:
            raise _Transient(f"{what}: HTTP {status} {detail}".rstrip(), retry_after)
        reason = {401: "unauthorized", 404: "not_found", 422: "invalid"}.get(status)
        raise ChannelRefused(reason or f"http_{status}", detail)

    def _session_for(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={
                    "Authorization": f"OAuth {self._key}",
                    "Accept": "application/json",
                    "User-Agent": "sevpipe",
                }
            )
        return self._session

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "[redacted]")


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_NAME_CHARS]


def _incident_path(thread: Outcome) -> str:
    incident_id = thread.get("statuspage_incident_id")
    if not isinstance(incident_id, str) or not incident_id:
        raise ChannelRefused("invalid_thread", "no statuspage_incident_id in the thread")
    return f"/incidents/{quote(incident_id, safe='')}"


def _effect_id(incident: Any) -> Any:
    if not isinstance(incident, Mapping):
        return None
    metadata = incident.get("metadata")
    sevpipe = metadata.get("sevpipe") if isinstance(metadata, Mapping) else None
    return sevpipe.get("effect_id") if isinstance(sevpipe, Mapping) else None


def _outcome(
    incident: Any, component_ids: Sequence[str], *, with_update: bool = False
) -> dict[str, Any]:
    if not isinstance(incident, Mapping) or not isinstance(incident.get("id"), str):
        raise ChannelRetry("statuspage: the response has no incident id")
    outcome: dict[str, Any] = {
        "statuspage_incident_id": incident["id"],
        "status": incident.get("status"),
    }
    if incident.get("shortlink"):
        outcome["shortlink"] = incident["shortlink"]
    if component_ids:
        outcome["component_ids"] = list(component_ids)
    update = _latest_update(incident) if with_update else None
    if update is not None and update.get("id"):
        outcome["update_id"] = update["id"]
    return outcome
