"""The logs of an evidence bundle: ``logs/<pod>/<container>.log`` for each container of a pod
group's Pods (at most MAX_PODS), the newest ``max_bytes`` of its last ``since`` seconds with
the kubelet's timestamps, every line through :func:`actions.kubernetes_logs.redact`.

A log is read once, up to ``READ_FACTOR`` times ``max_bytes`` (``limitBytes``), keeping the
newest ``max_bytes`` as it streams; a window larger than that is read again by its last lines
(``tailLines``, enough at the lines' mean length), so what is kept is the newest, not the
oldest. A container whose log cannot be read is missing, and why: a Pod on no node (the
apiserver answers 204), RBAC, a container not started.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

from kubernetes_asyncio import client

from actions.evidence_bundle import Missing, Part
from actions.evidence_parts import CONCURRENCY, Read, get_json, reason, response
from actions.kubernetes_logs import redact
from actions.kubernetes_reads import KubernetesError, call
from schemas.actions import ApiRequest

MAX_PODS: Final = 20
READ_FACTOR: Final = 4
LOG_TIMEOUT: Final = 60.0


def log_query(container: str, since: int, max_bytes: int) -> list[tuple[str, Any]]:
    # In the order kubernetes_asyncio's own read_namespaced_pod_log sends them.
    return [
        ("container", container),
        ("limitBytes", max_bytes * READ_FACTOR),
        ("sinceSeconds", since),
        ("timestamps", "true"),
    ]


def _log_path(ns: str, pod: str) -> str:
    return f"/api/v1/namespaces/{ns}/pods/{pod}/log"


def pods_listing(ns: str, selector: str) -> tuple[str, list[tuple[str, Any]]]:
    return f"/api/v1/namespaces/{ns}/pods", [("labelSelector", selector), ("limit", MAX_PODS)]


async def list_pods(api: client.ApiClient, ns: str, selector: str) -> dict[str, Any]:
    path, query = pods_listing(ns, selector)
    listed: dict[str, Any] = await call("list", "pods", ns, get_json(api, path, query))
    return listed


def containers(pod: dict[str, Any]) -> list[str]:
    return [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]


def logs_plan(
    ns: str, selector: str, pods: dict[str, Any], since: int, max_bytes: int
) -> list[ApiRequest]:
    path, query = pods_listing(ns, selector)
    planned = [ApiRequest(method="GET", path=f"{path}?{urlencode(query)}")]
    for pod in pods.get("items") or []:
        name = pod["metadata"]["name"]
        for container in containers(pod):
            query = log_query(container, since, max_bytes)
            planned.append(
                ApiRequest(method="GET", path=f"{_log_path(ns, name)}?{urlencode(query)}")
            )
    return planned


@dataclass
class _Tail:
    """The newest KEEP bytes of a stream, and how much of it there was."""

    keep: int
    data: bytearray = field(default_factory=bytearray)
    total: int = 0
    lines: int = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.lines += chunk.count(b"\n")
        self.data += chunk
        if len(self.data) > self.keep:
            del self.data[: len(self.data) - self.keep]


async def _read_tail(
    api: client.ApiClient, path: str, query: list[tuple[str, Any]], keep: int
) -> _Tail | None:
    """The stream's newest KEEP bytes; None when the apiserver has no log (204)."""
    resp = await asyncio.wait_for(response(api, path, query), LOG_TIMEOUT)
    tail = _Tail(keep)
    try:
        if resp.status == 204:
            return None
        async with asyncio.timeout(LOG_TIMEOUT):
            async for chunk in resp.content.iter_chunked(1 << 16):
                tail.feed(chunk)
    finally:
        resp.release()
    return tail


def redacted(tail: _Tail, max_bytes: int) -> bytes:
    """The kept bytes from their first whole line, each line redacted, within MAX_BYTES."""
    data = bytes(tail.data)
    if tail.total > len(data) and (start := data.find(b"\n")) >= 0:
        data = data[start + 1 :]
    text = "\n".join(redact(line) for line in data.decode(errors="replace").split("\n"))
    out = text.encode()
    if len(out) > max_bytes:
        out = out[len(out) - max_bytes :]
        out = out[out.find(b"\n") + 1 :] if b"\n" in out else out
    return out


def _no_log(pod: dict[str, Any]) -> str:
    phase = (pod.get("status") or {}).get("phase") or "Unknown"
    node = (pod.get("spec") or {}).get("nodeName")
    if not node:
        return (
            f"no log: the pod is {phase} on no node, so no container has started "
            "(the apiserver answered 204 No Content)"
        )
    return f"no log: the apiserver answered 204 No Content (pod {phase} on node {node})"


async def read_log(
    api: client.ApiClient,
    ns: str,
    *,
    pod: dict[str, Any],
    container: str,
    since: int,
    max_bytes: int,
) -> Part | Missing:
    name = pod["metadata"]["name"]
    where = f"logs/{name}/{container}.log"
    path, cap = _log_path(ns, name), max_bytes * READ_FACTOR
    note = None
    try:
        tail = await call(
            "get",
            "pods/log",
            ns,
            _read_tail(api, path, log_query(container, since, max_bytes), max_bytes),
        )
        if tail is not None and tail.total >= cap:
            # More than the read's cap in the window: read its last lines instead, enough
            # (at the lines' mean length) to fill max_bytes twice over.
            lines = min(1_000_000, max(100, math.ceil(2 * max_bytes * tail.lines / tail.total)))
            query = [
                *log_query(container, since, max_bytes)[:3],
                ("tailLines", lines),
                ("timestamps", "true"),
            ]
            tail = await call("get", "pods/log", ns, _read_tail(api, path, query, max_bytes))
            note = f"more than {cap} bytes in the window: its last {lines} lines read"
    except KubernetesError as exc:  # ``call`` maps timeouts and connection errors too
        return Missing(where, reason(exc))
    if tail is None:
        return Missing(where, _no_log(pod))
    return Part(where, redacted(tail, max_bytes), log=True, note=note)


async def read_logs(
    api: client.ApiClient, ns: str, selector: str, since: int, max_bytes: int
) -> Read:
    try:
        pods = await list_pods(api, ns, selector)
    except KubernetesError as exc:
        return Read(missing=[Missing("logs/", reason(exc))])
    items = pods.get("items") or []
    if not items:
        return Read(missing=[Missing("logs/", f"no pod in {ns} matches {selector}")])
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(pod: dict[str, Any], container: str) -> Part | Missing:
        async with gate:
            return await read_log(
                api, ns, pod=pod, container=container, since=since, max_bytes=max_bytes
            )

    done = await asyncio.gather(*(one(p, c) for p in items for c in containers(p)))
    read = Read(
        parts=[d for d in done if isinstance(d, Part)],
        missing=[d for d in done if isinstance(d, Missing)],
    )
    if (pods.get("metadata") or {}).get("continue"):
        read.missing.append(Missing("logs/", f"more than {MAX_PODS} pods match: the first read"))
    return read
