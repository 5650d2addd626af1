"""Slack's v0 request signature: what passes, and every way a request is refused."""

from __future__ import annotations

import pytest
from slack_sdk.signature import SignatureVerifier

from comms.slack_signing import BadSlackSignature, expected_signature, verify_slack_request

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
NOW = 1_700_000_000.0
TS = str(int(NOW))
BODY = b"token=xyz&team_id=T1&command=%2Fsev&text=ack+inc-1"


def signed(body: bytes = BODY, ts: str = TS, secret: str = SECRET) -> str:
    return expected_signature(secret, ts, body)


def test_a_valid_signature_passes() -> None:
    verify_slack_request(SECRET, TS, signed(), BODY, NOW)


def test_agrees_with_slack_sdk() -> None:
    class Clock:
        def now(self) -> float:
            return NOW

    sdk = SignatureVerifier(SECRET, clock=Clock())  # type: ignore[arg-type]
    assert sdk.generate_signature(timestamp=TS, body=BODY) == signed()
    assert sdk.is_valid(BODY, TS, signed())


def test_slack_documented_example() -> None:
    # The worked example in Slack's "Verifying requests from Slack" guide.
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
        b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
        b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2F"
        b"commands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
        b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )
    verify_slack_request(
        SECRET,
        "1531420618",
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        body,
        1531420618.0 + 10,
    )


@pytest.mark.parametrize(
    "case",
    [
        ("wrong-secret", TS, signed(), BODY, NOW, "does not match"),
        (SECRET, TS, signed(), BODY + b"&text=resolve", NOW, "does not match"),
        (SECRET, TS, signed(ts=str(int(NOW) - 1)), BODY, NOW, "does not match"),
        (SECRET, TS, signed().replace("v0=", "v1="), BODY, NOW, "does not match"),
        (SECRET, TS, "v0=é" + signed()[4:], BODY, NOW, "does not match"),
        (SECRET, TS, signed(), BODY, NOW + 301, "301s old"),
        (SECRET, TS, signed(), BODY, NOW - 301, "301s in the future"),
        (SECRET, "", signed(), BODY, NOW, "missing X-Slack-Request-Timestamp"),
        (SECRET, TS, "", BODY, NOW, "missing X-Slack-Signature"),
        (SECRET, "soon", signed(ts="soon"), BODY, NOW, "not a Unix time"),
        ("", TS, signed(secret=""), BODY, NOW, "no Slack signing secret"),
    ],
    ids=[
        "wrong-secret",
        "tampered-body",
        "other-timestamp",
        "other-version",
        "non-ascii",
        "stale",
        "future",
        "no-timestamp",
        "no-signature",
        "bad-timestamp",
        "no-secret",
    ],
)
def test_refused(case: tuple[str, str, str, bytes, float, str]) -> None:
    secret, ts, signature, body, now, why = case
    with pytest.raises(BadSlackSignature, match=why):
        verify_slack_request(secret, ts, signature, body, now)


def test_the_window_is_five_minutes_either_side() -> None:
    verify_slack_request(SECRET, TS, signed(), BODY, NOW + 300)
    verify_slack_request(SECRET, TS, signed(), BODY, NOW - 300)
