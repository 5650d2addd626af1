"""The Slack card and channel name: content, limits, and alert text that cannot ping or link."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comms.channel import Links, Message
from comms.slack_blocks import (
    HEADER_MAX,
    SECTION_MAX,
    card,
    channel_name,
    escape,
    escape_fit,
    fallback_text,
    link,
    slug,
)
from schemas.incidents import Incident

T0 = datetime(2026, 3, 1, 12, 7, tzinfo=UTC)
EVIL = "<!channel> & <!here> <@U123> <http://evil.example|click> <#C1>"


def incident(title: str = "Checkout API 5xx", **kw: Any) -> Incident:
    fields: dict[str, Any] = {
        "id": "inc-1",
        "key": "checkout",
        "severity": "SEV-1",
        "status": "open",
        "title": title,
        "reasons": ("error rate above 5%",),
        "opened_at": T0,
        "updated_at": T0,
    }
    return Incident(**(fields | kw))


def message(inc: Incident | None = None, **kw: Any) -> Message:
    fields: dict[str, Any] = {
        "effect_id": "eff-1",
        "incident": inc or incident(),
        "kind": "opened",
        "route": "incident_channel",
        "audience": "team",
        "subject": "[SEV-1] opened: Checkout API 5xx",
        "text": "SEV-1 open: Checkout API 5xx\n\nImpact:\n- error rate above 5%",
        "links": Links(incident="https://sevpipe.example/incidents/inc-1"),
    }
    return Message(**(fields | kw))


def texts(blocks: list[dict[str, Any]]) -> list[str]:
    """Every text Slack would render from the blocks."""
    out: list[str] = []
    for block in blocks:
        if "text" in block:
            out.append(block["text"]["text"])
        out.extend(e["text"] for e in block.get("elements", ()))
    return out


# A control sequence that survived escaping: "<" or a bare "&" not starting an entity.
UNSAFE = re.compile(r"<(?!http)|&(?!amp;|lt;|gt;)")


def test_card_layout() -> None:
    blocks = card(message(links=Links("https://s.example/i/1", "https://wiki.example/rb")))
    assert [b["type"] for b in blocks] == ["header", "section", "context", "context"]
    assert blocks[0]["text"] == {
        "type": "plain_text",
        "text": "SEV-1: Checkout API 5xx",
        "emoji": False,
    }
    assert blocks[1]["text"]["text"].startswith("SEV-1 open: Checkout API 5xx\n\nImpact:")
    assert blocks[1]["text"]["verbatim"] is True
    assert blocks[2]["elements"][0]["text"] == (
        "<https://s.example/i/1|Incident> · <https://wiki.example/rb|Runbook>"
    )
    assert blocks[3]["elements"][0]["text"] == "*opened* · SEV-1 · inc-1"


def test_links_only_when_given() -> None:
    none = card(message(links=Links()))
    assert [b["type"] for b in none] == ["header", "section", "context"]
    runbook_only = card(message(links=Links(runbook="https://wiki.example/rb")))
    assert runbook_only[2]["elements"][0]["text"] == "<https://wiki.example/rb|Runbook>"


def test_empty_body_has_no_section() -> None:
    assert "section" not in [b["type"] for b in card(message(text="  "))]


def test_alert_text_is_escaped_everywhere() -> None:
    inc = incident(title=EVIL, reasons=(EVIL,))
    msg = message(inc, subject=f"[SEV-1] opened: {EVIL}", text=f"reason: {EVIL}")
    blocks = card(msg)
    rendered = [*texts(blocks), fallback_text(msg)]
    for text in rendered:
        assert UNSAFE.search(text) is None, text
    assert "&lt;!channel&gt; &amp; &lt;!here&gt; &lt;@U123&gt;" in blocks[0]["text"]["text"]
    assert "&lt;http://evil.example|click&gt;" in blocks[1]["text"]["text"]
    assert fallback_text(msg).startswith("[SEV-1] opened: &lt;!channel&gt;")
    assert "<!channel>" not in json.dumps(blocks)


def test_runbook_link_from_an_alert_cannot_inject() -> None:
    # The runbook URL comes from an alert's annotations.
    assert link("https://wiki.example/rb?a=1&b=<x>", "Runbook") == (
        "<https://wiki.example/rb?a=1&amp;b=&lt;x&gt;|Runbook>"
    )
    assert link("https://wiki.example/rb|<!channel>", "Runbook") == (
        "<https://wiki.example/rb%7C&lt;!channel&gt;|Runbook>"
    )
    assert link("javascript:alert(1)", "Runbook") == "Runbook: javascript:alert(1)"
    assert link("<!here>", "Runbook") == "Runbook: &lt;!here&gt;"


def test_public_message_header_uses_the_subject_not_the_alert_title() -> None:
    msg = message(
        incident(title="db-7 disk full (internal)"),
        public=True,
        audience="public",
        subject="Investigating: degraded service",
    )
    assert card(msg)[0]["text"]["text"] == "Investigating: degraded service"
    assert "db-7" not in json.dumps(card(msg))


def test_limits_are_kept_without_breaking_an_entity() -> None:
    msg = message(incident(title="&" * 400), text="<" * 5000)
    blocks = card(msg)
    header, body = blocks[0]["text"]["text"], blocks[1]["text"]["text"]
    assert len(header) <= HEADER_MAX
    assert header.endswith("…")
    assert len(body) <= SECTION_MAX
    assert body.endswith("&lt;…")
    assert UNSAFE.search(header) is None
    assert UNSAFE.search(body) is None


@given(st.text(max_size=400), st.integers(min_value=2, max_value=200))
def test_escape_fit_is_safe_and_bounded(text: str, limit: int) -> None:
    fitted = escape_fit(text, limit)
    assert len(fitted) <= limit
    assert UNSAFE.search(fitted) is None
    if len(escape(text)) <= limit:
        assert fitted == escape(text)


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Checkout API 5xx", "checkout-api-5xx"),
        ("  <!channel> DB: 99% CPU!! ", "channel-db-99-cpu"),
        ("Zürich façade", "zurich-facade"),
        ("日本語", ""),
        ("a_b.c", "a-b-c"),
    ],
)
def test_slug(title: str, expected: str) -> None:
    assert slug(title) == expected


def test_channel_name_shape() -> None:
    assert channel_name(incident()) == "incident-20260301-1207-checkout-api-5xx"
    # The opening time is taken in UTC whatever zone it was given in.
    local = T0.astimezone(timezone(timedelta(hours=-5)))
    assert channel_name(incident(opened_at=local)).startswith("incident-20260301-1207-")
    assert channel_name(incident(title="日本語")) == "incident-20260301-1207"


@given(st.text(max_size=300))
def test_channel_name_is_always_valid_for_slack(title: str) -> None:
    name = channel_name(incident(title=title))
    assert re.fullmatch(r"incident-\d{8}-\d{4}(-[a-z0-9]+)*", name), name
    assert len(name) <= 80


def test_cards_carry_the_buttons_only_when_asked_for_internal_open_incidents() -> None:
    from comms.slack_blocks import ACKNOWLEDGE, COMMANDER

    internal = message()
    blocks = card(internal, buttons=True)
    [actions] = [b for b in blocks if b["type"] == "actions"]
    assert [(e["action_id"], e["value"]) for e in actions["elements"]] == [
        (ACKNOWLEDGE, internal.incident.id),
        (COMMANDER, internal.incident.id),
    ]
    assert not [b for b in card(internal) if b["type"] == "actions"]
    public = message(public=True, route="status_page", audience="public")
    assert not [b for b in card(public, buttons=True) if b["type"] == "actions"]
