"""The policy as the classifier's hot loop reads it: flat tuples, frozensets and dicts.

Built once per policy (``Policy.compiled``), so ``classify`` does no model walking per alert.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from schemas.severity import Severity

if TYPE_CHECKING:  # policy.py imports this module to compile itself
    from classifier.policy import Condition, Policy
    from schemas.severity import Classification


def normalise_impact(value: str) -> str:
    """How alert values and policy names are compared: "Data-Loss " is data_loss."""
    return value.strip().lower().replace("-", "_").replace(" ", "_")


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    impacts: frozenset[str] | None
    no_impact: bool
    pct_above: float | None
    pct_at_most: float | None
    revenue_above: float | None
    revenue_at_most: float | None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    severity: Severity
    conditions: tuple[CompiledCondition, ...]


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """The policy flattened for the classifier's hot loop: plain tuples, sets and dicts."""

    impact_keys: tuple[str, ...]
    pct_keys: tuple[str, ...]
    revenue_keys: tuple[str, ...]
    severity_keys: tuple[str, ...]
    input_keys: tuple[str, ...]
    """Every key above, once each: what an alert's classification depends on."""
    impacts: frozenset[str]
    rules: tuple[CompiledRule, ...]
    unmatched: Severity
    fallback: Mapping[str, Severity]
    fallback_otherwise: Severity
    decided: dict[tuple[object, ...], Classification] = field(
        default_factory=dict, compare=False, repr=False
    )
    """Classifications by the values of ``input_keys`` they were made from: an alert's
    severity depends only on the few values the policy reads, and alerts mostly share them."""


def compile_policy(policy: Policy) -> CompiledPolicy:
    """Flatten a checked policy for ``classify``."""

    def condition(c: Condition) -> CompiledCondition:
        pct, revenue = c.user_impact_pct, c.revenue_impact_usd_per_hour
        return CompiledCondition(
            impacts=frozenset(map(normalise_impact, c.impact)) if c.impact else None,
            no_impact=c.no_impact,
            pct_above=pct.above if pct else None,
            pct_at_most=pct.at_most if pct else None,
            revenue_above=revenue.above if revenue else None,
            revenue_at_most=revenue.at_most if revenue else None,
        )

    return CompiledPolicy(
        impact_keys=policy.inputs.impact,
        pct_keys=policy.inputs.user_impact_pct,
        revenue_keys=policy.inputs.revenue_impact_usd_per_hour,
        severity_keys=policy.inputs.severity,
        input_keys=tuple(
            dict.fromkeys(
                (
                    *policy.inputs.impact,
                    *policy.inputs.user_impact_pct,
                    *policy.inputs.revenue_impact_usd_per_hour,
                    *policy.inputs.severity,
                )
            )
        ),
        impacts=frozenset(policy.impacts),
        rules=tuple(
            CompiledRule(r.name, r.severity, tuple(map(condition, r.when))) for r in policy.rules
        ),
        unmatched=policy.unmatched,
        fallback=dict(policy.fallback.severity_label),
        fallback_otherwise=policy.fallback.otherwise,
    )
