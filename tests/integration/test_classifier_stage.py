"""The classifier stage on a real EmbeddedLog and EmbeddedStore: alerts in, incidents out.

Alert events are made the way ingest makes them (normalise + Envelope.new, with the
receiver's dedup keys). Crashes are simulated by closing the backends at the point under
test, without the steps that would follow, and opening them again on the same files.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from incident_support import (
    T0,
    Backends,
    alert_json,
    alerts_of,
    all_incidents,
    append_webhook,
    by_key,
    drain,
    event_incident,
    incident_events,
    new_stage,
    open_backends,
    records,
    snapshot,
    webhook,
)

from classifier.backtest import backtest
from classifier.lifecycle import AlertInput, Change
from classifier.people import set_severity
from classifier.policy import default_policy, load_policy
from classifier.rebuild import rebuild_store
from classifier.stage import CONSUMER_GROUP, decide, fingerprints
from runtime.relay import relay_outbox
from schemas import TOPIC_ALERTS, TOPIC_INCIDENTS, AlertEventData, Envelope
from schemas.deadletter import TOPIC_DEADLETTER
from schemas.incidents import Incident
from store import EmbeddedStore, GroupState, IncidentWrite, OutboxEvent

GK_CHECKOUT = '{}:{service="checkout"}'
GK_SEARCH = '{}:{service="search"}'
POLL = 0.02
DEADLINE = 10.0


async def wait_for(condition: Any, what: str) -> None:
    """Poll ``condition()`` (async) until true; fail after DEADLINE seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not await condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL)


# -- alerts become incidents ------------------------------------------------------------------


async def test_alerts_open_escalate_and_resolve_an_incident_in_store_and_log(
    tmp_path: Path,
) -> None:
    async with open_backends(tmp_path) as b:
        stage = new_stage(b.log, b.store)
        sub = b.log.subscribe([TOPIC_ALERTS], CONSUMER_GROUP)
        first = await append_webhook(
            b.log,
            webhook(
                GK_CHECKOUT,
                alert_json("fa", service="checkout", severity="critical"),
                alert_json("fb", service="checkout", severity="warning"),
            ),
        )
        assert await drain(stage, sub) == 2

        [inc] = await all_incidents(b.store)
        assert inc.key == GK_CHECKOUT
        assert (inc.status, inc.severity) == ("open", "SEV-1")  # critical -> SEV-1
        assert [a.fingerprint for a in await alerts_of(b.store, inc.id)] == ["fa", "fb"]
        assert (inc.counts.alerts, inc.counts.firing) == (2, 2)
        assert inc.title == "HighErrorRate: HighErrorRate fa"

        await append_webhook(
            b.log, webhook(GK_CHECKOUT, alert_json("fc", service="checkout", impact="outage"))
        )
        await drain(stage, sub)
        await append_webhook(
            b.log,
            webhook(
                GK_CHECKOUT,
                *(alert_json(fp, "resolved", service="checkout") for fp in ("fa", "fb", "fc")),
            ),
        )
        await drain(stage, sub)

        # One event per batch and incident: the two alerts of the first webhook open it
        # together, and the three resolves of the last one are one resolve.
        events = await incident_events(b.log)
        assert [e.type for e in events] == [
            "incident.opened",
            "incident.escalated",
            "incident.resolved",
        ]
        assert {e.subject for e in events} == {inc.id}
        assert events[0].data["cause"] == first[0].id
        assert [event_incident(e).version for e in events] == [1, 2, 3]
        assert [[a["fingerprint"] for a in e.data["alerts"]] for e in events] == [
            ["fa", "fb"],
            ["fc"],
            ["fa", "fb", "fc"],
        ]
        assert event_incident(events[1]).severity == "SEV-0"
        assert "impact outage" in " ".join(event_incident(events[1]).reasons)

        [final] = await all_incidents(b.store)
        assert final == event_incident(events[-1])
        assert (final.status, final.severity) == ("resolved", "SEV-0")
        assert final.counts.model_dump() == {"alerts": 3, "firing": 0, "resolved": 3}
        assert await b.store.timeline(inc.id) == events
        assert await b.store.unrelayed() == []


async def test_policy_group_by_labels_joins_group_keys_into_one_incident(
    tmp_path: Path,
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("group_by: [service]\n", encoding="utf-8")
    policy = load_policy(policy_file)
    async with open_backends(tmp_path) as b:
        stage = new_stage(b.log, b.store, policy)
        sub = b.log.subscribe([TOPIC_ALERTS], CONSUMER_GROUP)
        await append_webhook(b.log, webhook("{}:{a}", alert_json("f1", service="checkout")))
        await append_webhook(b.log, webhook("{}:{b}", alert_json("f2", service="checkout")))
        await append_webhook(b.log, webhook("{}:{a}", alert_json("f3", service="search")))
        await drain(stage, sub)

        keyed = by_key(await all_incidents(b.store))
        assert set(keyed) == {'{service="checkout"}', '{service="search"}'}
        checkout, search = keyed['{service="checkout"}'][0], keyed['{service="search"}'][0]
        assert [a.fingerprint for a in await alerts_of(b.store, checkout.id)] == ["f1", "f2"]
        assert [a.fingerprint for a in await alerts_of(b.store, search.id)] == ["f3"]


async def test_a_malformed_alert_event_is_dead_lettered_and_skipped_by_the_backtest(
    tmp_path: Path,
) -> None:
    async with open_backends(tmp_path) as b:
        stage = new_stage(b.log, b.store)
        bad = Envelope(
            id="01JZZZZZZZZZZZZZZZZZZZZZZZ",
            type="alert.firing",
            source="/elsewhere",
            time=datetime.now(UTC),
            subject=GK_CHECKOUT,
            data={"status": "firing"},
        )
        await b.log.append(TOPIC_ALERTS, [bad])
        await append_webhook(b.log, webhook(GK_CHECKOUT, alert_json("fa", service="checkout")))
        stop = asyncio.Event()
        task = asyncio.create_task(stage.run(stop))
        try:

            async def one_incident() -> bool:
                return len(await all_incidents(b.store)) == 1

            await wait_for(one_incident, "the good alert's incident")
        finally:
            stop.set()
            await asyncio.wait_for(task, DEADLINE)
        [inc] = await all_incidents(b.store)
        assert inc.key == GK_CHECKOUT
        [letter] = await records(b.log, TOPIC_DEADLETTER)
        assert letter.envelope.data["stage"] == "classifier"
        [poison] = [r for r in await records(b.log, TOPIC_ALERTS) if r.envelope.id == bad.id]
        assert letter.envelope.data["original"]["offset"] == poison.offset
        assert letter.envelope.data["reason"] == "invalid"

        # The backtest skips it, and sees the same history as the live stage.
        report = await backtest(b.log, default_policy(), default_policy())
        assert (report.alerts, report.incidents, report.changed) == (1, 1, [])


async def test_the_running_stage_is_woken_by_appends(tmp_path: Path) -> None:
    async with open_backends(tmp_path) as b:
        stage = new_stage(b.log, b.store)
        stop = asyncio.Event()
        task = asyncio.create_task(stage.run(stop))
        try:
            for n in range(5):
                gk = f'{{}}:{{service="svc-{n}"}}'
                await append_webhook(b.log, webhook(gk, alert_json(f"f{n}", service=f"svc-{n}")))

            async def five() -> bool:
                return len(await all_incidents(b.store)) == 5

            await wait_for(five, "five incidents")
        finally:
            stop.set()
            await asyncio.wait_for(task, DEADLINE)
        assert len(await incident_events(b.log)) == 5


# -- redelivery and crashes -------------------------------------------------------------------


async def _three_groups(b: Backends) -> None:
    await append_webhook(
        b.log,
        webhook(
            GK_CHECKOUT,
            alert_json("c1", service="checkout", impact="error_rate"),
            alert_json("c2", service="checkout", user_impact_pct="93%"),
        ),
    )
    await append_webhook(b.log, webhook(GK_SEARCH, alert_json("s1", service="search")))
    await append_webhook(b.log, webhook(GK_SEARCH, alert_json("s1", "resolved", service="search")))
    # A resolve delivered before its firing: the firing was sent before the resolve took
    # effect (its endsAt, T0 + 5 min), so it is late, not the alert firing again.
    early = T0 + timedelta(minutes=1)
    await append_webhook(
        b.log, webhook("{}:{x}", alert_json("x1", "resolved", service="x")), at=early
    )
    await append_webhook(b.log, webhook("{}:{x}", alert_json("x1", service="x")), at=early)


def _assert_no_duplicates(events: list[Envelope]) -> None:
    assert len({e.id for e in events}) == len(events)
    versions = Counter((e.subject, event_incident(e).version) for e in events)
    assert all(n == 1 for n in versions.values()), versions


async def test_processing_the_same_records_twice_changes_nothing(tmp_path: Path) -> None:
    async with open_backends(tmp_path) as b:
        stage = new_stage(b.log, b.store)
        await _three_groups(b)
        alerts = await records(b.log, TOPIC_ALERTS)

        await stage.process(alerts)
        before, log_before = await snapshot(b.store), await incident_events(b.log)
        again = await stage.process(alerts)

        assert again.outbox == []
        assert again.incidents == []
        assert await snapshot(b.store) == before
        assert await incident_events(b.log) == log_before
        assert sorted(i.key for i in await all_incidents(b.store)) == [GK_CHECKOUT, GK_SEARCH]
        _assert_no_duplicates(log_before)


async def test_redelivery_after_a_crash_between_save_and_commit(tmp_path: Path) -> None:
    async with open_backends(tmp_path) as b:
        await _three_groups(b)
        stage = new_stage(b.log, b.store)
        sub = b.log.subscribe([TOPIC_ALERTS], CONSUMER_GROUP)
        processed = await drain(stage, sub, commit=False)  # ... and crash before the commit
        before, log_before = await snapshot(b.store), await incident_events(b.log)
    assert processed == 6

    async with open_backends(tmp_path) as b:
        stage = new_stage(b.log, b.store)
        sub = b.log.subscribe([TOPIC_ALERTS], CONSUMER_GROUP)
        assert await drain(stage, sub) == processed  # redelivered, every one
        assert await snapshot(b.store) == before
        assert await incident_events(b.log) == log_before
        _assert_no_duplicates(log_before)
        # Committed now: nothing is delivered a third time.
        assert await drain(stage, b.log.subscribe([TOPIC_ALERTS], CONSUMER_GROUP)) == 0


@pytest.mark.parametrize("crash", ["after_save", "after_relay"])
async def test_a_crash_around_the_relay_neither_loses_nor_repeats_events(
    tmp_path: Path, crash: str
) -> None:
    async with open_backends(tmp_path) as b:
        await _three_groups(b)
        alerts = await records(b.log, TOPIC_ALERTS)
        inputs = [
            AlertInput(
                r.envelope.id, r.envelope.time, AlertEventData.model_validate(r.envelope.data)
            )
            for r in alerts
        ]
        policy = default_policy()
        wanted = fingerprints(inputs, policy)
        groups = await b.store.load_groups(list(wanted), wanted)
        decided = decide(inputs, groups, policy)
        await b.store.save(decided.groups, decided.incidents, decided.outbox)
        if crash == "after_relay":  # appended, but not yet marked relayed
            envs = [o.envelope for o in decided.outbox]
            await b.log.append(TOPIC_INCIDENTS, envs, dedup_keys=[e.id for e in envs])
        decided_ids = [o.envelope.id for o in decided.outbox]
        before = await snapshot(b.store)
    assert len(decided_ids) == 3  # checkout opened; search opened and resolved

    async with open_backends(tmp_path) as b:
        stage = new_stage(b.log, b.store)
        stop = asyncio.Event()
        task = asyncio.create_task(stage.run(stop))
        try:

            async def relayed_and_caught_up() -> bool:
                if await b.store.unrelayed() or len(await incident_events(b.log)) < 3:
                    return False
                # The alerts were never committed: caught up once the stage has taken them
                # again and committed (a fresh member of its group then gets nothing).
                probe = b.log.subscribe([TOPIC_ALERTS], CONSUMER_GROUP)
                return not await probe.fetch(1, max_wait=0.0)

            await wait_for(relayed_and_caught_up, "the outbox relayed and the alerts redone")
        finally:
            stop.set()
            await asyncio.wait_for(task, DEADLINE)
        events = await incident_events(b.log)
        assert [e.id for e in events] == decided_ids
        assert await snapshot(b.store) == before
        _assert_no_duplicates(events)


async def test_two_replicas_on_the_same_batch_make_each_incident_once(tmp_path: Path) -> None:
    async with (
        open_backends(tmp_path) as b,
        EmbeddedStore(tmp_path / "store.db") as other_store,
    ):
        for n in range(6):
            gk = f'{{}}:{{service="svc-{n}"}}'
            await append_webhook(
                b.log,
                webhook(
                    gk,
                    alert_json(f"a{n}", service=f"svc-{n}", impact="error_rate"),
                    alert_json(f"b{n}", service=f"svc-{n}", impact="outage"),
                ),
            )
        alerts = await records(b.log, TOPIC_ALERTS)
        one, two = new_stage(b.log, b.store), new_stage(b.log, other_store)

        await asyncio.gather(one.process(alerts), two.process(alerts))
        await relay_outbox(b.store, b.log)

        keyed = by_key(await all_incidents(b.store))
        assert len(keyed) == 6
        assert all(len(v) == 1 for v in keyed.values())
        assert all(v[0].counts.alerts == 2 and v[0].severity == "SEV-0" for v in keyed.values())
        events = await incident_events(b.log)
        assert len(events) == 6  # one opened per group, at the severity of both alerts
        _assert_no_duplicates(events)


# -- rebuild ----------------------------------------------------------------------------------


async def _history(b: Backends) -> str:
    """Opens, escalations, resolves, a reopen, a new incident after the window and a severity
    set by hand on an incident that is no longer its group's current one; returns its id."""
    stage = new_stage(b.log, b.store)
    sub = b.log.subscribe([TOPIC_ALERTS], CONSUMER_GROUP)

    async def post(gk: str, *alerts: dict[str, Any], at: datetime) -> None:
        await append_webhook(b.log, webhook(gk, *alerts), at=at)
        await drain(stage, sub)

    svc = {"service": "checkout"}
    await post(GK_CHECKOUT, alert_json("c1", labels=svc, impact="minor"), at=T0)
    await post(
        GK_CHECKOUT, alert_json("c2", labels=svc, impact="lb_failure"), at=T0 + timedelta(minutes=1)
    )
    await post(GK_CHECKOUT, alert_json("c1", "resolved", labels=svc), at=T0 + timedelta(minutes=2))
    await post(GK_SEARCH, alert_json("s1", service="search"), at=T0)
    await post(
        GK_SEARCH, alert_json("s1", "resolved", service="search"), at=T0 + timedelta(minutes=1)
    )
    later = T0 + timedelta(minutes=10)
    await post(GK_SEARCH, alert_json("s1", starts=later, service="search"), at=later)  # reopen
    await post(GK_SEARCH, alert_json("s1", "resolved", starts=later, service="search"), at=later)
    [old] = [i for i in await all_incidents(b.store) if i.key == GK_SEARCH]
    much_later = T0 + timedelta(hours=5)
    await post(GK_SEARCH, alert_json("s1", starts=much_later, service="search"), at=much_later)

    # A person lowers the old (no longer current) search incident, as the API does.
    updated, change = set_severity(
        old,
        "SEV-3",
        reason="was a test",
        actor="alice",
        at=much_later,
        request_id="01JQ" * 6 + "AA",
    )
    await b.store.save(
        [],
        [IncidentWrite(updated, old.version)],
        [OutboxEvent(TOPIC_INCIDENTS, old.id, change.envelope())],
    )
    await relay_outbox(b.store, b.log)
    return old.id


def _stray_event(stray: Incident) -> Envelope:
    return Change("01JSTRAY" + "0" * 18, "incident.opened", stray, "stray", None).envelope()


async def test_rebuild_reproduces_the_same_incidents_and_timelines(tmp_path: Path) -> None:
    async with open_backends(tmp_path) as b:
        old_search = await _history(b)
        before = await snapshot(b.store)
        groups_before = await b.store.load_groups([GK_CHECKOUT, GK_SEARCH])
        assert len(before) == 3
        assert before[old_search][0].severity_source == "manual"

        # Something the log never heard of (say, a store restored from an old backup).
        stray = event_incident((await incident_events(b.log))[0]).model_copy(
            update={"id": "inc-stray", "key": "stray-key"}
        )
        await b.store.save(
            [GroupState("stray-key", 0, stray)],
            [IncidentWrite(stray, 0)],
            [OutboxEvent(TOPIC_INCIDENTS, stray.id, _stray_event(stray))],
        )
        await b.store.mark_relayed([s.seq for s in await b.store.unrelayed()])

        count = await rebuild_store(b.store, b.log)

        assert count == len(await incident_events(b.log))
        assert await snapshot(b.store) == before
        assert (await b.store.load_groups(["stray-key"]))["stray-key"] == GroupState("stray-key")
        groups_after = await b.store.load_groups([GK_CHECKOUT, GK_SEARCH])
        for key in (GK_CHECKOUT, GK_SEARCH):
            assert groups_after[key].incident == groups_before[key].incident
        current_search = groups_after[GK_SEARCH].incident
        assert current_search is not None
        assert current_search.id != old_search

        # The rebuilt store carries on: the next alert continues the current incident.
        stage = new_stage(b.log, b.store)
        current = groups_before[GK_CHECKOUT].incident
        assert current is not None
        await append_webhook(
            b.log,
            webhook(GK_CHECKOUT, alert_json("c3", service="checkout")),
            at=T0 + timedelta(minutes=3),
        )
        await drain(stage, b.log.subscribe([TOPIC_ALERTS], CONSUMER_GROUP))
        after = await b.store.get_incident(current.id)
        assert after is not None
        assert after.version == current.version + 1
        assert [a.fingerprint for a in await alerts_of(b.store, after.id)] == ["c1", "c2", "c3"]
        assert len(await all_incidents(b.store)) == 3


# -- backtest ---------------------------------------------------------------------------------

STRICTER = """
rules:
  - name: sev0
    severity: SEV-0
    when:
      - impact: [outage, data_loss, security_breach]
      - user_impact_pct: {above: 50}
  - name: sev1
    severity: SEV-1
    when:
      - impact: [feature_degraded, db_connectivity, cdn_failure, lb_failure, error_rate]
  - name: sev2
    severity: SEV-2
    when:
      - impact: [partial_degradation, service_failure, performance]
  - name: sev3
    severity: SEV-3
    when:
      - impact: [minor, single_user, documentation, cosmetic]
"""

LOOSER = """
rules:
  - name: sev0
    severity: SEV-0
    when:
      - impact: [outage, data_loss, security_breach]
  - name: sev1
    severity: SEV-1
    when:
      - impact: [feature_degraded, db_connectivity, cdn_failure, lb_failure]
  - name: sev2
    severity: SEV-2
    when:
      - impact: [partial_degradation, service_failure, error_rate, performance]
      - no_impact: true
        user_impact_pct: {above: 0, at_most: 100}
  - name: sev3
    severity: SEV-3
    when:
      - impact: [minor, single_user, documentation, cosmetic]
fallback:
  severity_label: {critical: SEV-1}
"""

BACKTEST_GROUPS: dict[str, list[dict[str, str]]] = {
    "err": [{"impact": "error_rate"}],
    "users": [{"user_impact_pct": "60"}],
    "outage": [{"impact": "outage"}],
    "minor": [{"impact": "minor"}],
    "mixed": [{"impact": "error_rate"}, {"impact": "outage"}],
    "fallback": [{"severity": "warning"}],
}


async def append_backtest_history(b: Backends) -> None:
    for name, alerts in BACKTEST_GROUPS.items():
        body = webhook(
            f'{{}}:{{service="{name}"}}',
            *(
                alert_json(f"{name}{i}", service=name, labels=labels)
                for i, labels in enumerate(alerts)
            ),
        )
        await append_webhook(b.log, body)


async def _log_rows(b: Backends) -> list[tuple[str, int, bytes]]:
    return [(r.topic, r.offset, r.raw) for r in await records(b.log)]


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        (STRICTER, {"err": ("SEV-2", "SEV-1"), "users": ("SEV-1", "SEV-0")}),
        (LOOSER, {"users": ("SEV-1", "SEV-2"), "fallback": ("SEV-2", "SEV-3")}),
        ("{}\n", {}),
    ],
    ids=["stricter", "looser", "same"],
)
async def test_backtest_reports_exactly_the_incidents_whose_severity_differs(
    tmp_path: Path, candidate: str, expected: dict[str, tuple[str, str]]
) -> None:
    policy_file = tmp_path / "candidate.yaml"
    policy_file.write_text(candidate, encoding="utf-8")
    async with open_backends(tmp_path) as b:
        await append_backtest_history(b)
        await drain(new_stage(b.log, b.store), b.log.subscribe([TOPIC_ALERTS], CONSUMER_GROUP))
        stored = {i.key: i for i in await all_incidents(b.store)}
        log_before, store_before = await _log_rows(b), await snapshot(b.store)

        report = await backtest(b.log, default_policy(), load_policy(policy_file))

        assert await _log_rows(b) == log_before
        assert await snapshot(b.store) == store_before
    assert report.alerts == 7
    assert report.incidents == 6
    assert (report.only_old, report.only_new) == (0, 0)
    want = {stored[f'{{}}:{{service="{name}"}}'].id: sevs for name, sevs in expected.items()}
    assert {c.incident_id: (c.old, c.new) for c in report.changed} == want
    for c in report.changed:
        assert c.old == stored[c.key].severity  # "old" is what the live stage decided
        assert c.why


# -- resolve grace from event time --------------------------------------------------------------

GRACE_POLICY = "resolve_grace: 5m\n"


async def test_grace_expiry_follows_event_time_so_a_replay_decides_the_same(
    tmp_path: Path,
) -> None:
    """The grace period runs on the events' own clock: long-past alerts do not resolve an
    incident because the wall clock says so, and rebuild and backtest agree with the stage."""
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(GRACE_POLICY, encoding="utf-8")
    policy = load_policy(policy_file)
    svc = {"service": "checkout"}
    async with open_backends(tmp_path) as b:
        stage = new_stage(b.log, b.store, policy)
        sub = b.log.subscribe([TOPIC_ALERTS], CONSUMER_GROUP)

        async def post(gk: str, alert: dict[str, Any], minutes: int) -> None:
            await append_webhook(b.log, webhook(gk, alert), at=T0 + timedelta(minutes=minutes))
            await drain(stage, sub)

        await post(GK_CHECKOUT, alert_json("c1", labels=svc), 0)
        await post(GK_CHECKOUT, alert_json("c1", "resolved", labels=svc), 1)
        await post(GK_SEARCH, alert_json("s1", service="search"), 3)
        [checkout] = [i for i in await all_incidents(b.store) if i.key == GK_CHECKOUT]
        # T0 is months ago by the wall clock, but only 3 minutes have passed in the log.
        assert checkout.status == "open"
        assert checkout.resolving_since == T0 + timedelta(minutes=1)

        await post(GK_SEARCH, alert_json("s2", service="search"), 7)  # the log's clock passes 6m
        after = await b.store.get_incident(checkout.id)
        assert after is not None
        assert (after.status, after.resolved_at) == ("resolved", T0 + timedelta(minutes=6))
        live = await snapshot(b.store)

        assert await rebuild_store(b.store, b.log) == len(await incident_events(b.log))
        assert await snapshot(b.store) == live
        report = await backtest(b.log, policy, policy)
        assert (report.incidents, report.changed) == (2, [])
