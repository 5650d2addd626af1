"""Slack Block Kit cards and channel names for a message: pure functions, no I/O.

Titles, reasons and runbook URLs come from alerts, so anyone who can fire an alert writes into
them. Slack reads ``&``, ``<`` and ``>`` as control characters in every text object (``<!here>``
pings a channel, ``<http://x|y>`` hides a link behind words), so each such string is escaped
before it is placed, and only the links this module builds itself stay live.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC
from typing import Any, Final
from urllib.parse import urlsplit

from comms.channel import Message
from schemas.incidents import Incident

Block = dict[str, Any]

HEADER_MAX: Final = 150
"""Slack's limit on a header block's text."""
SECTION_MAX: Final = 3000
"""Slack's limit on a section's text (and the length we allow the fallback text)."""
CHANNEL_NAME_MAX: Final = 80

_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_ESCAPES: Final = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def escape(text: str) -> str:
    """``text`` shown as itself in any Slack text object: no mention, link or entity in it."""
    return text.translate(_ESCAPES)


def escape_fit(text: str, limit: int) -> str:
    """``escape(text)``, cut to at most ``limit`` characters without splitting an entity."""
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    # Cut between whole entities, so "&amp;" never ends as a broken "&am".
    pieces: list[str] = []
    used = 0
    for char in text:
        piece = escape(char)
        if used + len(piece) > limit - 1:
            break
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces) + "…"


def slug(title: str) -> str:
    """Lowercase ``[a-z0-9-]`` form of ``title``; accents are dropped, not the letters."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    return _NOT_SLUG.sub("-", ascii_title.lower()).strip("-")


def channel_name(incident: Incident) -> str:
    """``incident-<yyyymmdd-hhmm>-<slug>`` (UTC opening time), at most 80 characters."""
    prefix = "incident-" + incident.opened_at.astimezone(UTC).strftime("%Y%m%d-%H%M")
    rest = slug(incident.title)[: CHANNEL_NAME_MAX - len(prefix) - 1].rstrip("-")
    return f"{prefix}-{rest}" if rest else prefix


REMEDIATION_KINDS: Final = frozenset({"approval", "action", "task"})
"""Cards about a remediation action: titled by what waits, happened or is to be done, not
the incident."""


def header_text(message: Message) -> str:
    """The card's one-line title, unescaped. A public message has no alert text, so its
    title is the stage's public subject rather than the incident's (alert-made) title; a
    card about an action says what waits or happened, which is its subject too."""
    if message.public or message.kind in REMEDIATION_KINDS:
        return message.subject
    return f"{message.incident.severity}: {message.incident.title}"


def fallback_text(message: Message) -> str:
    """The ``text`` that notifications and old clients show in place of the blocks."""
    return escape_fit(message.subject or header_text(message), SECTION_MAX)


def link(url: str, label: str) -> str:
    """A live mrkdwn link, or the escaped URL as text when it is not plain http(s)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return escape(f"{label}: {url}")
    # "|" would end the URL early and let the rest of it choose the link's words.
    return f"<{escape(url).replace('|', '%7C')}|{escape(label)}>"


ACKNOWLEDGE: Final = "sevpipe_acknowledge"
COMMANDER: Final = "sevpipe_commander"
"""The buttons' action ids, as ``POST /api/v1/slack/interactions`` receives them."""


def card(message: Message, *, buttons: bool = False) -> list[Block]:
    """The Block Kit card: header, body, links (when any), and what kind of message it is."""
    blocks: list[Block] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": escape_fit(header_text(message), HEADER_MAX),
                "emoji": False,
            },
        }
    ]
    if message.text.strip():
        blocks.append(
            {
                "type": "section",
                # verbatim: Slack must not turn words in alert text into channel links.
                "text": {
                    "type": "mrkdwn",
                    "text": escape_fit(message.text, SECTION_MAX),
                    "verbatim": True,
                },
            }
        )
    given = message.links
    links = [
        link(url, label)
        for url, label in (
            (given.incident, "Incident"),
            (given.action, "Action"),
            (given.runbook, "Runbook"),
        )
        if url
    ]
    if links:
        blocks.append(_context(" · ".join(links)))
    incident = message.incident
    blocks.append(
        _context(f"*{escape(message.kind)}* · {incident.severity} · {escape(incident.id)}")
    )
    people = not message.public and message.kind not in REMEDIATION_KINDS
    if buttons and people and incident.status == "open":
        blocks.append({"type": "actions", "elements": _buttons(incident.id)})
    return blocks


def _buttons(incident_id: str) -> list[Block]:
    return [
        {
            "type": "button",
            "action_id": ACKNOWLEDGE,
            "text": {"type": "plain_text", "text": "Acknowledge"},
            "value": incident_id,
        },
        {
            "type": "button",
            "action_id": COMMANDER,
            "text": {"type": "plain_text", "text": "I'm commander"},
            "value": incident_id,
            "style": "primary",
        },
    ]


def _context(text: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text, "verbatim": True}]}
