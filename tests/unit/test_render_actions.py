"""The approval and action messages as rendered from the shipped templates, and their Slack
card: what waits, why, until when, how to answer, and dry-run said for what it is."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from comms.channel import Links, Message
from comms.render import MAX_VALUE, Context, Renderer, describe_target
from comms.slack_blocks import ACKNOWLEDGE, card
from schemas.actions import ActionEventData, ApiRequest, Target
from schemas.incidents import Incident

T0 = datetime(2026, 3, 1, 12, 7, 30, tzinfo=UTC)
ACTION_ID = "01JNQ5ACT1ON0000000000000A"
API = f"https://sevpipe.example/api/v1/actions/{ACTION_ID}"
PATH = "/apis/apps/v1/namespaces/origin-production/deployments/origin-backend/scale"
TARGET = Target(kind="Deployment", namespace="origin-production", name="origin-backend")


def incident() -> Incident:
    return Incident(
        id="inc-01JNQ5INC1DENT00000000000",
        key="checkout",
        severity="SEV-1",
        status="open",
        title="Checkout <b>API</b> 5xx",
        reasons=("impact feature_degraded",),
        opened_at=T0,
        updated_at=T0,
    )


def asked(**kw: Any) -> ActionEventData:
    fields: dict[str, Any] = {
        "action_id": ACTION_ID,
        "incident_id": incident().id,
        "incident_version": 1,
        "playbook": "checkout-degraded",
        "step": "scale-up",
        "action": "kubernetes.scale",
        "target": TARGET,
        "params": {"replicas": 10},
        "risk": "mutating",
        "mode": "approve",
        "state": "awaiting_approval",
        "dry_run": False,
        "requests": (ApiRequest(method="PATCH", path=PATH, body={"spec": {"replicas": 10}}),),
        "reason": "replicas 50 capped at 10 (the inventory's maximum)",
        "expires_at": T0 + timedelta(minutes=30),
        "decided_at": T0,
    }
    return ActionEventData(**(fields | kw))


def render(
    data: ActionEventData, *, kind: str = "approval", links: Links | None = None
) -> tuple[str, str, str]:
    links = links or Links(incident="https://sevpipe.example/api/v1/incidents/x", action=API)
    ctx = Context(kind, incident(), links, action=data, now=T0)  # type: ignore[arg-type]
    out = Renderer().render(ctx, public=False)
    return out.subject, out.text, out.html


def test_a_live_approval_says_what_why_until_when_and_how_to_answer() -> None:
    subject, text, html = render(asked())
    what = "kubernetes.scale on Deployment origin-production/origin-backend"
    assert subject == f"[SEV-1] approval needed by 12:37 UTC: {what}"
    assert text.startswith(f"Approval needed: {what}\nFor SEV-1 open: Checkout <b>API</b> 5xx")
    assert "What it would do (mutating):" in text
    assert "- replicas: 10" in text  # the capped value the guard let through
    assert f'Requests it will send:\n- PATCH {PATH} {{"spec":{{"replicas":10}}}}' in text
    assert "step scale-up of playbook checkout-degraded is in mode approve" in text
    assert "Note: replicas 50 capped at 10 (the inventory's maximum)" in text
    assert "Expires 2026-03-01 12:37 UTC (in 30 min): unanswered by then, it does not run." in text
    assert f"  sevpipe approve {ACTION_ID}\n" in text
    assert f'  sevpipe deny {ACTION_ID} --reason "..."' in text
    assert f"POST {API}/approve" in text
    assert f"POST {API}/deny" in text
    assert "dry-run" not in (subject + text).lower()
    # HTML: the same, escaped.
    assert "Checkout &lt;b&gt;API&lt;/b&gt; 5xx" in html
    assert f"<code>PATCH {PATH}</code>" in html
    assert f"sevpipe approve {ACTION_ID}" in html
    assert "DRY-RUN" not in html


def test_a_dry_run_approval_says_that_approving_runs_nothing() -> None:
    subject, text, html = render(asked(dry_run=True))
    assert "(dry-run: approving runs nothing)" in subject
    assert text.startswith("DRY-RUN: approving runs nothing.")
    assert f"Requests live mode would send:\n- PATCH {PATH}" in text
    assert "Requests it will send" not in text
    assert "<strong>DRY-RUN: approving runs nothing.</strong>" in html
    # A read in dry-run does run once approved: it says so, and that it changes nothing.
    read = asked(dry_run=True, risk="read_only", action="kubernetes.get_state", params={})
    _, read_text, _ = render(read)
    assert read_text.startswith("DRY-RUN: this action only reads. Approving runs that read")


def test_without_a_public_url_the_cli_is_the_way_to_answer() -> None:
    _, text, html = render(asked(), links=Links())
    assert f"sevpipe approve {ACTION_ID}" in text
    assert "POST " not in text
    assert "/api/v1/" not in text + html


def test_an_approval_that_ran_out_offers_no_answer() -> None:
    subject, text, _ = render(asked(expires_at=T0 - timedelta(seconds=1)))
    assert subject.startswith("[SEV-1] approval ran out at 12:07 UTC:")
    assert "too late to answer; it will not run" in text
    assert "sevpipe approve" not in text


def test_long_values_are_capped_and_many_listed_in_part() -> None:
    params = {f"p{i:02}": "x" * 1000 for i in range(25)}
    requests = tuple(ApiRequest(method="GET", path=f"/r/{i}") for i in range(23))
    _, text, _ = render(asked(params=params, requests=requests))
    assert "- and 5 more parameters" in text
    assert "- and 3 more requests" in text
    assert max(len(line) for line in text.splitlines()) < MAX_VALUE + 20


@pytest.mark.parametrize(
    ("state", "actor", "reason", "subject", "says"),
    [
        ("succeeded", "alice", None, "action done", "Done: kubernetes.scale on "),
        ("failed", None, "ApiException: 422", "action failed", "Reason: ApiException: 422"),
        ("denied", "bob", "freeze", "action denied by bob", "Denied by bob: "),
        ("expired", "sevpipe", "nobody approved it within 30m", "approval expired, not run", ""),
    ],
)
def test_outcomes_are_worded_by_state(
    state: str, actor: str | None, reason: str | None, subject: str, says: str
) -> None:
    data = asked(state=state, actor=actor, reason=reason, expires_at=None)
    got_subject, text, html = render(data, kind="action")
    assert got_subject.startswith(f"[SEV-1] {subject}: kubernetes.scale on Deployment ")
    assert says in text
    if reason:
        assert reason in text
        assert reason in html
    if state == "denied":
        assert "Why: freeze" in text


def test_action_news_is_never_rendered_for_a_public_route() -> None:
    ctx = Context("approval", incident(), Links(), action=asked(), now=T0)
    with pytest.raises(ValueError, match="internal"):
        Renderer().render(ctx, public=True)
    Renderer().check()  # the shipped templates, the new ones included, all load


def test_describe_target() -> None:
    assert describe_target(TARGET) == "Deployment origin-production/origin-backend"
    pods = Target(kind="Pods", namespace="origin-production", selector={"app": "web", "b": "1"})
    assert describe_target(pods) == "Pods origin-production [app=web,b=1]"


def test_the_slack_card_of_an_approval_is_titled_by_it_and_has_no_incident_buttons() -> None:
    subject, text, _ = render(asked())
    message = Message(
        effect_id="eff-1",
        incident=incident(),
        kind="approval",
        route="incident_channel",
        audience="team",
        subject=subject,
        text=text,
        links=Links(incident="https://sevpipe.example/api/v1/incidents/x", action=API),
    )
    blocks = card(message, buttons=True)
    assert blocks[0]["text"]["text"] == subject
    assert f"<{API}|Action>" in json.dumps(blocks)
    assert ACKNOWLEDGE not in json.dumps(blocks)
    assert blocks[-1]["elements"][0]["text"].startswith("*approval* · SEV-1 · ")
