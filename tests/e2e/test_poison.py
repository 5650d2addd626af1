"""Poison first, then normal traffic: ``sevpipe run`` dead-letters what it cannot process and
goes on, on both backend sets.

The poison is what a real outage brings: a webhook whose groupKey and labels hold NUL (valid
JSON; PostgreSQL text refuses NUL, and once crash-looped every classifier on it), a record a
foreign producer put on the log with a naive time, and an alert event whose payload is not
an alert. What happened is read back from the API, the log and ``sevpipe deadletter``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from eventlog import EmbeddedLog, EventLog, KafkaLog
from schemas import Envelope, new_event_id

from .backends import Backend
from .harness import TOPIC_ALERTS, Launcher, Server, group_webhook, incidents_with_alerts, sevpipe
from .test_deadletter_cli import append_naive

pytestmark = pytest.mark.e2e

GROUPS = 12
DEADLINE = 60.0
NUL_KEY = '{}:{service="pay\x00ments"}'


def open_log(backend: Backend, data_dir: Path) -> EventLog:
    if backend.embedded:
        return EmbeddedLog(data_dir / "events.db")
    return KafkaLog(backend.env["SEVPIPE_KAFKA_BOOTSTRAP"], topic_prefix=backend.topic_prefix)


async def append_invalid(backend: Backend, data_dir: Path) -> str:
    """An ``alert.firing`` envelope whose payload is no alert (a buggy producer); its id."""
    log = open_log(backend, data_dir)
    await log.start()
    try:
        bad = Envelope(
            id=new_event_id(),
            type="alert.firing",
            source="/foreign",
            time=datetime.now(UTC),
            subject="{}:{}",
            data={"status": "firing", "labels": "not a map"},
        )
        await log.append(TOPIC_ALERTS, [bad])
    finally:
        await log.close()
    return bad.id


def alert(fp: str, service: str, **labels: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": "Errors", "service": service, **labels},
        "annotations": {"summary": f"{service} errors"},
        "startsAt": "2026-03-01T12:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": fp,
    }


async def post(session: aiohttp.ClientSession, server: Server, body: dict[str, Any]) -> None:
    headers = {"Content-Type": "application/json"}
    async with session.post(server.alerts_url, data=orjson.dumps(body), headers=headers) as resp:
        assert resp.status == 200, await resp.text()


def letters(backend: Backend, data_dir: Path) -> list[dict[str, Any]]:
    done = sevpipe(
        "deadletter", "list", "--format", "json", "--data-dir", str(data_dir), env=backend.env
    )
    assert done.returncode == 0, done.stderr
    found: list[dict[str, Any]] = orjson.loads(done.stdout)
    return found


async def test_poison_is_dead_lettered_and_every_normal_incident_still_forms(
    backend: Backend, launcher: Launcher, data_dir: Path
) -> None:
    server = await asyncio.to_thread(launcher.start, data_dir, env=backend.env)
    naive_id = await asyncio.to_thread(append_naive, backend, data_dir)
    invalid_id = await append_invalid(backend, data_dir)
    async with aiohttp.ClientSession() as session:
        nul = group_webhook(
            NUL_KEY, "pay\x00ments", "Errors", [alert("f-nul", "pay\x00ments", pod="a\x00b")]
        )
        await post(session, server, nul)
        want = {NUL_KEY: {"f-nul"}}
        for g in range(GROUPS):
            key = f'{{}}:{{service="svc-{g:02d}"}}'
            alerts = [alert(f"f{g:02d}-{n}", f"svc-{g:02d}") for n in range(3)]
            await post(session, server, group_webhook(key, f"svc-{g:02d}", "Errors", alerts))
            want[key] = {a["fingerprint"] for a in alerts}

        async with asyncio.timeout(DEADLINE):
            while True:
                incidents = await incidents_with_alerts(session, server.base_url)
                got = {i["key"]: {a["fingerprint"] for a in i["alerts"]} for i in incidents}
                if got == want:
                    break
                await asyncio.sleep(0.1)

        # NUL is kept, not mangled: the incident's key and the alert's label round-trip.
        [paid] = [i for i in incidents if i["key"] == NUL_KEY]
        assert paid["alerts"][0]["labels"]["pod"] == "a\x00b"
        assert len(incidents) == GROUPS + 1  # one incident per group, none twice

        async with asyncio.timeout(DEADLINE):
            while True:
                found = {x["original"]["event_id"]: x for x in letters(backend, data_dir)}
                if {naive_id, invalid_id} <= set(found):
                    break
                await asyncio.sleep(0.2)
        assert len(found) == 2, found  # nothing else was poison
        assert found[naive_id]["reason"] == "undecodable"
        assert found[invalid_id]["reason"] == "invalid"
        assert {x["stage"] for x in found.values()} == {"classifier"}

        async with session.get(f"{server.base_url}/metrics") as resp:
            metrics = await resp.text()
        assert 'sevpipe_deadletters_total{reason="undecodable",stage="classifier"} 1.0' in metrics
        async with session.get(f"{server.base_url}/readyz") as resp:
            assert resp.status == 200
            stages = (await resp.json())["stages"]
            assert stages == {"classifier": "consuming", "comms": "consuming"}

        # Retry re-appends the record; the stage refuses it again, as a new dead letter.
        done = sevpipe(
            "deadletter",
            "retry",
            found[invalid_id]["id"],
            "--data-dir",
            str(data_dir),
            env=backend.env,
        )
        assert done.returncode == 0, done.stderr
        async with asyncio.timeout(DEADLINE):
            while True:
                again = [
                    x for x in letters(backend, data_dir) if x["original"]["event_id"] == invalid_id
                ]
                if len(again) == 2:
                    break
                await asyncio.sleep(0.2)
        assert again[0]["original"]["offset"] != again[1]["original"]["offset"]

    assert server.proc.poll() is None, "no stage may exit over a poison record"
    assert server.stop() == 0, server.stderr()
