"""The policy file: its default is the runbook, it round-trips, and errors name file:line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from classifier.classify import classify
from classifier.policy import (
    Condition,
    Policy,
    PolicyError,
    Range,
    Rule,
    default_policy,
    load_policy,
    policy_yaml,
)
from schemas.yamlfile import ConfigFileError

RUNBOOK_IMPACTS = {
    "SEV-0": {"outage", "data_loss", "security_breach"},
    "SEV-1": {"feature_degraded", "db_connectivity", "cdn_failure", "lb_failure"},
    "SEV-2": {"partial_degradation", "service_failure", "error_rate", "performance"},
    "SEV-3": {"minor", "single_user", "documentation", "cosmetic"},
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# -- the default is the runbook ------------------------------------------------------------


def test_shipped_file_equals_the_built_in_defaults() -> None:
    assert default_policy() == Policy()


def test_default_policy_is_the_runbook_table() -> None:
    policy = default_policy()
    assert [rule.severity for rule in policy.rules] == ["SEV-0", "SEV-1", "SEV-2", "SEV-3"]
    for rule in policy.rules:
        impacts = {name for cond in rule.when for name in cond.impact or ()}
        assert impacts == RUNBOOK_IMPACTS[rule.severity]
    numeric = {
        rule.severity: [
            cond.model_dump(exclude={"impact"}) for cond in rule.when if cond.impact is None
        ]
        for rule in policy.rules
    }
    assert numeric == {
        "SEV-0": [
            {"revenue_impact_usd_per_hour": {"above": 10000}},
            {"user_impact_pct": {"above": 90}},
        ],
        "SEV-1": [{"user_impact_pct": {"above": 50}}],
        "SEV-2": [{"no_impact": True, "user_impact_pct": {"above": 0, "at_most": 50}}],
        "SEV-3": [],
    }
    assert sorted(policy.impacts) == sorted(set().union(*RUNBOOK_IMPACTS.values()))
    assert policy.unmatched == "SEV-3"
    assert policy.fallback.severity_label == {
        "critical": "SEV-1",
        "warning": "SEV-2",
        "error": "SEV-2",
    }
    assert policy.fallback.otherwise == "SEV-3"


def test_default_lifecycle_settings() -> None:
    policy = default_policy()
    assert policy.group_by == ()
    assert policy.reopen_window == timedelta(hours=1)
    assert policy.resolve_grace == timedelta(0)


# -- round trips and partial files ---------------------------------------------------------


def test_default_policy_round_trips_through_yaml(tmp_path: Path) -> None:
    text = policy_yaml(default_policy())
    assert load_policy(write(tmp_path, text)) == default_policy()
    assert "reopen_window: 1h" in text
    assert "user_impact_pct: {above: 90}" in text


def test_a_custom_policy_round_trips(tmp_path: Path) -> None:
    policy = Policy(
        impacts=("outage", "checkout_down"),
        rules=(
            Rule(
                name="money",
                severity="SEV-0",
                when=(
                    Condition(impact=("checkout_down",)),
                    Condition(revenue_impact_usd_per_hour=Range(above=2500.5)),
                ),
            ),
            Rule(
                name="some_users",
                severity="SEV-2",
                when=(Condition(no_impact=True, user_impact_pct=Range(at_most=12.5)),),
            ),
        ),
        unmatched="SEV-2",
        group_by=("service", "cluster"),
        reopen_window=timedelta(minutes=90),
        resolve_grace=timedelta(seconds=1.5),
    )
    assert load_policy(write(tmp_path, policy_yaml(policy))) == policy


def test_a_partial_file_keeps_the_other_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "reopen_window: 30m\ngroup_by: [service]\n")
    policy = load_policy(path)
    assert policy.reopen_window == timedelta(minutes=30)
    assert policy.group_by == ("service",)
    assert policy.rules == default_policy().rules


def test_an_empty_file_is_the_default(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, "# nothing to change\n")) == default_policy()


def test_a_loaded_policy_classifies_by_its_own_rules(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
impacts: [outage, checkout_down]
rules:
  - name: checkout
    severity: SEV-0
    when:
      - impact: [checkout_down]
      - revenue_impact_usd_per_hour: {above: 1000}
fallback:
  severity_label: {Page: SEV-0}
""",
    )
    policy = load_policy(path)
    assert classify({"impact": "checkout-down"}, {}, policy).rule == "checkout"
    assert classify({"revenue_impact_usd_per_hour": "1000.5"}, {}, policy).severity == "SEV-0"
    assert classify({"impact": "outage"}, {}, policy).rule == "unmatched"
    assert classify({"severity": "PAGE"}, {}, policy).severity == "SEV-0"
    assert classify({"severity": "critical"}, {}, policy).severity == "SEV-3"


def test_model_copy_with_new_rules_classifies_by_them() -> None:
    policy = default_policy()
    assert classify({"user_impact_pct": "0"}, {}, policy).severity == "SEV-3"
    changed = policy.model_copy(update={"unmatched": "SEV-2"})
    assert classify({"user_impact_pct": "0"}, {}, changed).severity == "SEV-2"


# -- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1h", timedelta(hours=1)),
        ("30m", timedelta(minutes=30)),
        ("1h30m", timedelta(minutes=90)),
        ("90s", timedelta(seconds=90)),
        ("500ms", timedelta(milliseconds=500)),
        ("2d", timedelta(days=2)),
        (90, timedelta(seconds=90)),
        (1.5, timedelta(seconds=1.5)),
        ("90", timedelta(seconds=90)),
        (0, timedelta(0)),
        ("PT2H", timedelta(hours=2)),
    ],
)
def test_durations(tmp_path: Path, value: object, expected: timedelta) -> None:
    path = write(tmp_path, yaml.safe_dump({"reopen_window": value, "resolve_grace": value}))
    policy = load_policy(path)
    assert (policy.reopen_window, policy.resolve_grace) == (expected, expected)


# -- errors name the file and line ---------------------------------------------------------

# Lines 1-4 of a one-rule policy; a condition written after it starts on line 5.
RULE = "rules:\n  - name: a\n    severity: SEV-0\n    when:\n"
OUTAGE_RULE = "    when: [{impact: [outage]}]\n"

BAD_POLICIES = [
    ("unknown top-level key", "reopen_windw: 1h\n", 1, "reopen_windw: unknown key (did you mean"),
    (
        "unknown key in a condition",
        RULE + "      - impact: [outage]\n        users: 5\n",
        6,
        "rules.0.when.0.users: unknown key",
    ),
    (
        "unknown severity",
        "rules:\n  - name: a\n    severity: SEV-9\n" + OUTAGE_RULE,
        3,
        "rules.0.severity: Input should be 'SEV-0'",
    ),
    (
        "unknown fallback severity",
        "fallback:\n  severity_label:\n    critical: P1\n",
        3,
        "fallback.severity_label.critical: Input should be",
    ),
    (
        "threshold not a number",
        RULE + "      - user_impact_pct:\n          above: ninety\n",
        6,
        "rules.0.when.0.user_impact_pct.above: Input should be a valid number",
    ),
    (
        "threshold as a string",
        RULE + "      - user_impact_pct: {above: '90'}\n",
        5,
        "user_impact_pct.above: Input should be a valid number",
    ),
    (
        "threshold not finite",
        RULE + "      - revenue_impact_usd_per_hour: {above: .nan}\n",
        5,
        "revenue_impact_usd_per_hour.above: Input should be a finite number",
    ),
    (
        "percentage above 100",
        RULE + "      - user_impact_pct:\n          above: 150\n",
        6,
        "user_impact_pct.above: a percentage threshold must be within 0..100",
    ),
    (
        "empty range",
        RULE + "      - user_impact_pct: {above: 50, at_most: 50}\n",
        5,
        "empty range: above 50 and at_most 50",
    ),
    (
        "rule naming an unknown impact",
        RULE + "      - impact:\n          - outage\n          - banana\n",
        7,
        "rules.0.when.0.impact.1: unknown impact 'banana' (not in impacts)",
    ),
    (
        "impact not in its normal form",
        "impacts:\n  - outage\n  - Data-Loss\n",
        3,
        "impacts.1: write impact 'Data-Loss' as 'data_loss'",
    ),
    (
        "impact listed twice",
        "impacts:\n  - outage\n  - outage\n",
        3,
        "impacts.1: impact 'outage' is listed twice",
    ),
    (
        "empty condition",
        RULE + "      - {}\n",
        5,
        "rules.0.when.0: a condition needs impact, no_impact, user_impact_pct",
    ),
    (
        "contradictory condition",
        RULE + "      - impact: [outage]\n        no_impact: true\n",
        5,
        "impact and no_impact: true can never both hold",
    ),
    (
        "rule without conditions",
        "rules:\n  - name: a\n    severity: SEV-0\n    when: []\n",
        4,
        "a rule needs at least one condition",
    ),
    (
        "rule without severity",
        "rules:\n  - name: a\n" + OUTAGE_RULE,
        2,
        "rules.0.severity: Field required",
    ),
    (
        "rule name used twice",
        "rules:\n  - name: a\n    severity: SEV-0\n"
        + OUTAGE_RULE
        + "  - name: a\n    severity: SEV-1\n"
        + OUTAGE_RULE,
        5,
        "rules.1.name: rule name 'a' is used twice",
    ),
    (
        "reserved rule name",
        "rules:\n  - name: fallback\n    severity: SEV-0\n" + OUTAGE_RULE,
        2,
        "rules.0.name: rule name 'fallback' is reserved",
    ),
    (
        "one name for two inputs",
        "inputs:\n  impact: [impact]\n  severity:\n    - impact\n",
        4,
        "inputs.severity.0: 'impact' is already read as impact",
    ),
    (
        "blank group_by label",
        "group_by:\n  - service\n  - ''\n",
        3,
        "group_by.1: String should have at least 1 character",
    ),
    (
        "negative duration",
        "\nresolve_grace: -5m\n",
        2,
        "resolve_grace: a duration must not be negative",
    ),
    ("yes is not a duration", "reopen_window: yes\n", 1, "reopen_window: expected a duration"),
    ("unreadable duration", "reopen_window: soon\n", 1, "reopen_window: expected a duration"),
    ("invalid YAML", "rules:\n  - name: a\n   severity: SEV-0\n", 3, "invalid YAML"),
    ("not a mapping", "- impact\n", 1, "expected a mapping of settings, got list"),
]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [pytest.param(text, line, message, id=name) for name, text, line, message in BAD_POLICIES],
)
def test_errors_name_the_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    first = str(caught.value).splitlines()[0]
    assert first.startswith(f"{path}:{line}: "), first
    assert message in first


def test_every_problem_is_listed_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "resolve_grace: soon\n"
        "rules:\n  - name: a\n    severity: SEV-9\n    when: [{impact: [outage]}]\n"
        "reopen_windw: 1h\n",
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    lines = str(caught.value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{path}:1", f"{path}:4", f"{path}:6"]


def test_a_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "nope.yaml")


def test_policy_error_is_a_config_file_error() -> None:
    assert issubclass(PolicyError, ConfigFileError)
