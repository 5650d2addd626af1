"""A small client of Prometheus's HTTP API (``/api/v1/query``, ``/api/v1/query_range``) and
the shaping of its results into bounded JSON: what the ``prometheus.*`` actions read, and
what an evidence bundle can read the same way.

The request URLs are built here once (:func:`query_url`, :func:`range_url`), so a plan shows
byte for byte what the client sends: the client sends them as built (``encoded=True``).

Errors follow the catalogue's convention: Prometheus refusing the request (``bad_data``,
``execution``, any other 4xx) is :class:`PrometheusError` with Prometheus's own message, not
retried; a 5xx (its ``timeout``, ``unavailable``, ``internal``), a 429, a timeout or no
connection is :class:`PrometheusUnavailable` (``retriable = True``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
import orjson
from yarl import URL

QUERY_PATH: Final = "/api/v1/query"
RANGE_PATH: Final = "/api/v1/query_range"
MAX_RANGE_POINTS: Final = 11_000
"""Prometheus refuses a range query of more points per series than this."""
_RETRIABLE_TYPES: Final = frozenset({"timeout", "canceled", "unavailable", "internal"})
_SHOWN_BODY: Final = 300


class PrometheusError(Exception):
    """Prometheus refused the request, or answered what is not its API: not retried."""

    retriable = False


class PrometheusUnavailable(PrometheusError):
    """A 5xx, a 429, a timeout, no connection: retried later."""

    retriable = True


def shown_url(url: str) -> str:
    """``url`` as plans and outcomes show it: a password in it left out (it is sent as an
    Authorization header, never in the request line)."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        return url
    return str(parsed.with_password(None)) if parsed.password is not None else url


def _seconds(value: float) -> str:
    """A time or a step as Prometheus reads it: seconds, without a needless fraction."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def query_url(base: str, promql: str, at: float | None = None) -> str:
    """The instant query's URL; without ``at``, Prometheus evaluates at its own now."""
    params: list[tuple[str, str]] = [("query", promql)]
    if at is not None:
        params.append(("time", _seconds(at)))
    return f"{base.rstrip('/')}{QUERY_PATH}?{urlencode(params)}"


def range_url(base: str, promql: str, start: float, end: float, step: float) -> str:
    params = [
        ("query", promql),
        ("start", _seconds(start)),
        ("end", _seconds(end)),
        ("step", _seconds(step)),
    ]
    return f"{base.rstrip('/')}{RANGE_PATH}?{urlencode(params)}"


def range_window(now: float, range_seconds: float, step: float) -> tuple[float, float]:
    """(start, end) of a range query run at ``now``: the end aligned down to the step (so a
    plan and the run that follows it within the same step send the same request)."""
    end = math.floor(now / step) * step
    return end - range_seconds, end


def api_error(status: int, body: bytes) -> PrometheusError:
    """The error for a response that is not a success: Prometheus's ``errorType`` and
    ``error`` when it sent them, the start of the body otherwise."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("status") == "error":
        kind = str(parsed.get("errorType") or "error")
        message = f"{status} {kind}: {parsed.get('error') or ''}".rstrip(": ")
    else:
        kind = ""
        text = body[:_SHOWN_BODY].decode(errors="replace").strip()
        message = f"{status}: {text}" if text else str(status)
    if status >= 500 or status == 429 or kind in _RETRIABLE_TYPES:
        return PrometheusUnavailable(message)
    return PrometheusError(message)


def parse_response(status: int, body: bytes) -> dict[str, Any]:
    """The ``data`` of a successful answer (with its ``warnings``, if any), or the error."""
    if status != 200:
        raise api_error(status, body)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PrometheusError(
            f"not a Prometheus API answer: {body[:_SHOWN_BODY].decode(errors='replace')!r}"
        ) from None
    if not isinstance(parsed, dict) or parsed.get("status") != "success":
        raise api_error(status, body)
    data = parsed.get("data")
    if not isinstance(data, dict) or "resultType" not in data:
        raise PrometheusError("a Prometheus answer without data.resultType")
    if parsed.get("warnings"):
        data = {**data, "warnings": [str(w) for w in parsed["warnings"]]}
    return data


class PrometheusApi:
    """One Prometheus server; an async context that owns its aiohttp session (unless one
    is given, which then stays the caller's)."""

    def __init__(
        self, base_url: str, timeout: float, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._given = session
        self._session = session

    async def __aenter__(self) -> PrometheusApi:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Accept": "application/json", "User-Agent": "sevpipe"}
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._given is None and self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, url: str) -> dict[str, Any]:
        """GET ``url`` (as built by :func:`query_url` or :func:`range_url`): its data."""
        if self._session is None:
            raise RuntimeError("PrometheusApi is used outside its async context")
        where = f"prometheus {self.base_url}"
        try:
            async with self._session.get(
                URL(url, encoded=True),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                status = resp.status
        except TimeoutError as exc:
            raise PrometheusUnavailable(f"{where}: timed out after {self.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise PrometheusUnavailable(f"{where}: {type(exc).__name__}: {exc}") from exc
        try:
            return parse_response(status, body)
        except PrometheusError as exc:
            raise type(exc)(f"{where}: {exc}") from None

    async def query(self, promql: str, at: float | None = None) -> dict[str, Any]:
        return await self.get(query_url(self.base_url, promql, at))

    async def query_range(
        self, promql: str, start: float, end: float, step: float
    ) -> dict[str, Any]:
        return await self.get(range_url(self.base_url, promql, start, end, step))


def raise_first_error(results: Sequence[object]) -> None:
    """Raise the first error among ``gather(..., return_exceptions=True)`` results, a final
    one before a retriable one (a retry would meet it again)."""
    errors = [r for r in results if isinstance(r, BaseException)]
    for err in errors:
        if not getattr(err, "retriable", False):
            raise err
    if errors:
        raise errors[0]


def sample(point: Sequence[Any]) -> list[Any]:
    """A ``[time, "value"]`` pair as JSON: the value a number, or the string Prometheus sent
    when it is not finite ("NaN", "+Inf", "-Inf"), which JSON cannot carry as a number."""
    at, raw = point[0], str(point[1])
    try:
        value = float(raw)
    except ValueError:
        return [at, raw]
    return [at, value if math.isfinite(value) else raw]


def _points(item: Mapping[str, Any]) -> list[list[Any]]:
    """A series' samples: a matrix series' ``values``, a vector sample's one ``value``."""
    if "values" in item:
        return [sample(p) for p in item["values"] or []]
    return [sample(item["value"])] if item.get("value") else []


def _latest(values: Sequence[Sequence[Any]]) -> float:
    value = values[-1][1] if values else None
    return value if isinstance(value, float) else -math.inf


def shape(
    data: Mapping[str, Any], max_series: int, max_points: int, budget: int | None = None
) -> dict[str, Any]:
    """A query's ``data`` as bounded JSON: at most ``max_series`` series, the highest latest
    value first (then by labels), each with at most its ``max_points`` latest points, and no
    more than ``budget`` points in all; ``total_series``, ``points`` (a range series' count
    before the cut) and ``truncated`` say what was left out."""
    kind = str(data.get("resultType"))
    result = data.get("result")
    shaped: dict[str, Any] = {"result_type": kind}
    if kind in ("scalar", "string"):
        shaped["value"] = sample(result) if isinstance(result, list) and len(result) == 2 else None
        shaped["truncated"] = False
    else:
        items = result if isinstance(result, list) else []
        series = [(dict(item.get("metric") or {}), _points(item)) for item in items]
        series.sort(key=lambda s: (-_latest(s[1]), sorted(s[0].items())))
        left = budget if budget is not None else max_series * max_points
        kept: list[dict[str, Any]] = []
        for metric, values in series[:max_series]:
            room = min(max_points, left)
            if room <= 0:
                break
            left -= min(room, len(values))
            if kind == "vector":
                kept.append({"metric": metric, "value": values[-1] if values else None})
            else:
                kept.append({"metric": metric, "points": len(values), "values": values[-room:]})
        cut = len(kept) < len(series) or any(
            len(k["values"]) < k["points"] for k in kept if "points" in k
        )
        shaped.update(total_series=len(series), truncated=cut, series=kept)
    if data.get("warnings"):
        shaped["warnings"] = list(data["warnings"])
    return shaped
