"""Perform an effect on the world at most once in outcome, through the effects ledger.

Every acting stage calls ``perform`` with the effect's deterministic id, a ``do`` that acts
and a ``check`` that looks at the world. The rules:

- Done before (a redelivered event): the recorded outcome; nothing is done again.
- Someone else holds a live claim: ``EffectInProgress`` (retriable); the stage retries later.
- The first attempt: ``do``, then record its outcome.
- Any later attempt (a holder died mid-effect, or an earlier try failed in a way that may
  still have acted, such as a timeout): ``check`` first. If it finds the effect, that is the
  outcome and ``do`` is not run; otherwise ``do``.
- ``do`` or ``check`` raises a retriable error: the claim is given back and the error raised,
  so the stage retries (and the retry checks first). Any other error from ``do`` is recorded
  as the effect's failed outcome, which later calls return as they are.

Retrying is the stage runtime's job, not this module's: nothing here sleeps.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from store.base import StoreError
from store.effects import (
    MAX_ERROR_CHARS,
    CompletedStatus,
    Done,
    EffectsLedger,
    InProgress,
    InvalidEffect,
    Outcome,
    StaleToken,
    Unknown,
)

log = logging.getLogger(__name__)

Do = Callable[[int], Awaitable[Outcome]]
"""Act on the world under this fencing token; the outcome to record (JSON)."""
Check = Callable[[], Awaitable[Outcome | None]]
"""Look at the world: the outcome if the effect already took place, else None."""
Source = Literal["recorded", "performed", "checked"]


class EffectInProgress(StoreError):
    """Another holder's claim on the effect is live; try again after ``lease_until``."""

    retriable = True

    def __init__(self, effect_id: str, holder: str | None, lease_until: datetime) -> None:
        super().__init__(f"effect {effect_id} is held by {holder} until {lease_until}")
        self.effect_id = effect_id
        self.holder = holder
        self.lease_until = lease_until


class EffectLost(StoreError):
    """The effect was done but its claim had passed to another holder meanwhile, so its
    outcome could not be recorded here; that holder's check will find and record it."""

    retriable = True


@dataclass(frozen=True, slots=True)
class EffectResult:
    effect_id: str
    status: CompletedStatus
    outcome: dict[str, Any]
    source: Source
    """recorded: completed before this call; performed: ``do`` ran now; checked: the check
    found that an earlier attempt had taken effect."""
    attempts: int


def default_holder() -> str:
    """Who holds a claim, as people inspecting the ledger want to read it: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _retriable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retriable", False))


async def perform(
    ledger: EffectsLedger,
    effect_id: str,
    *,
    holder: str,
    lease: float,
    do: Do,
    check: Check,
) -> EffectResult:
    """Do the effect unless it was done (see the module doc); its recorded result.

    ``lease`` must outlast ``do`` (or ``do`` extends it with ``ledger.extend``): past it,
    another caller may take the claim over and run the check while ``do`` is still going.
    Cancelled midway, the claim is left to lapse: whoever claims next checks first.
    """
    claim = await ledger.claim(effect_id, holder=holder, lease=lease)
    if isinstance(claim, Done):
        return EffectResult(effect_id, claim.status, claim.outcome, "recorded", claim.attempts)
    if isinstance(claim, InProgress):
        raise EffectInProgress(effect_id, claim.holder, claim.lease_until)
    token, attempts = claim.token, claim.attempts
    if isinstance(claim, Unknown) or attempts > 1:
        if isinstance(claim, Unknown):
            log.warning(
                "effect %s: %s (token %d) left it unfinished; checking before acting",
                effect_id,
                claim.previous_holder,
                claim.previous_token,
            )
        try:
            found = await check()
        except Exception as exc:
            # Undecided: give the claim back, and whoever claims next checks again.
            await _give_back(ledger, effect_id, token, exc)
            raise
        if found is not None:
            recorded = await _record(ledger, effect_id, token, found, "succeeded")
            return EffectResult(effect_id, "succeeded", recorded, "checked", attempts)
    try:
        outcome = await do(token)
    except Exception as exc:
        if _retriable(exc):
            await _give_back(ledger, effect_id, token, exc)
            raise
        log.warning("effect %s failed: %s", effect_id, exc, exc_info=True)
        failed = {"error": str(exc)[:MAX_ERROR_CHARS], "type": type(exc).__name__}
        recorded = await _record(ledger, effect_id, token, failed, "failed")
        return EffectResult(effect_id, "failed", recorded, "performed", attempts)
    recorded = await _record(ledger, effect_id, token, outcome, "succeeded")
    return EffectResult(effect_id, "succeeded", recorded, "performed", attempts)


async def _give_back(ledger: EffectsLedger, effect_id: str, token: int, exc: Exception) -> None:
    """Release the claim after a failure; if even that fails, the lease lapses instead and
    the next claim is ``Unknown``, which checks too. The original error is what matters."""
    try:
        await ledger.release(effect_id, token, f"{type(exc).__name__}: {exc}")
    except StoreError as release_exc:
        log.warning("effect %s: cannot release token %d: %s", effect_id, token, release_exc)


async def _record(
    ledger: EffectsLedger,
    effect_id: str,
    token: int,
    outcome: Outcome,
    status: CompletedStatus,
) -> dict[str, Any]:
    """Complete the effect; the outcome as recorded."""
    recorded = dict(outcome)
    try:
        await ledger.complete(effect_id, token, recorded, status=status)
    except InvalidEffect:
        # The effect took place, so it must be recorded: left held, it would be re-checked
        # on every delivery. Its text stands in for an outcome JSON cannot hold (a bug in the
        # action, which the log line names).
        log.exception("effect %s: outcome is not JSON, recorded as text", effect_id)
        recorded = {"unserialisable": repr(outcome)[:MAX_ERROR_CHARS]}
        await ledger.complete(effect_id, token, recorded, status=status)
    except StaleToken as exc:
        raise EffectLost(f"effect {effect_id}: {exc}") from exc
    return recorded
