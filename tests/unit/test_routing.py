"""The routing file: impact routes added to a severity's, merged once each, checked at load
with file:line errors; the shipped defaults; and the impacts comms reads off an incident
(the real classifier's reasons, the alerts' impact label)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from classifier.classify import classify
from classifier.policy import default_policy
from comms.impacts import impacts_of
from comms.routing import (
    CHAT_ROUTES,
    TASK_ROUTES,
    Routing,
    RoutingError,
    default_routing,
    load_routing,
)
from schemas.incidents import IncidentAlert

SEVERITIES = """\
severities:
  SEV-0: [incident_channel, leadership_email]
  SEV-1: [incident_channel]
  SEV-2: [team_channel]
  SEV-3: [outbox]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    return path


def names(routing: Routing, severity: str, impacts: set[str] | None = None) -> list[str]:
    return [r.name for r in routing.routes(severity, impacts or set())]  # type: ignore[arg-type]


def test_a_file_without_impact_routes_loads_as_before(tmp_path: Path) -> None:
    routing = load_routing(write(tmp_path, SEVERITIES))
    assert routing.impact_routes == {}
    assert names(routing, "SEV-0", {"security_breach"}) == ["incident_channel", "leadership_email"]
    assert routing.routed_impacts("SEV-0") == frozenset()


def test_impact_routes_are_added_after_the_severitys_once_each(tmp_path: Path) -> None:
    routing = load_routing(
        write(
            tmp_path,
            SEVERITIES
            + """\
impact_routes:
  SEV-0:
    security_breach: [security_channel, incident_channel, security_email]
    data_loss: [team_email, security_email]
  SEV-2:
    security_breach: [security_channel]
""",
        )
    )
    assert names(routing, "SEV-0") == ["incident_channel", "leadership_email"]
    assert names(routing, "SEV-0", {"outage"}) == ["incident_channel", "leadership_email"]
    assert names(routing, "SEV-0", {"security_breach"}) == [
        "incident_channel",
        "leadership_email",
        "security_channel",
        "security_email",
    ]
    assert names(routing, "SEV-0", {"security_breach", "data_loss"}) == [
        "incident_channel",
        "leadership_email",
        "security_channel",
        "security_email",
        "team_email",
    ]
    assert names(routing, "SEV-2", {"security_breach"}) == ["team_channel", "security_channel"]
    assert names(routing, "SEV-1", {"security_breach"}) == ["incident_channel"]
    assert routing.routed_impacts("SEV-0") == {"security_breach", "data_loss"}
    sec = routing.routes("SEV-2", {"security_breach"})[-1]
    assert (sec.channel, sec.audience, sec.public, sec.threaded) == (
        "slack",
        "security",
        False,
        True,
    )
    mail = next(r for r in routing.routes("SEV-0", {"data_loss"}) if r.name == "security_email")
    assert (mail.channel, mail.audience, mail.public) == ("email", "security", False)


@pytest.mark.parametrize(
    ("tail", "line", "message"),
    [
        (
            "impact_routes:\n  SEV-0:\n    security_breach: [security_channel, pager]\n",
            8,
            "impact_routes.SEV-0.security_breach.1: Input should be",
        ),
        (
            "impact_routes:\n  SEV-0:\n    Security-Breach: [security_channel]\n",
            8,
            "write impact 'Security-Breach' as 'security_breach'",
        ),
        (
            "impact_routes:\n  SEV-0:\n    security_breach:\n      - security_email\n"
            "      - security_email\n",
            10,
            "impact_routes.SEV-0.security_breach.1: security_email is listed twice",
        ),
        (
            "impact_routes:\n  SEV-1:\n    security_breach: [security_channel]\n"
            "    data_loss:\n      - status_page\n",
            10,
            "impact_routes.SEV-1.data_loss.0: status_page is chosen by severity only",
        ),
        (
            "impact_routes:\n  SEV-9:\n    security_breach: [security_channel]\n",
            7,
            "impact_routes.SEV-9",
        ),
        ("impact_route:\n  SEV-0: {}\n", 6, "unknown key (did you mean impact_routes?)"),
    ],
)
def test_load_errors_name_the_file_and_line(
    tmp_path: Path, tail: str, line: int, message: str
) -> None:
    path = write(tmp_path, SEVERITIES + tail)
    with pytest.raises(RoutingError) as caught:
        load_routing(path)
    text = str(caught.value)
    assert text.startswith(f"{path}:{line}: "), text
    assert message in text


def test_a_route_listed_twice_for_a_severity_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, SEVERITIES.replace("[team_channel]", "[team_channel, team_channel]"))
    with pytest.raises(RoutingError, match=rf"^{path}:4: severities.SEV-2.1: team_channel is"):
        load_routing(path)


def test_the_defaults_send_a_sev0_or_sev1_security_breach_to_the_security_team() -> None:
    routing = default_routing()
    security = {"security_channel", "security_email"}
    for sev in ("SEV-0", "SEV-1"):
        assert security <= set(names(routing, sev, {"security_breach"}))
        assert not security & set(names(routing, sev, {"outage"}))
    for sev in ("SEV-2", "SEV-3"):
        assert not security & set(names(routing, sev, {"security_breach"}))
    assert "security_channel" in CHAT_ROUTES
    told_tasks_only = TASK_ROUTES - CHAT_ROUTES
    assert told_tasks_only == {"security_email"}
    assert CHAT_ROUTES <= TASK_ROUTES


def alert(labels: dict[str, str], reasons: tuple[str, ...] = ()) -> IncidentAlert:
    return IncidentAlert(
        fingerprint="f1",
        status="firing",
        severity="SEV-0",
        reasons=reasons,
        labels=labels,
        starts_at=datetime(2026, 3, 1, tzinfo=UTC),
    )


def test_impacts_are_read_from_the_real_classifiers_reasons_and_the_impact_label() -> None:
    policy = default_policy()
    decided = classify({"impact": "Security-Breach", "user_impact_pct": "95"}, {}, policy)
    assert decided.severity == "SEV-0"
    # As the classifier puts them on an incident (behind the alert's name) and on its alerts.
    incident_reasons = [f"BreachDetected: {r}" for r in decided.reasons]
    assert impacts_of(incident_reasons) == {"security_breach"}
    assert impacts_of((), [alert({}, decided.reasons)]) == {"security_breach"}
    # An alert's impact label, normalised as the policy and the playbooks compare it.
    assert impacts_of((), [alert({"impact": "Data-Loss"})]) == {"data_loss"}
    # What is not an impact the classification matched is not read.
    users_only = classify({"user_impact_pct": "95"}, {}, policy)
    assert impacts_of([f"X: {r}" for r in users_only.reasons]) == frozenset()
    unknown = classify({"impact": "security_breach_maybe"}, {}, policy)
    assert impacts_of([f"X: {r}" for r in unknown.reasons]) == frozenset()
    assert impacts_of(["set by alice: impact security_breach"]) == frozenset()
    assert impacts_of(["X: no rule matched impact security_breach"]) == frozenset()
