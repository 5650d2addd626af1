"""The actions book on the embedded store's SQLite file (``EmbeddedStore`` mixes it in)."""

from __future__ import annotations

import sqlite3
from abc import abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from schemas import TOPIC_ACTIONS
from schemas.actions import ActionEventData, action_envelope
from store.actions import (
    ActionNotFound,
    ActionQuery,
    DecisionRequest,
    decide,
    recordable,
)

T = TypeVar("T")

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS actions (
    action_id    TEXT PRIMARY KEY,
    incident_id  TEXT NOT NULL,
    state        TEXT NOT NULL,
    expires_ms   INTEGER,
    updated_ms   INTEGER NOT NULL,
    doc          BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_by_incident ON actions (incident_id, updated_ms);
CREATE INDEX IF NOT EXISTS actions_by_update ON actions (updated_ms);
CREATE INDEX IF NOT EXISTS actions_awaiting ON actions (expires_ms)
    WHERE state = 'awaiting_approval';
"""


def _ms(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)


def row_of(data: ActionEventData) -> tuple[Any, ...]:
    """The columns of ``data`` (expiry only while it waits, so the sweep's index stays small)."""
    expires = data.expires_at if data.state == "awaiting_approval" else None
    updated = data.decided_at or datetime.now(UTC)
    return (
        data.action_id,
        data.incident_id,
        data.state,
        _ms(expires),
        _ms(updated),
        data.model_dump_json().encode(),
    )


def _put(conn: sqlite3.Connection, data: ActionEventData) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO actions"
        " (action_id, incident_id, state, expires_ms, updated_ms, doc) VALUES (?, ?, ?, ?, ?, ?)",
        row_of(data),
    )


def _get(conn: sqlite3.Connection, action_id: str) -> ActionEventData | None:
    row = conn.execute("SELECT doc FROM actions WHERE action_id = ?", (action_id,)).fetchone()
    return ActionEventData.model_validate_json(row[0]) if row else None


class EmbeddedActions:
    @abstractmethod
    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T: ...

    async def record_action(self, data: ActionEventData) -> ActionEventData:
        def write(conn: sqlite3.Connection) -> ActionEventData:
            stored = _get(conn, data.action_id)
            if stored is not None and not recordable(stored.state, data.state):
                return stored
            _put(conn, data)
            return data

        return await self._run(write, write=True)

    async def get_action(self, action_id: str) -> ActionEventData | None:
        return await self._run(lambda conn: _get(conn, action_id))

    async def list_actions(self, query: ActionQuery) -> list[ActionEventData]:
        sql = "SELECT doc FROM actions WHERE 1 = 1"
        args: list[object] = []
        if query.incident_id is not None:
            sql += " AND incident_id = ?"
            args.append(query.incident_id)
        if query.state is not None:
            sql += " AND state = ?"
            args.append(query.state)
        sql += " ORDER BY updated_ms DESC, action_id DESC LIMIT ?"
        args.append(query.limit)

        def select(conn: sqlite3.Connection) -> list[ActionEventData]:
            return [ActionEventData.model_validate_json(r[0]) for r in conn.execute(sql, args)]

        return await self._run(select)

    async def due_approvals(self, now: datetime, limit: int = 100) -> list[str]:
        def select(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT action_id FROM actions WHERE state = 'awaiting_approval'"
                " AND expires_ms <= ? ORDER BY expires_ms LIMIT ?",
                (_ms(now), limit),
            )
            return [r[0] for r in rows]

        return await self._run(select)

    async def decide_action(
        self, action_id: str, request: DecisionRequest, *, source: str
    ) -> tuple[ActionEventData, bool]:
        def write(conn: sqlite3.Connection) -> tuple[ActionEventData, bool]:
            current = _get(conn, action_id)
            if current is None:
                raise ActionNotFound(f"no action {action_id}")
            decided = decide(current, request)
            if decided is None:
                return current, True
            _put(conn, decided)
            env = action_envelope(decided, source=source, at=request.at)
            conn.execute(
                "INSERT OR IGNORE INTO incident_events (incident_id, topic, event_id, envelope)"
                " VALUES (?, ?, ?, ?)",
                (decided.incident_id, TOPIC_ACTIONS, env.id, env.json_bytes()),
            )
            return decided, False

        return await self._run(write, write=True)
