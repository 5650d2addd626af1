"""Durations as people write them in YAML: ``1h``, ``30m``, ``1h30m``, ``90`` (seconds)."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Final

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
# A leading "-" is accepted here so that "-5m" is reported as negative, not as unreadable.
_WHOLE: Final = re.compile(r"-?(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_SECONDS: Final = re.compile(r"-?\d+(?:\.\d+)?")
_HELP: Final = 'expected a duration like "1h", "30m", "1h30m" or a number of seconds'


def parse_duration(value: object) -> object:
    """Turn the YAML forms into a timedelta; anything else goes on to pydantic (ISO 8601)."""
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
    if text.upper().startswith(("P", "-P")):
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


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    AfterValidator(_not_negative),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
