"""Classify one alert under a policy: pure, no I/O, never raises on what an alert carries.

It runs once per alert live and millions of times in a backtest, so it works on the policy's
compiled form and keeps string work to the few inputs it reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

from classifier.compiled import CompiledCondition, CompiledPolicy, normalise_impact
from classifier.policy import Policy
from schemas.events import AlertEventData
from schemas.severity import Classification, Severity

IMPACT: Final = "impact"
USERS: Final = "user_impact_pct"
REVENUE: Final = "revenue_impact_usd_per_hour"

_THOUSANDS: Final = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SHOWN_CHARS: Final = 60


_MEMO_SIZE: Final = 4096


def classify(
    labels: Mapping[str, str], annotations: Mapping[str, str], policy: Policy
) -> Classification:
    """The alert's severity under ``policy``, with the reasons (deciding reason first).

    Pure in the values the policy reads, so decided once per distinct set of them: a backtest
    replays millions of alerts through two policies, and a storm's alerts differ in pod names.
    """
    c = policy.compiled
    # The values of every key the policy reads, as they are: they decide everything below.
    given = (*map(labels.get, c.input_keys), *map(annotations.get, c.input_keys))
    memo = c.decided
    known = memo.get(given)
    if known is not None:
        return known
    decided = _classify(labels, annotations, c, _find(labels, annotations, c.impact_keys))
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    memo[given] = decided
    return decided


def _classify(
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    c: CompiledPolicy,
    impact_given: tuple[str, str] | None,
) -> Classification:
    notes: list[str] = []
    impact = None
    if impact_given is not None:
        impact = _known_impact(impact_given[1], c.impacts)
        if impact is None:
            source = _source(IMPACT, impact_given[0])
            notes.append(f"{source} {_show(impact_given[1])} is not a known impact category")
    users = _number(labels, annotations, c.pct_keys, USERS, notes)
    revenue = _number(labels, annotations, c.revenue_keys, REVENUE, notes)
    if impact_given is None and users is None and revenue is None:
        return _fallback(labels, annotations, c, notes)

    # Non-empty exactly when the alert gives an impact, known or not (no_impact reads it).
    impact_reason = (
        f"{_source(IMPACT, impact_given[0])} {impact or _show(impact_given[1])}"
        if impact_given
        else ""
    )
    for rule in c.rules:
        reasons = []
        for cond in rule.conditions:
            reason = _holds(
                cond, impact=impact, impact_reason=impact_reason, users=users, revenue=revenue
            )
            if reason:
                reasons.append(reason)
        if reasons:
            return _result(rule.severity, reasons + notes, rule.name)

    seen = [f"{_source(IMPACT, impact_given[0])} {_show(impact_given[1])}"] if impact_given else []
    seen += [f"{number[1]} {_fmt(number[0])}" for number in (users, revenue) if number is not None]
    return _result(c.unmatched, [f"no rule matched {', '.join(seen)}", *notes], "unmatched")


def classify_alert(alert: AlertEventData, policy: Policy) -> Classification:
    return classify(alert.labels, alert.annotations, policy)


def _result(severity: Severity, reasons: list[str], rule: str) -> Classification:
    return Classification(severity=severity, reasons=tuple(reasons), rule=rule)


def _find(
    labels: Mapping[str, str], annotations: Mapping[str, str], keys: tuple[str, ...]
) -> tuple[str, str] | None:
    """(key, value) of the first non-blank value: labels first, then annotations."""
    for source in (labels, annotations):
        for key in keys:
            value = source.get(key)
            if value and not value.isspace():
                return key, value
    return None


def _known_impact(value: str, known: frozenset[str]) -> str | None:
    if value in known:
        return value
    normalised = normalise_impact(value)
    return normalised if normalised in known else None


def _number(
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    keys: tuple[str, ...],
    name: str,
    notes: list[str],
) -> tuple[float, str] | None:
    """(value, how to name it in a reason), or None with a note when the value is unusable."""
    found = _find(labels, annotations, keys)
    if found is None:
        return None
    key, raw = found
    value, problem = _parse(raw, percent=name == USERS)
    source = _source(name, key)
    if problem:
        notes.append(f"{source} {_show(raw)} ignored: {problem}")
        return None
    return value, source


def _parse(raw: str, *, percent: bool) -> tuple[float, str]:
    """The number and "", or 0 and why it cannot be used."""
    # Fast path for "93" and "93%": float() takes surrounding blanks itself.
    text = raw[:-1] if percent and raw.endswith("%") else raw
    try:
        value = float(text)
    except ValueError:
        loose = _parse_loose(raw, percent=percent)
        if loose is None:
            return 0.0, "not a number"
        value = loose
    if not math.isfinite(value):
        return 0.0, "not a finite number"
    if value < 0:
        return 0.0, "negative"
    if percent and value > 100:
        return 0.0, "above 100 %"
    return value, ""


def _parse_loose(raw: str, *, percent: bool) -> float | None:
    """The rarer spellings: " 93 % ", "$12,000"."""
    text = raw.strip()
    if percent:
        text = text.removesuffix("%").rstrip()
    else:
        text = text.removeprefix("$").lstrip()
        if "," in text and _THOUSANDS.fullmatch(text):
            text = text.replace(",", "")
    try:
        return float(text)
    except ValueError:
        return None


def _holds(
    cond: CompiledCondition,
    *,
    impact: str | None,
    impact_reason: str,
    users: tuple[float, str] | None,
    revenue: tuple[float, str] | None,
) -> str:
    """Why ``cond`` holds, or "" when it does not. ``impact_reason`` is "" when none given."""
    parts = []
    if cond.impacts is not None:
        if impact not in cond.impacts:
            return ""
        parts.append(impact_reason)
    if cond.no_impact and impact_reason:
        return ""
    if cond.pct_above is not None or cond.pct_at_most is not None:
        if users is None or not _within(users[0], cond.pct_above, cond.pct_at_most):
            return ""
        parts.append(_range_reason(users, cond.pct_above, cond.pct_at_most))
    if cond.revenue_above is not None or cond.revenue_at_most is not None:
        if revenue is None or not _within(revenue[0], cond.revenue_above, cond.revenue_at_most):
            return ""
        parts.append(_range_reason(revenue, cond.revenue_above, cond.revenue_at_most))
    if cond.no_impact:
        parts.append("no impact given")
    return " and ".join(parts)


def _within(value: float, above: float | None, at_most: float | None) -> bool:
    return (above is None or value > above) and (at_most is None or value <= at_most)


def _range_reason(number: tuple[float, str], above: float | None, at_most: float | None) -> str:
    value, source = number
    if above is not None and at_most is not None:
        return f"{source} {_fmt(value)} in ({_fmt(above)}, {_fmt(at_most)}]"
    if above is not None:
        return f"{source} {_fmt(value)} > {_fmt(above)}"
    return f"{source} {_fmt(value)} <= {_fmt(at_most or 0.0)}"


def _fallback(
    labels: Mapping[str, str], annotations: Mapping[str, str], c: CompiledPolicy, notes: list[str]
) -> Classification:
    found = _find(labels, annotations, c.severity_keys)
    if found is None:
        return _result(c.fallback_otherwise, ["fallback: no severity label", *notes], "fallback")
    key, raw = found
    label = _source("severity label", key) if key != "severity" else "severity label"
    severity = c.fallback.get(raw) or c.fallback.get(raw.strip().lower())
    if severity is None:
        reason = f"fallback: {label} {_show(raw)}"
        return _result(c.fallback_otherwise, [reason, *notes], "fallback")
    return _result(severity, [f"fallback: {label} {raw.strip().lower()}", *notes], "fallback")


def _source(name: str, key: str) -> str:
    # Name the input by its policy name, and the alert's own key when the policy renamed it.
    return name if key == name else f"{name} ({key})"


def _fmt(value: float) -> str:
    """93.0 -> "93", 10000.01 -> "10000.01": what a person would have written."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _show(raw: str) -> str:
    """An alert's own value, quoted and cut short: it may be anything, of any length."""
    if len(raw) > _SHOWN_CHARS:
        raw = raw[: _SHOWN_CHARS - 3] + "..."
    return repr(raw)
