"""Slack's request signing (v0), for requests Slack sends us (slash commands, interactivity).

https://api.slack.com/authentication/verifying-requests-from-slack: the signature is
``v0=`` + hex HMAC-SHA256 of ``v0:{timestamp}:{body}`` under the app's signing secret, and a
timestamp more than five minutes from now is refused so a captured request cannot be replayed.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

MAX_AGE_SECONDS: Final = 5 * 60


class BadSlackSignature(Exception):
    """The request is not provably from Slack, or not from now: answer 401, act on nothing."""


def expected_signature(signing_secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


def verify_slack_request(
    signing_secret: str, timestamp: str, signature: str, body: bytes, now: float
) -> None:
    """Raise ``BadSlackSignature`` unless ``signature`` (``X-Slack-Signature``) signs ``body``
    at ``timestamp`` (``X-Slack-Request-Timestamp``) and that is within 5 minutes of ``now``."""
    if not signing_secret:
        raise BadSlackSignature("no Slack signing secret is configured")
    if not timestamp:
        raise BadSlackSignature("missing X-Slack-Request-Timestamp")
    if not signature:
        raise BadSlackSignature("missing X-Slack-Signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise BadSlackSignature("X-Slack-Request-Timestamp is not a Unix time") from None
    age = now - sent_at
    if abs(age) > MAX_AGE_SECONDS:
        when = f"{age:.0f}s old" if age > 0 else f"{-age:.0f}s in the future"
        raise BadSlackSignature(f"X-Slack-Request-Timestamp is {when}, beyond 5 minutes")
    expected = expected_signature(signing_secret, timestamp, body)
    # Bytes, so a non-ASCII forged header is refused, not a TypeError.
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise BadSlackSignature("X-Slack-Signature does not match the body and timestamp")
