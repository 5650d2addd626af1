"""EmailChannel against a real SMTP server (aiosmtpd): what the server received is the truth."""

from __future__ import annotations

import base64
import json
import logging
import socket
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import MIMEPart
from pathlib import Path
from typing import Any

import pytest
import trustme
from smtp_server import SmtpServer, smtp_server

from comms.channel import Audience, ChannelRefused, ChannelRetry, Message, MessageKind
from comms.email import EmailChannel, EmailConfig
from schemas.incidents import Incident

USER = "sevpipe-mailer"
PASSWORD = "s3cret-Pa55-w0rd"
FROM = "sevpipe@example.org"
AUDIENCES = {
    "team": ["oncall-a@example.org", "oncall-b@example.org"],
    "leadership": ["cto@example.org"],
    "org": ["all@example.org", "eng@example.org", "ops@example.org"],
}
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def incident() -> Incident:
    return Incident(
        id="inc-42",
        key="service=db",
        severity="SEV-1",
        status="open",
        title="Database unreachable",
        reasons=("alert DBDown is critical",),
        opened_at=NOW,
        updated_at=NOW,
    )


def message(
    effect_id: str = "eff-opened-1",
    *,
    audience: Audience = "team",
    kind: MessageKind = "opened",
    subject: str = "[SEV-1] Database unreachable",
    text: str = "The database is unreachable.\n",
    html: str = "",
) -> Message:
    return Message(
        effect_id=effect_id,
        incident=incident(),
        kind=kind,
        route=f"{audience}_email",
        audience=audience,
        subject=subject,
        text=text,
        html=html,
    )


def config(server: SmtpServer, **changes: Any) -> EmailConfig:
    fields: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "security": "none",
        "from_address": FROM,
        "audiences": AUDIENCES,
        "timeout": 5.0,
        "max_retry_seconds": 2.0,
        "retry_initial_wait": 0.01,
    }
    if server.ca_file is not None:
        fields["ca_file"] = server.ca_file
    return EmailConfig.model_validate({**fields, **changes})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SmtpServer]:
    with smtp_server(tmp_path) as running:
        yield running


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtp-password"
    path.write_text(PASSWORD + "\n")
    return path


def content(part: MIMEPart | None) -> str:
    """A text part as sent, its SMTP line endings (CRLF) back to the caller's."""
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_one_message_per_send_to_the_audience(server: SmtpServer) -> None:
    channel = EmailChannel(config(server))
    outcomes = [
        await channel.send(message(f"eff-{audience}", audience=audience), None)
        for audience in ("team", "leadership", "org")
    ]
    received = server.recorder.received
    assert [r.rcpt_tos for r in received] == [tuple(AUDIENCES[a]) for a in AUDIENCES]
    assert [r.mail_from for r in received] == [FROM] * 3
    assert received[0].message["To"] == "oncall-a@example.org, oncall-b@example.org"
    assert received[0].message["From"] == FROM
    assert received[0].message["X-Sevpipe-Incident"] == "inc-42"
    assert received[0].message["X-Sevpipe-Effect"] == "eff-team"
    assert received[0].message["Date"] is not None
    assert outcomes[2]["recipients"] == AUDIENCES["org"]
    assert outcomes[2]["accepted"] == 3
    assert outcomes[2]["refused"] == {}
    assert server.recorder.transactions == 3
    await channel.close()


async def test_an_audience_without_addresses_is_refused_without_connecting(
    server: SmtpServer,
) -> None:
    channel = EmailChannel(config(server))
    with pytest.raises(ChannelRefused) as refused:
        await channel.send(message(audience="public"), None)
    assert refused.value.reason == "no_recipients"
    assert server.recorder.connections == 0


async def test_text_and_html_parts_html_unchanged(server: SmtpServer) -> None:
    text = "Disk full on db-1 & db-2 <now>.\n"
    html = "<p>Disk <b>full</b> on db-1 &amp; db-2 &lt;now&gt;.</p>\n"
    await EmailChannel(config(server)).send(message(text=text, html=html), None)
    (received,) = server.recorder.received
    mail = received.message
    assert mail.get_content_type() == "multipart/alternative"
    assert content(mail.get_body(("plain",))) == text
    assert content(mail.get_body(("html",))) == html


async def test_text_only_when_no_html(server: SmtpServer) -> None:
    await EmailChannel(config(server)).send(message(text="Resolved.\n"), None)
    (received,) = server.recorder.received
    assert received.message.get_content_type() == "text/plain"
    assert content(received.message) == "Resolved.\n"


async def test_message_id_comes_from_the_effect_id(server: SmtpServer) -> None:
    channel = EmailChannel(config(server))
    first = await channel.send(message("eff-opened-1"), None)
    again = await channel.send(message("eff-opened-1"), None)
    odd = await channel.send(message("route team/opened <x>@y"), None)
    odd_again = await channel.send(message("route team/opened <x>@y"), None)
    ids = [r.message["Message-ID"] for r in server.recorder.received]
    assert ids[:2] == ["<eff-opened-1@sevpipe>"] * 2
    assert first["message_id"] == again["message_id"] == "<eff-opened-1@sevpipe>"
    assert ids[2] == ids[3] == odd["message_id"] == odd_again["message_id"]
    assert ids[2].startswith("<h.")
    assert ids[2].endswith("@sevpipe>")


async def test_a_threaded_message_replies_to_the_first(server: SmtpServer) -> None:
    channel = EmailChannel(config(server))
    first = await channel.send(message("eff-opened"), None)
    await channel.send(message("eff-resolved", kind="resolved"), first)
    opened, resolved = (r.message for r in server.recorder.received)
    assert opened["In-Reply-To"] is None
    assert resolved["In-Reply-To"] == first["message_id"] == "<eff-opened@sevpipe>"
    assert resolved["References"] == first["message_id"]


@pytest.mark.parametrize(
    "subject",
    [
        "Disk full\r\nBcc: evil@x",
        "Disk full\nBcc: evil@x",
        "Disk full\rBcc: evil@x",
        "Disk full\x85Bcc: evil@x",
        "Disk full\u2028Bcc: evil@x",
    ],
)
async def test_a_subject_cannot_inject_headers(server: SmtpServer, subject: str) -> None:
    await EmailChannel(config(server)).send(message(subject=subject), None)
    (received,) = server.recorder.received
    assert received.rcpt_tos == tuple(AUDIENCES["team"])
    assert received.message["Bcc"] is None
    assert received.message["Subject"] == "Disk full Bcc: evil@x"
    header_lines = received.raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert [line for line in header_lines if b"evil@x" in line] == [
        b"Subject: Disk full Bcc: evil@x"
    ]


async def test_starttls_with_the_private_ca(tmp_path: Path) -> None:
    with smtp_server(tmp_path, security="starttls") as server:
        await EmailChannel(config(server, security="starttls")).send(message(), None)
        (received,) = server.recorder.received
    assert received.tls


async def test_implicit_tls(tmp_path: Path) -> None:
    with smtp_server(tmp_path, security="tls") as server:
        await EmailChannel(config(server, security="tls")).send(message(), None)
        (received,) = server.recorder.received
    assert received.tls


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_a_certificate_from_another_ca_is_refused_at_once(
    tmp_path: Path, security: str
) -> None:
    # Refused, not retried: the same certificate fails the same way on every attempt, and
    # sending without verifying is no option; notification.failed gets someone to fix it.
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with smtp_server(tmp_path, security=security) as server:  # type: ignore[arg-type]
        channel = EmailChannel(config(server, security=security, ca_file=other_ca))
        with pytest.raises(ChannelRefused) as refused:
            await channel.send(message(), None)
        assert server.recorder.connections == 1
        assert server.recorder.received == []
    assert refused.value.reason == "tls_unverified"


async def test_auth_with_the_password_from_a_file(tmp_path: Path, password_file: Path) -> None:
    with smtp_server(tmp_path, security="starttls", auth=(USER, PASSWORD)) as server:
        channel = EmailChannel(
            config(server, security="starttls", username=USER, password_file=password_file)
        )
        await channel.send(message(), None)
        (received,) = server.recorder.received
    assert received.authenticated
    assert received.tls


async def test_a_wrong_password_is_refused_after_one_connection(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password")
    with smtp_server(tmp_path, security="starttls", auth=(USER, PASSWORD)) as server:
        channel = EmailChannel(
            config(server, security="starttls", username=USER, password_file=wrong)
        )
        with pytest.raises(ChannelRefused) as refused:
            await channel.send(message(), None)
        assert server.recorder.connections == 1
        assert server.recorder.transactions == 0
        assert server.recorder.auth_attempts >= 1
    assert refused.value.reason == "auth_failed"
    assert "535" in refused.value.detail


async def test_451_then_accepted(server: SmtpServer) -> None:
    server.recorder.answer("451 4.3.0 try again later", times=1)
    outcome = await EmailChannel(config(server)).send(message(), None)
    assert server.recorder.transactions == 2
    assert len(server.recorder.received) == 1
    assert outcome["accepted"] == 2


async def test_451_every_time_is_retried_then_given_back(server: SmtpServer) -> None:
    server.recorder.answer("451 4.3.0 try again later", times=None, stage="RCPT")
    with pytest.raises(ChannelRetry) as retry:
        await EmailChannel(config(server, max_retry_seconds=0.5)).send(message(), None)
    assert 1 < server.recorder.transactions < 100
    assert server.recorder.received == []
    assert "451" in str(retry.value)


@pytest.mark.parametrize(
    ("stage", "reply", "reason"),
    [
        ("DATA", "550 5.7.1 message refused", "smtp_550"),
        ("RCPT", "550 5.1.1 mailbox unavailable", "smtp_550"),
        ("MAIL", "553 5.1.8 sender refused", "smtp_553"),
    ],
)
async def test_5xx_is_refused_without_retry(
    server: SmtpServer, stage: Any, reply: str, reason: str
) -> None:
    server.recorder.answer(reply, times=None, stage=stage)
    with pytest.raises(ChannelRefused) as refused:
        await EmailChannel(config(server)).send(message(), None)
    assert refused.value.reason == reason
    assert server.recorder.transactions == 1
    assert server.recorder.connections == 1
    assert server.recorder.received == []


async def test_some_recipients_refused_is_a_success_that_lists_them(server: SmtpServer) -> None:
    server.recorder.refuse("oncall-b@example.org")
    outcome = await EmailChannel(config(server)).send(message(), None)
    (received,) = server.recorder.received
    assert received.rcpt_tos == ("oncall-a@example.org",)
    assert outcome["accepted"] == 1
    assert list(outcome["refused"]) == ["oncall-b@example.org"]
    assert outcome["refused"]["oncall-b@example.org"].startswith("550")


async def test_server_down_is_retried_then_given_back(server: SmtpServer) -> None:
    down = config(server, port=closed_port(), max_retry_seconds=0.3)
    with pytest.raises(ChannelRetry) as retry:
        await EmailChannel(down).send(message(), None)
    assert retry.value.retriable
    assert "attempts" in str(retry.value)


async def test_check_cannot_tell_and_close_stops_sending(server: SmtpServer) -> None:
    channel = EmailChannel(config(server))
    assert await channel.check(message(), None) is None
    await channel.close()
    with pytest.raises(RuntimeError):
        await channel.send(message(), None)
    assert server.recorder.connections == 0


async def test_the_password_never_leaks(
    tmp_path: Path, password_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = tmp_path / "wrong-password"
    wrong.write_text("wr0ng-Pa55-s3cret")
    secrets = [PASSWORD, "wr0ng-Pa55-s3cret"]
    secrets += [base64.b64encode(f"\0{USER}\0{s}".encode()).decode() for s in secrets]
    seen: list[str] = []
    with smtp_server(tmp_path, security="starttls", auth=(USER, PASSWORD)) as server:
        good = EmailChannel(
            config(server, security="starttls", username=USER, password_file=password_file)
        )
        seen += [json.dumps(await good.send(message(), None)), repr(good)]
        bad = EmailChannel(config(server, security="starttls", username=USER, password_file=wrong))
        with pytest.raises(ChannelRefused) as refused:
            await bad.send(message(), None)
        server.recorder.answer("451 4.3.0 later", times=None)
        with pytest.raises(ChannelRetry) as retry:
            await EmailChannel(
                config(
                    server,
                    security="starttls",
                    username=USER,
                    password_file=password_file,
                    max_retry_seconds=0.2,
                )
            ).send(message(), None)
    for exc in (refused.value, retry.value):
        seen += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    # mail.log is the test server's own logger, not the channel's.
    client_records = [r for r in caplog.records if not r.name.startswith("mail.")]
    assert any(r.name == "comms.email" for r in client_records)
    seen += [caplog.handler.format(r) for r in client_records]
    text = "\n".join(seen)
    for secret in secrets:
        assert secret not in text


async def test_starttls_required_but_not_offered_is_refused(server: SmtpServer) -> None:
    # No fallback to plain text: a stripped STARTTLS is how a downgrade looks.
    with pytest.raises(ChannelRefused) as refused:
        await EmailChannel(config(server, security="starttls")).send(message(), None)
    assert refused.value.reason == "smtp_unsupported"
    assert server.recorder.connections == 1
    assert server.recorder.received == []
