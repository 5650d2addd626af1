"""``sevpipe replay``: print the log, as JSON lines or a table."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TextIO

from eventlog import Record

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: str, *, now: datetime | None = None) -> datetime:
    """``2h``/``30m``/``7d`` ago, or an ISO 8601 / RFC 3339 time (UTC if no offset)."""
    value = value.strip()
    match = _DURATION.match(value)
    if match:
        amount, unit = match.groups()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: float(amount)})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"invalid time {value!r}: use a duration like 2h, 30m, 7d or an ISO time"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def write_jsonl(records: AsyncIterator[Record], out: TextIO) -> int:
    count = 0
    async for record in records:
        out.write(record.envelope.model_dump_json())
        out.write("\n")
        count += 1
    return count


def _summary(record: Record) -> str:
    data = record.envelope.data
    labels = data.get("labels")
    if isinstance(labels, dict):
        name = labels.get("alertname", "")
        return f"{name} {data.get('fingerprint', '')}".strip()
    return str(data.get("title") or data.get("status") or "")


async def write_table(records: AsyncIterator[Record], out: TextIO) -> int:
    count = 0
    out.write(f"{'OFFSET':>8}  {'TIME':<29}  {'TOPIC':<22}  {'TYPE':<22}  SUBJECT / SUMMARY\n")
    async for record in records:
        env = record.envelope
        time = env.time.astimezone(UTC).isoformat(timespec="milliseconds")
        out.write(
            f"{record.offset:>8}  {time:<29}  {record.topic:<22}  {env.type:<22}  "
            f"{env.subject}  {_summary(record)}\n"
        )
        count += 1
    return count
