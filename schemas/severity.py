"""Incident severity, SEV-0 (worst) to SEV-3, and the result of classifying one alert."""

from __future__ import annotations

from typing import Final, Literal, TypeGuard

from pydantic import BaseModel, ConfigDict, Field

Severity = Literal["SEV-0", "SEV-1", "SEV-2", "SEV-3"]

SEVERITIES: Final[tuple[Severity, ...]] = ("SEV-0", "SEV-1", "SEV-2", "SEV-3")
"""Every severity, the most severe first."""

# Rank grows with severity so that ``max``/``>`` read naturally: SEV-0 ranks highest.
_RANK: Final[dict[str, int]] = {sev: len(SEVERITIES) - 1 - i for i, sev in enumerate(SEVERITIES)}


def is_severity(value: object) -> TypeGuard[Severity]:
    return isinstance(value, str) and value in _RANK


def severity_rank(severity: Severity) -> int:
    """3 for SEV-0 down to 0 for SEV-3: a higher rank is a more severe incident."""
    return _RANK[severity]


def is_more_severe(a: Severity, b: Severity) -> bool:
    """True when ``a`` is strictly worse than ``b`` (SEV-0 is worse than SEV-1)."""
    return _RANK[a] > _RANK[b]


def highest(*severities: Severity) -> Severity:
    """The most severe of the given severities (an incident's is the highest of its alerts')."""
    if not severities:
        raise ValueError("highest() needs at least one severity")
    return max(severities, key=_RANK.__getitem__)


class Classification(BaseModel):
    """The severity one alert deserves under a policy, and why."""

    model_config = ConfigDict(frozen=True)

    severity: Severity
    reasons: tuple[str, ...] = Field(
        min_length=1,
        description='why, deciding reason first, e.g. "user_impact_pct 93 > 90"; then any '
        "input that was ignored and why",
    )
    rule: str = Field(
        description='the policy rule that matched, or "fallback" (Alertmanager\'s severity '
        'label) or "unmatched" (inputs given, no rule matched)'
    )
