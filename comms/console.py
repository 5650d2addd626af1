"""The console channel: every message as one JSON line in the data dir's outbox, and a log line.

It stands in for every route whose channel is not configured, so the embedded default shows
exactly what would have been sent, to whom, and when. ``check`` reads the outbox back, so a
message is in it once whatever crashes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import orjson

from comms.channel import Message, Outcome

log = logging.getLogger(__name__)

TAIL_BYTES = 8 * 1024 * 1024
"""How much of the outbox ``check`` reads back: a crashed send is among the last lines."""


class ConsoleChannel:
    name = "console"

    def __init__(self, outbox: Path) -> None:
        self.path = outbox
        self._lock = asyncio.Lock()

    async def send(self, message: Message, thread: Outcome | None) -> Outcome:
        line = {
            "at": datetime.now(UTC).isoformat(),
            "effect_id": message.effect_id,
            "incident_id": message.incident.id,
            "severity": message.incident.severity,
            "kind": message.kind,
            "route": message.route,
            "audience": message.audience,
            "public": message.public,
            "thread": thread.get("effect_id") if thread else None,
            "subject": message.subject,
            "text": message.text,
        }
        async with self._lock:
            await asyncio.to_thread(self._append, orjson.dumps(line) + b"\n")
        log.info("notify %s %s: %s", message.route, message.audience, message.subject)
        return {"outbox": str(self.path), "effect_id": message.effect_id}

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    async def check(self, message: Message, thread: Outcome | None) -> Outcome | None:
        found = await asyncio.to_thread(self._find, message.effect_id)
        return {"outbox": str(self.path), "effect_id": message.effect_id} if found else None

    def _find(self, effect_id: str) -> bool:
        try:
            with self.path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - TAIL_BYTES))
                tail = f.read()
        except FileNotFoundError:
            return False
        needle = orjson.dumps(effect_id)
        return any(
            needle in line and orjson.loads(line).get("effect_id") == effect_id
            for line in tail.splitlines()
            if line.startswith(b"{")
        )

    async def close(self) -> None:
        return
