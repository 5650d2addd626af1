"""``kubernetes.pod_logs`` (Pods, by the target's label selector; read-only): the lines of the
Pods' logs that match ``pattern`` (case-insensitive; default ``auth|login|token``, the
security-breach runbook's evidence).

At most ``max_pods`` Pods are listed; each container's log is read once, its last
``tail_lines`` lines and at most ``limit_bytes`` bytes, and of its matching lines the newest
``max_lines`` are kept (each clipped to ``MAX_LINE_CHARS``), within ``LINES_BUDGET`` characters
over the whole outcome, so that the action's events stay far below ``MAX_EVENT_BYTES``
(``lines_dropped`` says how many matching lines are not shown). ``plan`` lists the Pods: the
listing and one log read per container, in the order ``execute`` sends them.

Kept lines are redacted before they leave: the values of bearer/basic credentials, of
``token=``, ``password:``, ``secret``, ``api_key``, ``cookie`` and the like, and anything
shaped like a JWT become ``[redacted]``. These are the lines most likely to hold a secret, and
the action's events are read by people and kept in the log.

A log that cannot be read does not fail the action: its entry says ``available: false`` and
why, in the apiserver's words where it gave some (a Pod on no node yet: 204 No Content; a
container not started: 400 "is waiting to start"; RBAC: 403), with ``retriable`` for a
timeout or a 5xx. Only the listing's errors are the action's (mapped by ``call``).
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import urlencode

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field, field_validator

from actions.catalogue import Outcome
from actions.kubernetes_reads import (
    REQUEST_TIMEOUT,
    ApiClientFactory,
    KubernetesError,
    call,
    namespace_of,
)
from schemas.actions import ApiRequest, Target

DEFAULT_PATTERN: Final = r"auth|login|token"
MAX_LINE_CHARS: Final = 1000
LINES_BUDGET: Final = 32 * 1024
"""Characters of log lines in one outcome: even JSON-escaped at 6 bytes each, well inside an
event's 256 KiB."""
MAX_REASON_CHARS: Final = 500
LOG_TIMEOUT: Final = 10.0
NO_CONTENT: Final = 204


class LogParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: str = Field(
        DEFAULT_PATTERN, min_length=1, description="a regular expression, case-insensitive"
    )
    tail_lines: int = Field(1000, ge=1, le=10_000, description="read of each log: its last lines")
    limit_bytes: int = Field(256 * 1024, ge=1024, le=4 * 1024 * 1024, description="and bytes")
    max_pods: int = Field(10, ge=1, le=50, description="Pods read (more: truncated)")
    max_lines: int = Field(100, ge=1, le=1000, description="matching lines kept per log")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"pattern is not a regular expression: {exc}") from None
        return value


@dataclass(frozen=True)
class Filtered:
    lines: list[str]
    """The newest matching lines, at most ``max_lines``, each clipped to MAX_LINE_CHARS."""
    matched: int
    read: int


_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+")
_KEYED = re.compile(
    r"(?i)\b([\w.-]*(?:token|passw(?:or)?d|secret|api[_-]?key|session|cookie|authorization)"
    r"[\w.-]*)([\"']?\s*[:=]\s*[\"']?)(?!(?:bearer|basic)\s)([^\s\"',;&}]+)"
)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
REDACTED: Final = "[redacted]"


def redact(line: str) -> str:
    """LINE with the credentials it seems to hold replaced by ``[redacted]``. Pure."""
    line = _JWT.sub(REDACTED, line)
    line = _SCHEME.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", line)
    return _KEYED.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", line)


def filter_lines(text: str, pattern: str, max_lines: int) -> Filtered:
    """The lines of TEXT that PATTERN matches anywhere, case-insensitively, redacted. Pure."""
    regex = re.compile(pattern, re.IGNORECASE)
    kept: deque[str] = deque(maxlen=max_lines)
    matched = read = 0
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends a line, it does not start one
    for raw in lines:
        line = raw.removesuffix("\r")
        read += 1
        if regex.search(line):
            matched += 1
            line = redact(line)
            kept.append(line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + "…")
    return Filtered(list(kept), matched, read)


def within(lines: list[str], budget: int) -> list[str]:
    """The newest of LINES whose characters add up to at most BUDGET. Pure."""
    kept: list[str] = []
    for line in reversed(lines):
        if len(line) > budget:
            break
        budget -= len(line)
        kept.append(line)
    return kept[::-1]


def _selector(target: Target) -> str:
    if not target.selector:
        raise KubernetesError(f"target {target.key()} names no pod label selector")
    return ",".join(f"{k}={v}" for k, v in sorted(target.selector.items()))


def _containers(pod: client.V1Pod) -> list[str]:
    return [c.name for c in (pod.spec.containers if pod.spec else None) or []]


def _log_query(container: str, params: LogParams) -> list[tuple[str, Any]]:
    # In the order kubernetes_asyncio sends them.
    return [
        ("container", container),
        ("limitBytes", params.limit_bytes),
        ("tailLines", params.tail_lines),
    ]


def _status_message(body: Any) -> str | None:
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        message = json.loads(text).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else (text.strip()[:300] or None)


def _why(exc: KubernetesError) -> str:
    """What the apiserver said, after its status, where it said something; else the error."""
    cause = exc.__cause__
    if isinstance(cause, ApiException):
        message = _status_message(cause.body)
        if message:
            return f"{cause.status} {cause.reason}: {message}"
    return str(exc)


def _no_log(pod: client.V1Pod) -> str:
    phase = (pod.status.phase if pod.status else None) or "Unknown"
    node = pod.spec.node_name if pod.spec else None
    if not node:
        return (
            f"no log: the pod is {phase} on no node, so no container has started "
            "(the apiserver answered 204 No Content)"
        )
    return f"no log: the apiserver answered 204 No Content (pod {phase} on node {node})"


class PodLogs:
    """pod_logs, on clients from FACTORY."""

    def __init__(self, factory: ApiClientFactory) -> None:
        self.factory = factory

    async def _list(
        self, core: client.CoreV1Api, ns: str, selector: str, params: LogParams
    ) -> client.V1PodList:
        return await call(
            "list",
            "pods",
            ns,
            core.list_namespaced_pod(
                ns, label_selector=selector, limit=params.max_pods, _request_timeout=REQUEST_TIMEOUT
            ),
        )

    async def plan(self, target: Target, params: LogParams) -> tuple[ApiRequest, ...]:
        ns, selector = namespace_of(target), _selector(target)
        async with await self.factory() as api:
            pods = await self._list(client.CoreV1Api(api), ns, selector, params)
        listing = urlencode([("labelSelector", selector), ("limit", params.max_pods)])
        requests = [ApiRequest(method="GET", path=f"/api/v1/namespaces/{ns}/pods?{listing}")]
        for pod in pods.items:
            for container in _containers(pod):
                query = urlencode(_log_query(container, params))
                path = f"/api/v1/namespaces/{ns}/pods/{pod.metadata.name}/log?{query}"
                requests.append(ApiRequest(method="GET", path=path))
        return tuple(requests)

    async def pod_logs(self, target: Target, params: LogParams, token: int) -> Outcome:
        ns, selector = namespace_of(target), _selector(target)
        logs: list[dict[str, Any]] = []
        async with await self.factory() as api:
            core = client.CoreV1Api(api)
            pods = await self._list(core, ns, selector, params)
            budget = LINES_BUDGET
            for pod in pods.items:
                for container in _containers(pod):
                    entry = await self._one(core, ns, pod, container, params)
                    if entry["available"]:
                        entry["lines"] = within(entry["lines"], budget)
                        budget -= sum(len(line) for line in entry["lines"])
                        entry["lines_dropped"] = entry["matched"] - len(entry["lines"])
                    logs.append(entry)
        return {
            "namespace": ns,
            "selector": selector,
            "pattern": params.pattern,
            "pods": len(pods.items),
            "truncated": bool(pods.metadata and pods.metadata._continue),
            "unavailable": sum(1 for log in logs if not log["available"]),
            "logs": logs,
        }

    async def _one(
        self, core: client.CoreV1Api, ns: str, pod: client.V1Pod, container: str, params: LogParams
    ) -> dict[str, Any]:
        name = pod.metadata.name
        entry: dict[str, Any] = {
            "pod": name,
            "container": container,
            "phase": pod.status.phase if pod.status else None,
            "node": pod.spec.node_name if pod.spec else None,
        }
        try:
            status, text = await call(
                "get", "pods/log", ns, _read_log(core, ns, name, container, params)
            )
        except KubernetesError as exc:
            reason = _why(exc)[:MAX_REASON_CHARS]
            return {**entry, "available": False, "reason": reason, "retriable": exc.retriable}
        if status == NO_CONTENT:
            return {**entry, "available": False, "reason": _no_log(pod), "retriable": False}
        found = filter_lines(text, params.pattern, params.max_lines)
        return {
            **entry,
            "available": True,
            "lines_read": found.read,
            "matched": found.matched,
            "lines": found.lines,
        }


async def _read_log(
    core: client.CoreV1Api, ns: str, pod: str, container: str, params: LogParams
) -> tuple[int, str]:
    """The raw log (not through the client's deserializer, which would parse a log that
    happens to be JSON and fail on a multi-byte character cut by limitBytes)."""
    response = cast(
        aiohttp.ClientResponse,
        await core.read_namespaced_pod_log(
            pod,
            ns,
            container=container,
            limit_bytes=params.limit_bytes,
            tail_lines=params.tail_lines,
            _preload_content=False,
            _request_timeout=LOG_TIMEOUT,
        ),
    )
    try:
        data = await response.read()
    finally:
        response.release()
    if not 200 <= response.status <= 299:
        exc = ApiException(status=response.status, reason=response.reason)
        exc.body = data
        raise exc
    return response.status, data.decode(errors="replace")
