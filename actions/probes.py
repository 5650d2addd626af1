"""The read-only probes of the catalogue, and ``probes_catalogue`` (probes and Prometheus):

- ``probe.http`` (HttpProbe): one request to the entry's URL with its method and timeout:
  status, whether it is one of ``expect_status``, latency (to the headers, and in all), a
  few response headers, the body's size (read up to :data:`MAX_BODY`). Redirects are not
  followed: a 301 is reported with its Location.
- ``probe.cdn_assets`` (CdnAssets): a HEAD of each URL, :data:`CONCURRENCY` at once: status,
  latency, the cache headers (Age, X-Cache, Cache-Control, ETag, Content-Length) and whether
  they say the CDN answered from cache.
- ``probe.dns`` (DnsNames): each name resolved (``getaddrinfo`` under the entry's timeout):
  its A and AAAA addresses, or the resolver's error.

What a probe finds is its outcome: a timeout, a refused connection, a 503 or a name that does
not resolve is a result (``ok: false`` and why), and the action succeeds; only a target the
inventory does not hold fails it (:class:`ProbeError`, not retried).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, Final, TypeVar

import aiohttp
from pydantic import BaseModel, ConfigDict

from actions.catalogue import ActionSpec, Catalogue, Outcome
from actions.inventory import Inventory
from actions.inventory_services import CdnAssetsEntry, DnsNamesEntry, HttpProbeEntry
from actions.prometheus_actions import no_check, register_prometheus
from actions.prometheus_api import shown_url
from schemas.actions import ApiRequest, Target

E = TypeVar("E", bound=BaseModel)

CONCURRENCY: Final = 8
"""Requests (or lookups) of one probe in flight at once."""
MAX_ASSETS: Final = 100
"""URLs (or names) one probe checks at most; ``truncated`` says when the entry has more."""
MAX_BODY: Final = 1 << 20
HTTP_HEADERS: Final = ("Content-Type", "Content-Length", "Location", "Retry-After", "Server")
CACHE_HEADERS: Final = ("Age", "X-Cache", "Cache-Control", "ETag", "Content-Length")
RESOLVE: Final = "RESOLVE"


class ProbeError(Exception):
    """The probe cannot run (its target is not in the inventory): reported, not retried."""

    retriable = False


class ProbeParams(BaseModel):
    """A probe takes everything from its inventory entry."""

    model_config = ConfigDict(extra="forbid")


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS with {exc.host}:{exc.port} failed: {exc.os_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error  # asyncio's "Connect call failed (...)" names no cause: errno does
        code = 0 if isinstance(err, socket.gaierror) else err.errno or 0
        why = os.strerror(code) if code > 0 else (err.strerror or str(err))
        return f"cannot connect to {exc.host}:{exc.port}: {why}"
    return f"{type(exc).__name__}: {exc}"


def _session() -> aiohttp.ClientSession:
    """A probe's own session: no cookies kept, bodies counted as they travel."""
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        headers={"User-Agent": "sevpipe-probe"},
    )


async def _body_size(resp: aiohttp.ClientResponse) -> tuple[int, bool]:
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY:
            return MAX_BODY, True
    return size, False


async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    within: float,
    headers: Iterable[str],
) -> dict[str, Any]:
    """One request: its status, latencies, the wanted headers present, the body's size; or
    ``status: None`` and the ``error``."""
    started = time.monotonic()
    try:
        async with session.request(
            method, url, timeout=aiohttp.ClientTimeout(total=within), allow_redirects=False
        ) as resp:
            latency = _ms(started)
            size, cut = await _body_size(resp)
            return {
                "status": resp.status,
                "latency_ms": latency,
                "total_ms": _ms(started),
                "headers": {h: resp.headers[h] for h in headers if h in resp.headers},
                "body_bytes": size,
                "body_truncated": cut,
            }
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return {"status": None, "latency_ms": _ms(started), "error": _why(exc, within)}


def cache_hit(headers: dict[str, str]) -> bool | None:
    """Whether the CDN says it answered from cache: X-Cache (Hit/Miss), else an Age above
    0; None when neither says."""
    x_cache = headers.get("X-Cache", "").lower()
    if "hit" in x_cache:
        return True
    if "miss" in x_cache:
        return False
    age = headers.get("Age", "").strip()
    return int(age) > 0 if age.isdigit() else None


async def resolve(name: str, within: float) -> dict[str, Any]:
    """One name's A and AAAA addresses (in the resolver's order), or its error."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    try:
        async with asyncio.timeout(within):
            infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except TimeoutError:
        return {"name": name, "ok": False, "error": f"timed out after {within:g}s"}
    except (OSError, ValueError) as exc:  # gaierror; UnicodeError for a name IDNA refuses
        why = getattr(exc, "strerror", None) or str(exc)
        return {"name": name, "ok": False, "error": why, "latency_ms": _ms(started)}

    def addresses(family: socket.AddressFamily) -> list[str]:
        return list(dict.fromkeys(str(i[4][0]) for i in infos if i[0] == family))

    return {
        "name": name,
        "ok": True,
        "a": addresses(socket.AF_INET),
        "aaaa": addresses(socket.AF_INET6),
        "latency_ms": _ms(started),
    }


Job = Callable[[], Awaitable[dict[str, Any]]]


async def _bounded(jobs: list[Job]) -> list[dict[str, Any]]:
    """Every job's result in order, at most CONCURRENCY running at once."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(job: Job) -> dict[str, Any]:
        async with gate:
            return await job()

    return list(await asyncio.gather(*(one(j) for j in jobs)))


class Probes:
    """probe.http, probe.cdn_assets and probe.dns over the INVENTORY's probes."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    def _entry(self, target: Target, model: type[E]) -> E:
        entry = self.inventory.entry(target.kind, target.name)
        if not isinstance(entry, model):
            raise ProbeError(f"{target.kind} {target.name!r} is not in the inventory")
        return entry

    async def plan_http(self, target: Target, params: ProbeParams) -> tuple[ApiRequest, ...]:
        entry = self._entry(target, HttpProbeEntry)
        return (ApiRequest(method=entry.method, path=shown_url(entry.url)),)

    async def http(self, target: Target, params: ProbeParams, token: int) -> Outcome:
        entry = self._entry(target, HttpProbeEntry)
        async with _session() as session:
            found = await request(
                session, entry.method, entry.url, entry.timeout.total_seconds(), HTTP_HEADERS
            )
        expected = found["status"] in entry.expect_status
        return {
            "probe": target.name,
            "url": shown_url(entry.url),
            "method": entry.method,
            "ok": expected,
            "expected": expected,
            "expect_status": list(entry.expect_status),
            **found,
        }

    async def plan_cdn(self, target: Target, params: ProbeParams) -> tuple[ApiRequest, ...]:
        entry = self._entry(target, CdnAssetsEntry)
        return tuple(ApiRequest(method="HEAD", path=shown_url(u)) for u in entry.urls[:MAX_ASSETS])

    async def cdn(self, target: Target, params: ProbeParams, token: int) -> Outcome:
        entry = self._entry(target, CdnAssetsEntry)
        timeout = entry.timeout.total_seconds()
        urls = entry.urls[:MAX_ASSETS]
        async with _session() as session:
            found = await _bounded(
                [partial(request, session, "HEAD", u, timeout, CACHE_HEADERS) for u in urls]
            )
        assets = []
        for url, one in zip(urls, found, strict=True):
            status = one["status"]
            cache = one.pop("headers", {})
            for key in ("body_bytes", "body_truncated", "total_ms"):
                one.pop(key, None)
            ok = status is not None and 200 <= status < 300
            assets.append(
                {
                    "url": shown_url(url),
                    "ok": ok,
                    **one,
                    "cache": cache,
                    "cache_hit": cache_hit(cache),
                }
            )
        good = sum(a["ok"] for a in assets)
        return {
            "probe": target.name,
            "total": len(assets),
            "ok": good,
            "failed": len(assets) - good,
            "all_ok": good == len(assets),
            "cache_hits": sum(a["cache_hit"] is True for a in assets),
            "truncated": len(entry.urls) > MAX_ASSETS,
            "assets": assets,
        }

    async def plan_dns(self, target: Target, params: ProbeParams) -> tuple[ApiRequest, ...]:
        entry = self._entry(target, DnsNamesEntry)
        return tuple(ApiRequest(method=RESOLVE, path=n) for n in entry.names[:MAX_ASSETS])

    async def dns(self, target: Target, params: ProbeParams, token: int) -> Outcome:
        entry = self._entry(target, DnsNamesEntry)
        timeout = entry.timeout.total_seconds()
        names = entry.names[:MAX_ASSETS]
        found = await _bounded([partial(resolve, n, timeout) for n in names])
        good = sum(r["ok"] for r in found)
        return {
            "probe": target.name,
            "total": len(found),
            "resolved": good,
            "failed": len(found) - good,
            "all_ok": good == len(found),
            "truncated": len(entry.names) > MAX_ASSETS,
            "names": found,
        }


def probes_catalogue(
    inventory: Inventory,
    cat: Catalogue | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> Catalogue:
    """The probes and the Prometheus actions over INVENTORY, registered in CAT (a new one by
    default). ``clock``: the time a range query's window ends at (tests fix it)."""
    cat = cat if cat is not None else Catalogue()
    probes = Probes(inventory)
    cat.register(
        ActionSpec(
            name="probe.http",
            params=ProbeParams,
            risk="read_only",
            target_kind="HttpProbe",
            plan=probes.plan_http,
            execute=probes.http,
            check=no_check,
            description="request the probe's URL: status (expected?), latency, headers, size",
        )
    )
    cat.register(
        ActionSpec(
            name="probe.cdn_assets",
            params=ProbeParams,
            risk="read_only",
            target_kind="CdnAssets",
            plan=probes.plan_cdn,
            execute=probes.cdn,
            check=no_check,
            description="HEAD each asset: status, latency, cache headers, served from cache",
        )
    )
    cat.register(
        ActionSpec(
            name="probe.dns",
            params=ProbeParams,
            risk="read_only",
            target_kind="DnsNames",
            plan=probes.plan_dns,
            execute=probes.dns,
            check=no_check,
            description="resolve each name: its A and AAAA addresses, or the error",
        )
    )
    return register_prometheus(cat, inventory, clock)
