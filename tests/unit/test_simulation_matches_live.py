"""A backtest's simulation decides exactly what the live stage decides over the same alerts.

The live stage folds batches of any size into state a store would hold; a backtest folds one
alert at a time in memory, and under the same grouping checks each alert's novelty once for
both policies. A random stream with repeats, redeliveries, late and out-of-order alerts,
resolves and reopenings is fed to both, and every incident must come out the same.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from classifier.backtest import alert_input, simulate
from classifier.grouping import incident_key
from classifier.lifecycle import AlertInput
from classifier.policy import Policy
from classifier.stage import decide
from eventlog import EmbeddedLog, Record
from schemas import TOPIC_ALERTS, AlertEventData, Envelope, GroupContext, event_type_for
from schemas.incident_state import GroupState
from schemas.incidents import Incident

T0 = datetime(2026, 5, 1, tzinfo=UTC)
SERVICES = ("checkout", "search", "login")
IMPACTS = ("", "", "performance", "error_rate", "outage", "minor")

SAME_GROUPING = Policy()
SHORT_WINDOWS = Policy.model_validate({"reopen_window": "2m"})
BY_SERVICE = Policy.model_validate({"group_by": ["service"], "reopen_window": "10m"})
WITH_GRACE = Policy.model_validate({"resolve_grace": "3m"})


def stream(seed: int, n: int) -> list[Envelope]:
    """Alert events as ingest appends them, then some delivered again later."""
    rng = random.Random(seed)
    at = T0
    events: list[Envelope] = []
    for i in range(n):
        at += timedelta(seconds=rng.choice((1, 5, 30, 90, 400, 3600)))
        n_fp = rng.randrange(6)
        fp, service = f"fp{n_fp}", SERVICES[n_fp % 3]
        status = "resolved" if rng.random() < 0.5 else "firing"
        starts = T0 + timedelta(minutes=rng.randrange(4) + i // 40 * 10)
        labels = {"alertname": f"A{fp}", "service": service, "pod": fp}
        impact = rng.choice(IMPACTS)
        if impact:
            labels["impact"] = impact
        annotations = {"user_impact_pct": str(rng.choice((5, 40, 95)))}
        data = AlertEventData(
            status=status,
            fingerprint=fp,
            alertname=labels["alertname"],
            labels=labels,
            annotations=annotations,
            starts_at=starts,
            ends_at=at if status == "resolved" else None,
            group=GroupContext(receiver="r", group_key=f"{{}}:{{team={n_fp % 2}}}"),
            received_at=at,
        )
        env = Envelope.new(event_type_for(data.status), "/test", data.group.group_key, data)
        events.append(env.model_copy(update={"time": at}))
    return events


def live(inputs: list[AlertInput], policy: Policy, rng: random.Random) -> dict[str, Incident]:
    """The live stage's decisions: batches of random sizes, state kept between them, and
    some batches delivered twice (at-least-once)."""
    groups: dict[str, GroupState] = {}
    incidents: dict[str, Incident] = {}
    i = 0
    while i < len(inputs):
        size = rng.choice((1, 3, 17, 60))
        batch = inputs[i : i + size]
        for delivery in range(2 if rng.random() < 0.2 else 1):
            for item in batch:
                key = incident_key(item.data, policy)
                groups.setdefault(key, GroupState(key))
            decided = decide(batch, groups, policy)
            for write in decided.incidents:
                incidents[write.incident.id] = write.incident
            for group in decided.groups:
                group.clear_changes()
            assert delivery == 0 or not decided.incidents, "a redelivered batch changed nothing"
        i += size
    return incidents


def decided(incident: Incident, *, status: bool) -> dict[str, Any]:
    """What a backtest compares and reports, and the summary the fold kept."""
    out = incident.model_dump(
        include={"id", "key", "severity", "reasons", "counts", "opened_at", "title"}
    )
    if status:
        # With a grace period, a quiet group's incident resolves live when the log's clock
        # passes its deadline; a simulation decides that only at the group's next alert.
        out |= incident.model_dump(include={"status", "resolved_at"})
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest.mark.parametrize(
    ("current", "candidate"),
    [(SAME_GROUPING, SHORT_WINDOWS), (SAME_GROUPING, BY_SERVICE), (WITH_GRACE, SAME_GROUPING)],
    ids=["shared-marks", "other-grouping", "grace"],
)
async def test_the_simulation_decides_every_incident_as_the_live_stage(
    tmp_path: Path, seed: int, current: Policy, candidate: Policy
) -> None:
    events = stream(seed, 600)
    async with EmbeddedLog(tmp_path / "events.db") as log:
        await log.append(TOPIC_ALERTS, events)
        # A redelivery and a late duplicate in the log itself, as a relay retry leaves them.
        await log.append(TOPIC_ALERTS, [events[10], events[300]])
        inputs = [
            item
            for record in [r async for r in log.read([TOPIC_ALERTS])]
            if (item := alert_input(_check(record))) is not None
        ]
        done = await simulate(log, current, candidate)

    assert done.alerts == len(inputs) == 602
    rng = random.Random(seed)
    for policy, simulated in ((current, done.current), (candidate, done.candidate)):
        expected = live(inputs, policy, rng)
        status = policy.resolve_grace == timedelta(0)
        assert len(expected) > 10  # the stream opens, resolves and reopens many incidents
        assert {k: decided(v, status=status) for k, v in simulated.items()} == {
            k: decided(v, status=status) for k, v in expected.items()
        }


def _check(record: Record) -> Record:
    assert record.topic == TOPIC_ALERTS
    return record
