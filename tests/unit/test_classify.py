"""classify(): the runbook's table, its boundaries, odd inputs, and that it never raises."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from classifier.classify import classify, classify_alert
from classifier.policy import Inputs, Policy, default_policy
from schemas import AlertEventData, GroupContext
from schemas.severity import SEVERITIES, Severity, highest, is_more_severe, severity_rank

POLICY = default_policy()


def sev(labels: dict[str, str], annotations: dict[str, str] | None = None) -> Severity:
    return classify(labels, annotations or {}, POLICY).severity


def by_users(users: float) -> str:
    """The runbook's table for an alert that gives only user_impact_pct."""
    return "SEV-0" if users > 90 else "SEV-1" if users > 50 else "SEV-2" if users > 0 else "SEV-3"


# -- the runbook's table -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("impact", "expected"),
    [
        ("outage", "SEV-0"),
        ("data_loss", "SEV-0"),
        ("security_breach", "SEV-0"),
        ("feature_degraded", "SEV-1"),
        ("db_connectivity", "SEV-1"),
        ("cdn_failure", "SEV-1"),
        ("lb_failure", "SEV-1"),
        ("partial_degradation", "SEV-2"),
        ("service_failure", "SEV-2"),
        ("error_rate", "SEV-2"),
        ("performance", "SEV-2"),
        ("minor", "SEV-3"),
        ("single_user", "SEV-3"),
        ("documentation", "SEV-3"),
        ("cosmetic", "SEV-3"),
    ],
)
def test_every_impact_category_has_its_runbook_severity(impact: str, expected: str) -> None:
    result = classify({"impact": impact}, {}, POLICY)
    assert result.severity == expected
    assert result.reasons == (f"impact {impact}",)
    assert result.rule == "sev" + expected[-1]


@pytest.mark.parametrize(
    ("labels", "expected", "rule", "reason"),
    [
        # SEV-0: impact, or revenue > 10000 USD/h, or users > 90 %
        ({"impact": "outage"}, "SEV-0", "sev0", "impact outage"),
        (
            {"revenue_impact_usd_per_hour": "25000"},
            "SEV-0",
            "sev0",
            "revenue_impact_usd_per_hour 25000 > 10000",
        ),
        ({"user_impact_pct": "93"}, "SEV-0", "sev0", "user_impact_pct 93 > 90"),
        # SEV-1: impact, or users > 50 %
        ({"impact": "lb_failure"}, "SEV-1", "sev1", "impact lb_failure"),
        ({"user_impact_pct": "75"}, "SEV-1", "sev1", "user_impact_pct 75 > 50"),
        # SEV-2: impact, or no impact and 0 < users <= 50 %
        ({"impact": "error_rate"}, "SEV-2", "sev2", "impact error_rate"),
        (
            {"user_impact_pct": "20"},
            "SEV-2",
            "sev2",
            "user_impact_pct 20 in (0, 50] and no impact given",
        ),
        # SEV-3: impact, or anything not matched above
        ({"impact": "cosmetic"}, "SEV-3", "sev3", "impact cosmetic"),
        (
            {"revenue_impact_usd_per_hour": "500"},
            "SEV-3",
            "unmatched",
            "no rule matched revenue_impact_usd_per_hour 500",
        ),
        # none of impact, users, revenue: Alertmanager's severity label
        ({"severity": "critical"}, "SEV-1", "fallback", "fallback: severity label critical"),
    ],
)
def test_runbook_table_rows(labels: dict[str, str], expected: str, rule: str, reason: str) -> None:
    result = classify(labels, {}, POLICY)
    assert (result.severity, result.rule, result.reasons[0]) == (expected, rule, reason)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("user_impact_pct", "90", "SEV-1"),
        ("user_impact_pct", "90.1", "SEV-0"),
        ("user_impact_pct", "90.0001", "SEV-0"),
        ("user_impact_pct", "50", "SEV-2"),
        ("user_impact_pct", "50.1", "SEV-1"),
        ("user_impact_pct", "0", "SEV-3"),
        ("user_impact_pct", "0.01", "SEV-2"),
        ("user_impact_pct", "100", "SEV-0"),
        ("revenue_impact_usd_per_hour", "10000", "SEV-3"),
        ("revenue_impact_usd_per_hour", "10000.01", "SEV-0"),
        ("revenue_impact_usd_per_hour", "0", "SEV-3"),
    ],
)
def test_thresholds_are_strict(name: str, value: str, expected: str) -> None:
    assert sev({name: value}) == expected


def test_reasons_print_numbers_as_written() -> None:
    result = classify({"revenue_impact_usd_per_hour": "10000.01"}, {}, POLICY)
    assert result.reasons == ("revenue_impact_usd_per_hour 10000.01 > 10000",)


def test_zero_users_is_an_input_so_the_severity_label_is_not_used() -> None:
    result = classify({"user_impact_pct": "0", "severity": "critical"}, {}, POLICY)
    assert (result.severity, result.rule) == ("SEV-3", "unmatched")
    assert result.reasons == ("no rule matched user_impact_pct 0",)


@pytest.mark.parametrize("users", [0.0, 0.5, 12.0, 50.0, 50.5, 90.0, 90.5, 100.0])
def test_users_alone_follow_the_table_in_every_spelling(users: float) -> None:
    expected = by_users(users)
    for spelling in (f"{users}", f"{users}%", f" {users} % ", f"{users:g}%"):
        assert sev({"user_impact_pct": spelling}) == expected, spelling


# -- first match wins, and the reasons of the winning rule ---------------------------------


@pytest.mark.parametrize(
    ("labels", "expected", "reasons"),
    [
        ({"impact": "minor", "user_impact_pct": "95"}, "SEV-0", ("user_impact_pct 95 > 90",)),
        (
            {"impact": "cosmetic", "revenue_impact_usd_per_hour": "20000"},
            "SEV-0",
            ("revenue_impact_usd_per_hour 20000 > 10000",),
        ),
        ({"impact": "performance", "user_impact_pct": "60"}, "SEV-1", ("user_impact_pct 60 > 50",)),
        ({"impact": "outage", "user_impact_pct": "10"}, "SEV-0", ("impact outage",)),
        # With an impact given, users <= 50 do not make a SEV-2: the impact decides.
        ({"impact": "minor", "user_impact_pct": "30"}, "SEV-3", ("impact minor",)),
        (
            {"impact": "data_loss", "revenue_impact_usd_per_hour": "1e5", "user_impact_pct": "99%"},
            "SEV-0",
            (
                "impact data_loss",
                "revenue_impact_usd_per_hour 100000 > 10000",
                "user_impact_pct 99 > 90",
            ),
        ),
    ],
)
def test_first_matching_rule_wins(
    labels: dict[str, str], expected: str, reasons: tuple[str, ...]
) -> None:
    result = classify(labels, {}, POLICY)
    assert (result.severity, result.reasons) == (expected, reasons)


@pytest.mark.parametrize(
    "value", ["Outage", " OUTAGE ", "outage\n", "Data-Loss", "security breach", "DATA_LOSS"]
)
def test_impact_values_are_compared_loosely(value: str) -> None:
    assert sev({"impact": value}) == "SEV-0"


def test_an_unknown_impact_falls_to_sev3_with_a_reason() -> None:
    result = classify({"impact": "banana", "severity": "critical"}, {}, POLICY)
    assert (result.severity, result.rule) == ("SEV-3", "unmatched")
    assert "impact 'banana' is not a known impact category" in result.reasons


def test_an_unknown_impact_still_counts_as_an_impact_given() -> None:
    # The SEV-2 users rule is for alerts that name no impact; this one names one.
    result = classify({"impact": "banana", "user_impact_pct": "30"}, {}, POLICY)
    assert result.severity == "SEV-3"
    assert result.reasons[0] == "no rule matched impact 'banana', user_impact_pct 30"


def test_an_unknown_impact_does_not_hide_a_threshold() -> None:
    result = classify({"impact": "banana", "user_impact_pct": "95"}, {}, POLICY)
    assert result.severity == "SEV-0"
    assert result.reasons == (
        "user_impact_pct 95 > 90",
        "impact 'banana' is not a known impact category",
    )


# -- number spellings and garbage ----------------------------------------------------------


@pytest.mark.parametrize("value", ["93", "93.5", "93%", " 93 % ", "93 %", "\t93%\n", "9.3e1"])
def test_user_impact_pct_spellings(value: str) -> None:
    result = classify({"user_impact_pct": value}, {}, POLICY)
    assert result.severity == "SEV-0"
    assert result.reasons[0].startswith("user_impact_pct 93")


@pytest.mark.parametrize("value", ["12000", "12000.5", "$12000", "$12,000", " 12,000.50 "])
def test_revenue_spellings(value: str) -> None:
    assert sev({"revenue_impact_usd_per_hour": value}) == "SEV-0"


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("user_impact_pct", "lots", "not a number"),
        ("user_impact_pct", "9 3", "not a number"),
        ("user_impact_pct", "%", "not a number"),
        ("user_impact_pct", "93%%", "not a number"),
        ("user_impact_pct", "%93", "not a number"),
        ("user_impact_pct", "NaN", "not a finite number"),
        ("user_impact_pct", "inf", "not a finite number"),
        ("user_impact_pct", "-inf", "not a finite number"),
        ("user_impact_pct", "1e400", "not a finite number"),
        ("user_impact_pct", "-5", "negative"),
        ("user_impact_pct", "150", "above 100 %"),
        ("user_impact_pct", "100.5%", "above 100 %"),
        ("revenue_impact_usd_per_hour", "a lot", "not a number"),
        ("revenue_impact_usd_per_hour", "10%", "not a number"),
        ("revenue_impact_usd_per_hour", "12,00", "not a number"),
        ("revenue_impact_usd_per_hour", "nan", "not a finite number"),
        ("revenue_impact_usd_per_hour", "-1", "negative"),
    ],
)
def test_garbage_numbers_are_ignored_with_a_reason(name: str, value: str, why: str) -> None:
    # Ignored means absent: with nothing else given, the severity label decides.
    result = classify({name: value, "severity": "critical"}, {}, POLICY)
    assert (result.severity, result.rule) == ("SEV-1", "fallback")
    assert result.reasons == (
        "fallback: severity label critical",
        f"{name} {value!r} ignored: {why}",
    )


def test_garbage_does_not_hide_a_good_input() -> None:
    result = classify({"user_impact_pct": "lots", "impact": "outage"}, {}, POLICY)
    assert result.severity == "SEV-0"
    assert result.reasons == ("impact outage", "user_impact_pct 'lots' ignored: not a number")


def test_a_long_garbage_value_is_cut_short_in_the_reason() -> None:
    result = classify({"user_impact_pct": "x" * 10_000}, {}, POLICY)
    assert all(len(reason) < 200 for reason in result.reasons)


# -- the severity label fallback -----------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "expected", "reason"),
    [
        ({"severity": "critical"}, "SEV-1", "fallback: severity label critical"),
        ({"severity": "warning"}, "SEV-2", "fallback: severity label warning"),
        ({"severity": "error"}, "SEV-2", "fallback: severity label error"),
        ({"severity": " Critical "}, "SEV-1", "fallback: severity label critical"),
        ({"severity": "info"}, "SEV-3", "fallback: severity label 'info'"),
        ({"severity": "page"}, "SEV-3", "fallback: severity label 'page'"),
        ({}, "SEV-3", "fallback: no severity label"),
        ({"severity": ""}, "SEV-3", "fallback: no severity label"),
        ({"alertname": "Watchdog"}, "SEV-3", "fallback: no severity label"),
    ],
)
def test_severity_label_fallback(labels: dict[str, str], expected: str, reason: str) -> None:
    result = classify(labels, {}, POLICY)
    assert (result.severity, result.rule, result.reasons) == (expected, "fallback", (reason,))


def test_the_severity_label_never_overrides_an_impact() -> None:
    assert sev({"impact": "cosmetic", "severity": "critical"}) == "SEV-3"
    assert sev({"impact": "outage", "severity": "info"}) == "SEV-0"


# -- where inputs are read -----------------------------------------------------------------


def test_labels_take_precedence_over_annotations() -> None:
    assert sev({"impact": "minor"}, {"impact": "outage"}) == "SEV-3"
    assert sev({"user_impact_pct": "10"}, {"user_impact_pct": "95"}) == "SEV-2"
    assert sev({"severity": "warning"}, {"severity": "critical"}) == "SEV-2"


def test_annotations_are_read_when_labels_lack_an_input() -> None:
    assert sev({"severity": "warning"}, {"impact": "outage"}) == "SEV-0"
    assert sev({}, {"user_impact_pct": "60%", "severity": "critical"}) == "SEV-1"
    assert sev({}, {"severity": "critical"}) == "SEV-1"


def test_a_blank_label_does_not_hide_the_annotation() -> None:
    assert sev({"impact": " "}, {"impact": "outage"}) == "SEV-0"


def test_custom_input_names() -> None:
    policy = Policy(
        inputs=Inputs(
            impact=("runbook_impact", "impact"),
            user_impact_pct=("users_pct",),
            revenue_impact_usd_per_hour=("usd_per_hour",),
            severity=("priority",),
        )
    )
    result = classify({"users_pct": "95"}, {}, policy)
    assert result.reasons == ("user_impact_pct (users_pct) 95 > 90",)
    assert classify({"runbook_impact": "outage", "impact": "minor"}, {}, policy).severity == "SEV-0"
    assert classify({"impact": "minor"}, {}, policy).severity == "SEV-3"
    assert classify({"usd_per_hour": "20000"}, {}, policy).severity == "SEV-0"
    fallback = classify({"priority": "critical", "severity": "warning"}, {}, policy)
    assert (fallback.severity, fallback.reasons) == (
        "SEV-1",
        ("fallback: severity label (priority) critical",),
    )
    # The default names are no longer read.
    assert classify({"user_impact_pct": "95"}, {}, policy).rule == "fallback"


def test_classify_alert_reads_the_normalised_alert() -> None:
    alert = AlertEventData(
        status="firing",
        fingerprint="abc",
        labels={"alertname": "OriginDown", "severity": "warning"},
        annotations={"impact": "outage", "summary": "origin down"},
        group=GroupContext(receiver="sevpipe", group_key="{}:{}"),
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    result = classify_alert(alert, POLICY)
    assert (result.severity, result.reasons) == ("SEV-0", ("impact outage",))


# -- severity helpers ----------------------------------------------------------------------


def test_severity_order() -> None:
    assert [severity_rank(s) for s in SEVERITIES] == [3, 2, 1, 0]
    assert is_more_severe("SEV-0", "SEV-1")
    assert not is_more_severe("SEV-2", "SEV-2")
    assert not is_more_severe("SEV-3", "SEV-2")
    assert highest("SEV-2", "SEV-0", "SEV-3") == "SEV-0"
    assert highest("SEV-3") == "SEV-3"
    with pytest.raises(ValueError, match="at least one"):
        highest()


# -- never raises --------------------------------------------------------------------------

_KEYS = st.sampled_from(
    ["impact", "user_impact_pct", "revenue_impact_usd_per_hour", "severity", "alertname"]
)
_VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["outage", "minor", "critical", "warning", "93%", "NaN", "inf", "-5", "1e400"]),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.floats(min_value=-10, max_value=200).map(lambda f: f"{f}%"),
    st.integers().map(str),
)
_MAPS = st.dictionaries(st.one_of(_KEYS, st.text(max_size=10)), _VALUES, max_size=8)


@given(labels=_MAPS, annotations=_MAPS)
def test_classify_never_raises_and_always_explains(
    labels: dict[str, str], annotations: dict[str, str]
) -> None:
    result = classify(labels, annotations, POLICY)
    assert result.severity in SEVERITIES
    assert result.reasons
    assert all(isinstance(reason, str) and reason for reason in result.reasons)


@given(st.floats(min_value=0, max_value=100), st.sampled_from(["{}", "{}%", " {} % "]))
def test_users_alone_match_the_table(users: float, spelling: str) -> None:
    expected = by_users(users)
    assert sev({"user_impact_pct": spelling.format(users)}) == expected
