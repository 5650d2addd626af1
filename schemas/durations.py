"""Durations and times as people write them, in YAML, env and on the command line.

One grammar everywhere: ``1h``, ``30m``, ``1h30m``, ``500ms``, ``2d``, ``1w``, a number of
seconds (``90``), or ISO 8601 (``PT2H``). Policy fields use ``Duration`` (a ``timedelta``),
settings kept in seconds use ``Seconds`` (a ``float``), and ``--since``/``--until`` use
``parse_time``: a duration ago, or an ISO 8601 time.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final

from pydantic import (
    AfterValidator,
    BeforeValidator,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
)

_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
# A leading "-" is accepted here so that "-5m" is reported as negative, not as unreadable.
_WHOLE: Final = re.compile(r"-?(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_SECONDS: Final = re.compile(r"-?\d+(?:\.\d+)?")
_HELP: Final = 'expected a duration like "1h", "30m", "1h30m" or a number of seconds'
_ISO_DURATION: Final = TypeAdapter(timedelta)


def _is_iso_duration(text: str) -> bool:
    return text.upper().startswith(("P", "-P"))


def _before(value: object) -> object:
    """Turn our forms into a timedelta; anything else goes on to pydantic (ISO 8601)."""
    if isinstance(value, bool):  # YAML's yes/no are bools, and bool is an int
        # pydantic reports ValueError as a validation error; a TypeError would escape it.
        raise ValueError(_HELP)  # noqa: TRY004
    if isinstance(value, int | float):
        return _seconds(float(value))
    if not isinstance(value, str):
        return value
    text = value.strip()
    if _SECONDS.fullmatch(text):
        return _seconds(float(text))
    if _WHOLE.fullmatch(text):
        sign = -1 if text.startswith("-") else 1
        return _seconds(sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text)))
    if _is_iso_duration(text):
        return text
    raise ValueError(_HELP)


def _seconds(seconds: float) -> timedelta:
    if not math.isfinite(seconds):
        raise ValueError(_HELP)
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError("duration too long") from None


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("a duration must not be negative")
    return value


def parse_duration(value: str | float) -> timedelta:
    """A non-negative duration in any of the forms above; ``ValueError`` saying why not."""
    parsed = _before(value)
    if isinstance(parsed, str):
        try:
            parsed = _ISO_DURATION.validate_python(parsed)
        except ValidationError:
            raise ValueError(_HELP) from None
    if not isinstance(parsed, timedelta):  # only reachable through a mistyped call
        raise TypeError(f"a duration is a str or a number, not {type(value).__name__}")
    return _not_negative(parsed)


def format_duration(value: timedelta) -> str:
    """The shortest of our own forms: ``1h``, ``1h30m``, ``0s``, ``1.5s``."""
    total = value.total_seconds()
    if total < 0:
        return f"{total:g}"
    if not total.is_integer():
        return f"{total!r}s"
    seconds = int(total)
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = int(_UNIT_SECONDS[unit])
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _to_seconds(value: object) -> object:
    if isinstance(value, str | int | float):  # bool included: parse_duration refuses it
        return parse_duration(value).total_seconds()
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(_before),
    AfterValidator(_not_negative),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A non-negative ``timedelta``; JSON output is the short form (``1h30m``)."""

Seconds = Annotated[float, BeforeValidator(_to_seconds)]
"""A non-negative number of seconds given in any duration form (``10``, ``10s``, ``1m``)."""


def parse_time(value: str, *, now: datetime | None = None) -> datetime:
    """A point in time: a duration ago (``90m``, ``1h30m``, ``PT2H``) or an ISO 8601 time
    (UTC when it has no offset). A bare number is refused: seconds, or a compact date?"""
    text = value.strip()
    if _WHOLE.fullmatch(text) or _is_iso_duration(text):
        try:
            ago = parse_duration(text)
        except ValueError as exc:
            raise ValueError(f"invalid time {value!r}: {exc}") from None
        return (now or datetime.now(UTC)) - ago
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"invalid time {value!r}: use a duration like 90m, 1h30m, 7d or an ISO 8601 time"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
