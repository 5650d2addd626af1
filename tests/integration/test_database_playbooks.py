"""``redis.flushdb`` through the actions stage (live, embedded backends, the real classifier)
on a Redis of the test's own: a playbook step in mode ``approve`` flushes nothing until a
person approves, then flushes once, whatever is delivered again. (That a step may not make it
``auto`` is the playbook loader's rule: tests/unit/test_database_catalogue.py.)"""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis
from incident_support import T0, alert_json, append_webhook, drain, new_stage, webhook
from test_actions_stage import GK, by_step, decide, open_actions
from test_redis_actions import db_url, fill, inventory_for, own_redis

from actions.databases import database_catalogue
from actions.guard import Guard, Limits
from actions.playbooks import Playbooks
from actions.redis_flush import MARKER_PREFIX
from actions.stage import ActionsStage
from schemas import TOPIC_ALERTS
from schemas.actions import ActionEventData

__all__ = ["own_redis"]  # the fixture, by the name the test asks for

DB = 11
PLAYBOOKS = Playbooks.model_validate(
    {
        "playbooks": [
            {
                "name": "cache-full",
                "match": {"min_severity": "SEV-1", "impacts": ["outage"]},
                "steps": [
                    {
                        "id": "info",
                        "action": "redis.info",
                        "target": {"kind": "Redis", "name": "origin-cache"},
                        "mode": "auto",
                    },
                    {
                        "id": "flush",
                        "action": "redis.flushdb",
                        "target": {"kind": "Redis", "name": "origin-cache"},
                        "mode": "approve",
                    },
                ],
            }
        ]
    }
)


async def test_flushdb_waits_for_approval_then_flushes_once(own_redis: str, tmp_path: Path) -> None:
    url = db_url(own_redis, DB)
    inventory = inventory_for(tmp_path, url)
    cat = database_catalogue(inventory)
    await fill(own_redis, DB, 12)
    async with open_actions(tmp_path) as a, aioredis.from_url(url) as conn:

        def stage() -> ActionsStage:
            return ActionsStage(
                a.log,
                a.store,
                ledger=a.ledger,
                catalogue=cat,
                playbooks=PLAYBOOKS,
                inventory=inventory,
                guard=Guard(a.coordinator, Limits(), inventory),
                live=True,
            )

        body = webhook(GK, alert_json("c1", starts=T0, impact="outage", service="origin"))
        await append_webhook(a.log, body)
        await drain(new_stage(a.log, a.store), a.log.subscribe([TOPIC_ALERTS], "cls"))
        await a.run(stage())
        assert await conn.dbsize() == 12  # asked, not run
        asked = await a.events()
        assert by_step(asked) == {
            "info": ["planned", "started", "succeeded"],
            "flush": ["awaiting_approval"],
        }
        [(_, waiting)] = [(t, d) for t, d in asked if d.step == "flush"]
        assert [r.body["command"][0] for r in waiting.requests] == [
            "DBSIZE",
            "MULTI",
            "FLUSHDB",
            "SET",
            "EXEC",
            "DBSIZE",
        ]

        await decide(a, "flush", "approved")
        await a.run(stage(), commit=False)
        assert await conn.dbsize() == 1  # the marker
        await fill(own_redis, DB, 5, "refilled")
        await a.run(stage())  # the approval delivered again: found done, not flushed again
        assert await conn.dbsize() == 6
        events = await a.events()
        [done] = [d for t, d in events if d.step == "flush" and t == "action.succeeded"]
        assert isinstance(done, ActionEventData)
        assert done.result["keys_before"] == 12
        assert done.result["marker"] == f"{MARKER_PREFIX}{done.action_id}"
        assert done.actor == "alice"
        await conn.flushdb()
