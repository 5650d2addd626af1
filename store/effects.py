"""The effects ledger: claim an effect on the world with a fencing token, do it, record it.

An effect (a restart, a Slack post, an email) is keyed by a deterministic id the caller
derives from its triggering event and step, so a redelivered event finds its effect again.

- ``claim`` grants at most one live claim per effect. Its answer is one of:
  ``Claimed`` (yours, with a fencing token), ``Done`` (completed before: the recorded
  outcome), ``InProgress`` (someone else's lease is live), or ``Unknown`` (a previous
  holder's lease ran out before it completed: the claim is now yours with a new token, but
  the effect may or may not have happened, and only the effect's own check can tell).
- Tokens come from one sequence per ledger, so every claim ever granted has a higher token
  than the ones before it. ``complete``, ``release`` and ``extend`` take the token and refuse
  (``StaleToken``) when it is no longer the current holder's: a holder that stalled past its
  lease cannot overwrite what its successor found.
- A lease is a time, not a proof of life: a holder whose lease ran out but that nobody has
  taken over yet still holds the current token and may complete.

Both backends share ``decide``, so they grant and refuse by the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import orjson

from store.base import StoreError

EffectState = Literal["held", "released", "succeeded", "failed"]
"""A stored effect: claimed by a holder, given back after a retriable failure, or completed."""

CompletedStatus = Literal["succeeded", "failed"]
ClaimState = Literal["claimed", "done", "in_progress", "unknown"]
Outcome = Mapping[str, Any]
"""What an effect did, as JSON (say the request sent and the API's answer)."""

MAX_ID_CHARS = 1024
MAX_ERROR_CHARS = 4000


class InvalidEffect(StoreError):
    """An effect id, holder or lease the ledger cannot take; the same call never will."""


class StaleToken(StoreError):
    """The token is no longer the effect's current claim: someone else holds it, or it was
    released or completed under another token. Nothing was changed."""


@dataclass(frozen=True, slots=True)
class EffectRecord:
    """An effect as stored, for inspection (``get``) and for ``decide``."""

    effect_id: str
    state: EffectState
    token: int
    """The latest token granted for this effect."""
    holder: str | None
    lease_until: datetime | None
    """When a ``held`` claim's lease ends; None once released or completed."""
    attempts: int
    """Claims granted so far, the current one included."""
    outcome: dict[str, Any] | None
    error: str | None
    """The error of the last ``release``."""
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Claimed:
    """The claim is yours; nobody held it before, or the last holder gave it back."""

    state: ClassVar[ClaimState] = "claimed"
    effect_id: str
    token: int
    lease_until: datetime
    attempts: int
    """1 on the first claim; more after releases (a timed-out try may still have acted)."""


@dataclass(frozen=True, slots=True)
class Unknown:
    """The claim is yours, but the previous holder's lease ran out before it completed:
    run the effect's check before doing anything."""

    state: ClassVar[ClaimState] = "unknown"
    effect_id: str
    token: int
    lease_until: datetime
    attempts: int
    previous_holder: str | None
    previous_token: int


@dataclass(frozen=True, slots=True)
class Done:
    """Completed before; do nothing again."""

    state: ClassVar[ClaimState] = "done"
    effect_id: str
    status: CompletedStatus
    outcome: dict[str, Any]
    token: int
    """The token the outcome was recorded under."""
    attempts: int


@dataclass(frozen=True, slots=True)
class InProgress:
    """Someone else holds a live lease; ask again later."""

    state: ClassVar[ClaimState] = "in_progress"
    effect_id: str
    holder: str | None
    lease_until: datetime


Claim = Claimed | Unknown | Done | InProgress

Decision = Literal["grant", "take_over", "done", "in_progress"]


def decide(record: EffectRecord, now: datetime) -> Decision:
    """What a claim on an existing effect gets, judged at ``now`` on the ledger's clock."""
    if record.state in ("succeeded", "failed"):
        return "done"
    if record.state == "released":
        return "grant"
    if record.lease_until is not None and record.lease_until > now:
        return "in_progress"
    return "take_over"


def answer(decision: Decision, before: EffectRecord, after: EffectRecord) -> Claim:
    """The claim's answer, from the record before the claim and after it (the same record
    when the claim changed nothing)."""
    if decision == "done":
        return Done(
            before.effect_id,
            "failed" if before.state == "failed" else "succeeded",
            before.outcome or {},
            before.token,
            before.attempts,
        )
    if decision == "in_progress":
        assert before.lease_until is not None  # noqa: S101 - decide() saw a live lease
        return InProgress(before.effect_id, before.holder, before.lease_until)
    assert after.lease_until is not None  # noqa: S101 - a granted claim always has a lease
    if decision == "grant":
        return Claimed(after.effect_id, after.token, after.lease_until, after.attempts)
    return Unknown(
        after.effect_id,
        after.token,
        after.lease_until,
        after.attempts,
        before.holder,
        before.token,
    )


Operation = Literal["complete", "release", "extend"]

# Per operation, the state that shows it was already done under the same token.
_ALREADY: dict[Operation, tuple[EffectState, ...]] = {
    "complete": ("succeeded", "failed"),
    "release": ("released",),
    "extend": (),
}


def fence(effect_id: str, record: EffectRecord | None, token: int, operation: Operation) -> bool:
    """True when ``operation`` under ``token`` may change the record; False when it was
    already done under that token (a retry after a lost reply: change nothing, succeed).

    Raises ``StaleToken`` otherwise: the token is not the current claim's.
    """
    if record is not None and record.token == token:
        if record.state == "held":
            return True
        if record.state in _ALREADY[operation]:
            return False
    now = f"{record.state} under token {record.token}" if record else "never claimed"
    raise StaleToken(f"effect {effect_id}: cannot {operation} with token {token}; it is {now}")


def check_id(effect_id: str) -> None:
    _check_text("effect id", effect_id)


def check_claim(effect_id: str, holder: str, lease: float) -> None:
    _check_text("effect id", effect_id)
    _check_text("holder", holder)
    check_lease(lease)


def check_lease(lease: float) -> None:
    # NaN fails this too: a lease that compares to nothing would never end.
    if not 0 < lease < 366 * 24 * 3600:
        raise InvalidEffect(f"lease must be positive seconds (under a year), not {lease!r}")


def _check_text(what: str, value: str) -> None:
    # PostgreSQL text refuses NUL; both backends refuse it alike so the contract is one.
    if not value or len(value) > MAX_ID_CHARS or "\x00" in value:
        raise InvalidEffect(f"{what} must be 1..{MAX_ID_CHARS} characters without NUL")


def dump_outcome(outcome: Outcome) -> bytes:
    """The outcome as JSON; ``InvalidEffect`` for what JSON cannot hold."""
    try:
        return orjson.dumps(dict(outcome))
    except TypeError as exc:  # orjson.JSONEncodeError is one
        raise InvalidEffect(f"outcome is not JSON: {exc}") from exc


def clean_error(error: str) -> str:
    """An error text storable in any backend: no NUL, bounded (API errors can be pages)."""
    return error.replace("\x00", "\\x00")[:MAX_ERROR_CHARS]


@runtime_checkable
class EffectsLedger(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def claim(self, effect_id: str, *, holder: str, lease: float) -> Claim:
        """Claim the effect for ``lease`` seconds, or say why not (see the module doc)."""
        ...

    async def complete(
        self,
        effect_id: str,
        token: int,
        outcome: Outcome,
        *,
        status: CompletedStatus = "succeeded",
    ) -> None:
        """Record the outcome; ``StaleToken`` unless ``token`` is the current claim's.

        Completing again with the same token is a no-op (a retry after a lost reply); the
        first outcome stays.
        """
        ...

    async def release(self, effect_id: str, token: int, error: str) -> None:
        """Give the claim back after a retriable failure: the next claim is ``Claimed``
        (not ``Unknown``) with one more attempt. ``StaleToken`` if not the current claim."""
        ...

    async def extend(self, effect_id: str, token: int, lease: float) -> datetime:
        """Hold the claim ``lease`` seconds from now; the new end. ``StaleToken`` if lost."""
        ...

    async def get(self, effect_id: str) -> EffectRecord | None: ...
