"""The EffectsLedger contract, run on both backends: embedded (SQLite) and PostgreSQL.

Each test gets an empty ledger (a new SQLite file; a new PostgreSQL database). Leases that
must pass are short and waited out by claiming until the answer changes.
"""

from __future__ import annotations

import asyncio
import math
import signal
from pathlib import Path
from typing import Any

import pytest
from effects_support import (
    Holder,
    LedgerBackend,
    backend_fixture,  # noqa: F401 - the fixture "backend"
    claim_after_lease,
    ledger_fixture,  # noqa: F401 - the fixture "ledger"
)

from sevpipe.backends import open_effects_ledger
from sevpipe.settings import Settings
from store.effects import (
    Claim,
    Claimed,
    Done,
    EffectsLedger,
    InProgress,
    InvalidEffect,
    StaleToken,
    Unknown,
)
from store.effects_embedded import EmbeddedEffectsLedger
from store.effects_postgres import PostgresEffectsLedger

OUTCOME: dict[str, Any] = {
    "request": {"method": "PATCH", "path": "/apis/apps/v1/namespaces/origin-production"},
    "answer": {"status": 200, "note": "zeichen ä ✓ and a \x00 NUL"},
    "replicas": [3, 4],
}


def test_backends_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(EmbeddedEffectsLedger(tmp_path / "e.db"), EffectsLedger)
    assert isinstance(PostgresEffectsLedger("postgresql://127.0.0.1:1/none"), EffectsLedger)


async def test_settings_choose_the_ledger(backend: LedgerBackend, tmp_path: Path) -> None:
    dsn = backend.where if backend.kind == "postgres" else None
    settings = Settings(data_dir=tmp_path, postgres_dsn=dsn)
    async with open_effects_ledger(settings) as opened:
        claim = await opened.claim("restart-1", holder="act", lease=60)
    assert isinstance(claim, Claimed)
    async with backend.open() as direct:  # the data the test's backend sees
        record = await direct.get("restart-1")
    assert record is not None
    assert record.token == claim.token
    assert settings.effects_path.exists() == (backend.kind == "embedded")


async def test_a_first_claim_is_granted_and_stored(ledger: EffectsLedger) -> None:
    assert await ledger.get("restart-1") is None
    claim = await ledger.claim("restart-1", holder="act-a", lease=60)
    assert isinstance(claim, Claimed)
    assert (claim.effect_id, claim.attempts) == ("restart-1", 1)
    assert claim.token > 0
    record = await ledger.get("restart-1")
    assert record is not None
    assert (record.state, record.token, record.holder) == ("held", claim.token, "act-a")
    assert record.lease_until == claim.lease_until
    assert record.outcome is None


async def test_concurrent_claimers_on_two_ledgers_get_one_claim(backend: LedgerBackend) -> None:
    async with backend.open() as one, backend.open() as two:
        go = asyncio.Event()

        async def claimer(i: int) -> Claim:
            await go.wait()
            return await (one, two)[i % 2].claim("post-1", holder=f"h{i}", lease=60)

        tasks = [asyncio.create_task(claimer(i)) for i in range(20)]
        go.set()
        claims = await asyncio.gather(*tasks)
        record = await one.get("post-1")
    winners = [(i, c) for i, c in enumerate(claims) if isinstance(c, Claimed)]
    assert len(winners) == 1
    winner, granted = winners[0]
    others = [c for c in claims if not isinstance(c, Claimed)]
    assert len(others) == 19
    assert all(isinstance(c, InProgress) for c in others)
    assert {(c.holder, c.lease_until) for c in others if isinstance(c, InProgress)} == {
        (f"h{winner}", granted.lease_until)
    }
    assert record is not None
    assert (record.holder, record.token, record.attempts) == (f"h{winner}", granted.token, 1)


async def test_concurrent_claimers_take_over_an_expired_lease_once(
    backend: LedgerBackend,
) -> None:
    async with backend.open() as one, backend.open() as two:
        first = await one.claim("post-1", holder="dead", lease=0.2)
        assert isinstance(first, Claimed)
        _, probe = await claim_after_lease(one, "post-1", holder="probe", lease=0.2)
        assert isinstance(probe, Unknown)  # now let the probe's own lease pass too
        await asyncio.sleep(0.4)
        claims = await asyncio.gather(
            *((one, two)[i % 2].claim("post-1", holder=f"h{i}", lease=60) for i in range(20))
        )
    taken = [c for c in claims if isinstance(c, Unknown)]
    assert len(taken) == 1
    assert (taken[0].previous_holder, taken[0].previous_token) == ("probe", probe.token)
    assert taken[0].attempts == 3
    assert sum(isinstance(c, InProgress) for c in claims) == 19


async def test_claimers_in_separate_processes_get_one_claim(backend: LedgerBackend) -> None:
    holders = [await Holder.start(backend, "email-1", 60) for _ in range(4)]
    try:
        for h in holders:
            h.go()
        said = [await h.read() for h in holders]
    finally:
        for h in holders:
            await h.kill()
    claimed = [d for d in said if d["state"] == "claimed"]
    assert len(claimed) == 1
    assert [d["by"] for d in said if d["state"] == "in_progress"] == [claimed[0]["holder"]] * 3


async def test_complete_then_claim_is_done_with_the_outcome(ledger: EffectsLedger) -> None:
    claim = await ledger.claim("restart-1", holder="act-a", lease=60)
    assert isinstance(claim, Claimed)
    await ledger.complete("restart-1", claim.token, OUTCOME)
    again = await ledger.claim("restart-1", holder="act-b", lease=60)
    assert again == Done("restart-1", "succeeded", OUTCOME, claim.token, 1)
    record = await ledger.get("restart-1")
    assert record is not None
    assert (record.state, record.outcome, record.lease_until) == ("succeeded", OUTCOME, None)


async def test_a_failed_outcome_is_done_too(ledger: EffectsLedger) -> None:
    claim = await ledger.claim("page-1", holder="act-a", lease=60)
    assert isinstance(claim, Claimed)
    await ledger.complete("page-1", claim.token, {"error": "403 forbidden"}, status="failed")
    again = await ledger.claim("page-1", holder="act-b", lease=60)
    assert again == Done("page-1", "failed", {"error": "403 forbidden"}, claim.token, 1)


async def test_completing_twice_with_one_token_keeps_the_first_outcome(
    ledger: EffectsLedger,
) -> None:
    claim = await ledger.claim("restart-1", holder="act-a", lease=60)
    assert isinstance(claim, Claimed)
    await ledger.complete("restart-1", claim.token, OUTCOME)
    before = await ledger.get("restart-1")
    await ledger.complete("restart-1", claim.token, {"other": True})  # a retried reply
    assert await ledger.get("restart-1") == before


async def test_an_expired_lease_is_unknown_with_a_higher_token(ledger: EffectsLedger) -> None:
    first = await ledger.claim("restart-1", holder="act-a", lease=0.3)
    assert isinstance(first, Claimed)
    waiting, claim = await claim_after_lease(ledger, "restart-1", holder="act-b", lease=60)
    assert all(w.holder == "act-a" for w in waiting)
    assert isinstance(claim, Unknown)
    assert claim.token > first.token
    assert (claim.previous_holder, claim.previous_token, claim.attempts) == (
        "act-a",
        first.token,
        2,
    )
    record = await ledger.get("restart-1")
    assert record is not None
    assert (record.state, record.holder, record.token) == ("held", "act-b", claim.token)


async def test_a_stale_token_changes_nothing(ledger: EffectsLedger) -> None:
    first = await ledger.claim("restart-1", holder="act-a", lease=0.3)
    assert isinstance(first, Claimed)
    _, second = await claim_after_lease(ledger, "restart-1", holder="act-b", lease=60)
    assert isinstance(second, Unknown)
    before = await ledger.get("restart-1")
    with pytest.raises(StaleToken):
        await ledger.complete("restart-1", first.token, {"late": True})
    with pytest.raises(StaleToken):
        await ledger.release("restart-1", first.token, "late")
    with pytest.raises(StaleToken):
        await ledger.extend("restart-1", first.token, 60)
    assert await ledger.get("restart-1") == before
    await ledger.complete("restart-1", second.token, OUTCOME)
    done = await ledger.get("restart-1")
    with pytest.raises(StaleToken):
        await ledger.complete("restart-1", first.token, {"late": True})
    assert await ledger.get("restart-1") == done
    assert done is not None
    assert done.outcome == OUTCOME


async def test_tokens_never_seen_are_refused(ledger: EffectsLedger) -> None:
    with pytest.raises(StaleToken):
        await ledger.complete("never", 1, {})
    claim = await ledger.claim("restart-1", holder="act-a", lease=60)
    assert isinstance(claim, Claimed)
    with pytest.raises(StaleToken):
        await ledger.complete("restart-1", claim.token + 1, {})
    assert await ledger.get("never") is None


async def test_release_gives_a_plain_claim_and_counts_attempts(ledger: EffectsLedger) -> None:
    first = await ledger.claim("post-1", holder="act-a", lease=60)
    assert isinstance(first, Claimed)
    await ledger.release("post-1", first.token, "ConnectionResetError: slack went away")
    await ledger.release("post-1", first.token, "a retried release")  # no-op
    record = await ledger.get("post-1")
    assert record is not None
    assert (record.state, record.error) == ("released", "ConnectionResetError: slack went away")
    second = await ledger.claim("post-1", holder="act-b", lease=60)
    assert isinstance(second, Claimed)
    assert (second.attempts, second.token > first.token) == (2, True)
    await ledger.release("post-1", second.token, "again")
    third = await ledger.claim("post-1", holder="act-c", lease=60)
    assert isinstance(third, Claimed)
    assert third.attempts == 3
    with pytest.raises(StaleToken):
        await ledger.complete("post-1", second.token, {})


async def test_tokens_strictly_increase_across_every_claim(ledger: EffectsLedger) -> None:
    tokens: list[int] = []
    for effect in ("a", "b", "a", "c", "b"):
        claim = await ledger.claim(effect, holder="act", lease=60)
        assert isinstance(claim, Claimed)
        tokens.append(claim.token)
        await ledger.release(effect, claim.token, "retriable")
    claim = await ledger.claim("d", holder="act", lease=0.2)
    assert isinstance(claim, Claimed)
    tokens.append(claim.token)
    _, taken = await claim_after_lease(ledger, "d", holder="act", lease=60)
    assert isinstance(taken, Unknown)
    tokens.append(taken.token)
    assert tokens == sorted(set(tokens))
    assert len(tokens) == 7


async def test_extend_keeps_the_claim_past_its_first_lease(ledger: EffectsLedger) -> None:
    claim = await ledger.claim("restart-1", holder="act-a", lease=0.3)
    assert isinstance(claim, Claimed)
    until = await ledger.extend("restart-1", claim.token, 60)
    assert until > claim.lease_until
    await asyncio.sleep(0.6)  # the first lease has passed; the extended one has not
    other = await ledger.claim("restart-1", holder="act-b", lease=60)
    assert other == InProgress("restart-1", "act-a", until)
    await ledger.complete("restart-1", claim.token, OUTCOME)
    with pytest.raises(StaleToken):
        await ledger.extend("restart-1", claim.token, 60)


async def test_an_expired_but_untaken_claim_may_still_complete(ledger: EffectsLedger) -> None:
    # Fencing is by token, not by clock: nobody took it over, so the holder's outcome stands.
    claim = await ledger.claim("restart-1", holder="act-a", lease=0.2)
    assert isinstance(claim, Claimed)
    await asyncio.sleep(0.4)
    await ledger.complete("restart-1", claim.token, OUTCOME)
    again = await ledger.claim("restart-1", holder="act-b", lease=60)
    assert isinstance(again, Done)
    assert again.outcome == OUTCOME


@pytest.mark.parametrize("effect_id", ["", "nul\x00inside", "x" * 1025])
async def test_unusable_effect_ids_are_refused_alike(ledger: EffectsLedger, effect_id: str) -> None:
    with pytest.raises(InvalidEffect):
        await ledger.claim(effect_id, holder="act", lease=60)
    with pytest.raises(InvalidEffect):
        await ledger.get(effect_id)


@pytest.mark.parametrize("lease", [0.0, -1.0, math.nan, math.inf])
async def test_unusable_leases_are_refused(ledger: EffectsLedger, lease: float) -> None:
    with pytest.raises(InvalidEffect):
        await ledger.claim("restart-1", holder="act", lease=lease)
    assert await ledger.get("restart-1") is None


async def test_an_outcome_json_cannot_hold_changes_nothing(ledger: EffectsLedger) -> None:
    claim = await ledger.claim("restart-1", holder="act-a", lease=60)
    assert isinstance(claim, Claimed)
    before = await ledger.get("restart-1")
    with pytest.raises(InvalidEffect):
        await ledger.complete("restart-1", claim.token, {"client": object()})
    assert await ledger.get("restart-1") == before


async def test_errors_are_stored_without_nul_and_bounded(ledger: EffectsLedger) -> None:
    claim = await ledger.claim("post-1", holder="act-a", lease=60)
    assert isinstance(claim, Claimed)
    await ledger.release("post-1", claim.token, "bad\x00body " + "x" * 10_000)
    record = await ledger.get("post-1")
    assert record is not None
    assert record.error is not None
    assert record.error.startswith("bad\\x00body x")
    assert len(record.error) == 4000


async def test_a_holder_killed_between_claim_and_complete(
    backend: LedgerBackend, ledger: EffectsLedger
) -> None:
    holder = await Holder.start(backend, "restart-1", 5.0)
    try:
        holder.go()
        held = await holder.read()
    finally:
        status = await holder.kill()
    assert status == -signal.SIGKILL
    assert held["state"] == "claimed"
    dead_token = held["token"]
    assert isinstance(dead_token, int)

    waiting, claim = await claim_after_lease(ledger, "restart-1", holder="parent", lease=60)
    assert waiting, "the dead holder's lease was live right after the kill"
    assert {w.holder for w in waiting} == {held["holder"]}
    assert isinstance(claim, Unknown)
    assert (claim.previous_holder, claim.previous_token) == (held["holder"], dead_token)
    assert claim.token > dead_token

    before = await ledger.get("restart-1")
    with pytest.raises(StaleToken):
        await ledger.complete("restart-1", dead_token, {"from": "the dead"})
    assert await ledger.get("restart-1") == before
    await ledger.complete("restart-1", claim.token, {"found_by_check": True})
    done = await ledger.claim("restart-1", holder="later", lease=60)
    assert done == Done("restart-1", "succeeded", {"found_by_check": True}, claim.token, 2)
