"""The actions book on PostgreSQL (``PostgresStore`` mixes it in); schema in 0004_actions.sql."""

from __future__ import annotations

from abc import abstractmethod
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import asyncpg

from schemas import TOPIC_ACTIONS
from schemas.actions import ActionEventData, action_envelope
from store.actions import (
    ActionNotFound,
    ActionQuery,
    DecisionRequest,
    decide,
    recordable,
)
from store.actions_embedded import row_of

_UPSERT = (
    "INSERT INTO actions (action_id, incident_id, state, expires_ms, updated_ms, doc)"
    " VALUES ($1, $2, $3, $4, $5, $6::json) ON CONFLICT (action_id) DO UPDATE SET"
    " incident_id = excluded.incident_id, state = excluded.state,"
    " expires_ms = excluded.expires_ms, updated_ms = excluded.updated_ms, doc = excluded.doc"
)


def _args(data: ActionEventData) -> tuple[Any, ...]:
    *cols, doc = row_of(data)
    return (*cols, doc.decode())


async def _locked(conn: asyncpg.Connection, action_id: str) -> ActionEventData | None:
    doc = await conn.fetchval("SELECT doc FROM actions WHERE action_id = $1 FOR UPDATE", action_id)
    return None if doc is None else ActionEventData.model_validate_json(doc)


class PostgresActions:
    @abstractmethod
    def _connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

    async def record_action(self, data: ActionEventData) -> ActionEventData:
        async with self._connection() as conn, conn.transaction():
            stored = await _locked(conn, data.action_id)
            if stored is not None and not recordable(stored.state, data.state):
                return stored
            await conn.execute(_UPSERT, *_args(data))
        return data

    async def get_action(self, action_id: str) -> ActionEventData | None:
        async with self._connection() as conn:
            doc = await conn.fetchval("SELECT doc FROM actions WHERE action_id = $1", action_id)
        return None if doc is None else ActionEventData.model_validate_json(doc)

    async def list_actions(self, query: ActionQuery) -> list[ActionEventData]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT doc FROM actions WHERE ($1::text IS NULL OR incident_id = $1)"
                " AND ($2::text IS NULL OR state = $2)"
                " ORDER BY updated_ms DESC, action_id DESC LIMIT $3",
                query.incident_id,
                query.state,
                query.limit,
            )
        return [ActionEventData.model_validate_json(r[0]) for r in rows]

    async def due_approvals(self, now: datetime, limit: int = 100) -> list[str]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT action_id FROM actions WHERE state = 'awaiting_approval'"
                " AND expires_ms <= $1 ORDER BY expires_ms LIMIT $2",
                int(now.timestamp() * 1000),
                limit,
            )
        return [r[0] for r in rows]

    async def decide_action(
        self, action_id: str, request: DecisionRequest, *, source: str
    ) -> tuple[ActionEventData, bool]:
        async with self._connection() as conn, conn.transaction():
            current = await _locked(conn, action_id)
            if current is None:
                raise ActionNotFound(f"no action {action_id}")
            decided = decide(current, request)
            if decided is None:
                return current, True
            await conn.execute(_UPSERT, *_args(decided))
            env = action_envelope(decided, source=source, at=request.at)
            await conn.execute(
                "INSERT INTO incident_events (incident_id, topic, event_id, envelope)"
                " VALUES ($1, $2, $3, $4::json) ON CONFLICT (event_id) DO NOTHING",
                decided.incident_id,
                TOPIC_ACTIONS,
                env.id,
                env.model_dump_json(),
            )
        return decided, False
