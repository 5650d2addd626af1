"""``sevpipe replay``: print the log, as JSON lines or a table.

A record that is not a valid envelope (a foreign producer's naive time, bytes that are not
JSON) is printed as it is stored, marked, never a traceback: replay is how such a record is
found in the first place.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC
from typing import TextIO

import orjson
from pydantic import ValidationError

from eventlog import Record


def _raw_line(record: Record) -> str:
    try:
        orjson.loads(record.raw)
        return record.raw.decode()
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        return orjson.dumps(
            {
                "undecodable": True,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "value_base64": base64.b64encode(record.raw).decode(),
            }
        ).decode()


async def write_jsonl(records: AsyncIterator[Record], out: TextIO) -> int:
    count = 0
    async for record in records:
        try:
            out.write(record.envelope.model_dump_json())
        except ValidationError:
            out.write(_raw_line(record))
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


def _row(record: Record) -> str:
    try:
        env = record.envelope
    except ValidationError as exc:
        problem = f"{exc.error_count()} error(s): {exc.errors(include_url=False)[0]['msg']}"
        return (
            f"{record.offset:>8}  {'-':<29}  {record.topic:<22}  {'(not an envelope)':<22}  "
            f"{record.key}  {problem}\n"
        )
    time = env.time.astimezone(UTC).isoformat(timespec="milliseconds")
    return (
        f"{record.offset:>8}  {time:<29}  {record.topic:<22}  {env.type:<22}  "
        f"{env.subject}  {_summary(record)}\n"
    )


async def write_table(records: AsyncIterator[Record], out: TextIO) -> int:
    count = 0
    out.write(f"{'OFFSET':>8}  {'TIME':<29}  {'TOPIC':<22}  {'TYPE':<22}  SUBJECT / SUMMARY\n")
    async for record in records:
        out.write(_row(record))
        count += 1
    return count
