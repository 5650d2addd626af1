"""What every communication channel offers the comms stage, and what it is given.

The stage decides the messages (routing, templates, cadence) and sends each through the
effects ledger, so a message is posted once whatever crashes: ``send`` is the ledger's ``do``
and ``check`` its ``check`` (run instead of ``send`` when an earlier attempt may have posted
it). A channel never decides what to say; it only says it, escaped for its medium.

Errors:

- ``ChannelRetry`` (retriable): a 429, a 5xx, a timeout, the server away. The channel has
  already retried in-process (tenacity, honouring ``Retry-After``) for a bounded time; the
  stage gives the claim back and tries again later, checking first.
- ``ChannelRefused`` (not retriable): a permanent answer (``channel_not_found``,
  ``invalid_auth``, a 4xx). Recorded as the effect's failed outcome and published as
  ``notification.failed`` with ``reason``; never retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from schemas.incidents import Incident

Audience = Literal["team", "leadership", "org", "support", "public", "security"]
"""Who a message is for. ``org``, ``support`` and ``public`` get public templates only: what
customer support may tell customers is the approved public wording, nothing else.
``security`` is the security team (routed by impact, e.g. ``security_breach``): internal."""

MessageKind = Literal[
    "opened",
    "escalated",
    "reopened",
    "resolved",
    "update",
    "unacknowledged",
    "acknowledged",
    "commander",
    "approval",
    "action",
    "task",
]
"""Incident news, and remediation news (``approval``: an action waits for a person;
``action``: what became of one people must know about; ``task``: work a ``people.*`` action
opened for people, e.g. credentials to rotate), the latter for chat routes only (a ``task``
for the security email route too)."""

Outcome = Mapping[str, Any]
"""What a channel did, as JSON: ids the server gave (Slack channel and ts, the Statuspage
incident id, the email's Message-ID) and the request made. It is recorded in the effects
ledger and published in ``notification.sent``, so it never holds a secret."""


@dataclass(frozen=True)
class Links:
    incident: str = ""
    """The incident in sevpipe's API or UI ("" when no public base URL is configured)."""
    runbook: str = ""
    action: str = ""
    """The remediation action a message is about, in sevpipe's API ("" when none, or no
    public base URL is configured); answered at ``{action}/approve`` and ``{action}/deny``."""


@dataclass(frozen=True)
class Message:
    """One message to one route, rendered; what ``send`` posts and ``check`` looks for."""

    effect_id: str
    """Deterministic (from the triggering event, the route and the kind): the ledger's key,
    and the mark a channel leaves on what it posted so ``check`` can find it."""
    incident: Incident
    kind: MessageKind
    route: str
    """The routing entry, e.g. ``incident_channel``, ``team_channel``, ``leadership_email``,
    ``status_page``."""
    audience: Audience
    subject: str
    """One line of plain text (no newline), unescaped: each channel escapes for its medium."""
    text: str
    """The body as plain text, unescaped."""
    html: str = ""
    """The body as HTML (email), rendered from an autoescaping template: already safe."""
    public: bool = False
    """Rendered from public (approved) templates only: no alert text in it."""
    links: Links = field(default_factory=Links)
    components: tuple[str, ...] = ()
    """Names of the affected components (from the routing's inventory), for status pages."""
    cause: str = ""
    """Id of the event that made the stage send this message."""


class ChannelRetry(Exception):
    """Try again later; the channel retried in-process already. ``retry_after`` in seconds,
    when the server said (a 429's ``Retry-After``)."""

    retriable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ChannelRefused(Exception):
    """A permanent refusal: recorded as ``notification.failed`` with ``reason``, never retried."""

    retriable = False

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Channel(Protocol):
    """A medium messages go out through (Slack, email, Statuspage, the console outbox)."""

    name: str
    """The channel's kind, as ``notification.*`` events name it: ``slack``, ``email``, ..."""

    async def send(self, message: Message, thread: Outcome | None) -> Outcome:
        """Post ``message``; ``thread`` is the outcome of the incident's first message on
        this route (Slack threads under it, Statuspage updates that incident), None when
        this message is the first. Raises ``ChannelRetry`` or ``ChannelRefused``."""
        ...

    async def check(self, message: Message, thread: Outcome | None) -> Outcome | None:
        """Whether an earlier ``send`` of ``message`` took effect (its outcome), or None.
        A channel that cannot tell (SMTP) returns None, and the message may go twice; say so
        in its docstring."""
        ...

    async def close(self) -> None: ...
