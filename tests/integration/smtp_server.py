"""A real SMTP server for tests (aiosmtpd, in its own thread, on 127.0.0.1 and a free port).

It records every message it accepts, counts connections and transactions, and can be told
to answer a given reply for the next N transactions, to refuse given recipients, to require
AUTH, and to speak STARTTLS or implicit TLS with a certificate from a throwaway trustme CA.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

Stage = Literal["MAIL", "RCPT", "DATA"]
Security = Literal["none", "starttls", "tls"]


@dataclass(frozen=True)
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage
    tls: bool
    authenticated: bool


@dataclass
class _Script:
    reply: str
    stage: Stage
    times: int | None
    """Transactions left to answer so; None: all of them."""


@dataclass
class Recorder:
    """The aiosmtpd handler: what tests read and script. Its hooks run on the server's
    thread; tests read it after the client got its reply, so no lock is needed."""

    received: list[Received] = field(default_factory=list)
    connections: int = 0
    transactions: int = 0
    """MAIL commands seen: each starts a transaction, whatever becomes of it."""
    auth_attempts: int = 0
    refused: dict[str, str] = field(default_factory=dict)
    _scripts: list[_Script] = field(default_factory=list)
    _armed: _Script | None = None

    def answer(self, reply: str, *, times: int | None = 1, stage: Stage = "DATA") -> None:
        """Answer ``reply`` (e.g. "451 4.3.0 try later") at ``stage`` for the next ``times``
        transactions (None: for every one), then behave again."""
        self._scripts.append(_Script(reply, stage, times))

    def refuse(self, address: str, reply: str = "550 5.1.1 mailbox unavailable") -> None:
        self.refused[address] = reply

    def _arm(self) -> None:
        self._armed = None
        for script in self._scripts:
            if script.times is None or script.times > 0:
                if script.times is not None:
                    script.times -= 1
                self._armed = script
                return

    def _scripted(self, stage: Stage) -> str | None:
        armed = self._armed
        return armed.reply if armed is not None and armed.stage == stage else None

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        self.transactions += 1
        self._arm()
        reply = self._scripted("MAIL")
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.refused.get(address) or self._scripted("RCPT")
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self._scripted("DATA")
        if reply is not None:
            return reply
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        self.received.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                raw=raw,
                message=message,
                tls=_over_tls(server),
                authenticated=bool(session.authenticated),
            )
        )
        return f"250 OK queued as {len(self.received)}"


def _over_tls(server: SMTP) -> bool:
    # session.ssl is set after STARTTLS only; the transport knows for implicit TLS too.
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


class _Controller(Controller):
    """Binds port 0 and reads back the port the OS chose: no free-port race."""

    def __init__(self, recorder: Recorder, **kwargs: Any) -> None:
        super().__init__(recorder, hostname="127.0.0.1", port=0, **kwargs)
        self._recorder = recorder

    def factory(self) -> SMTP:
        # Called once per accepted connection.
        self._recorder.connections += 1
        return SMTP(self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        return self._bind()

    async def _bind(self) -> asyncio.AbstractServer:
        server = await self.loop.create_server(
            self._factory_invoker, host=self.hostname, port=0, ssl=self.ssl_context
        )
        self.port = server.sockets[0].getsockname()[1]
        return server


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    recorder: Recorder
    ca_file: Path | None
    """The trustme CA that signed the server's certificate (PEM), for EmailConfig.ca_file."""


@contextmanager
def smtp_server(
    tmp_path: Path,
    *,
    security: Security = "none",
    auth: tuple[str, str] | None = None,
) -> Iterator[SmtpServer]:
    """A running server; ``auth`` (user, password) makes AUTH required (after TLS)."""
    recorder = Recorder()
    kwargs: dict[str, Any] = {"server_hostname": "smtp.test", "ready_timeout": 10.0}
    ca_file: Path | None = None
    if security != "none":
        ca = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
        ca_file = tmp_path / f"ca-{id(recorder)}.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        if security == "starttls":
            kwargs.update(tls_context=server_context, require_starttls=auth is not None)
        else:
            kwargs["ssl_context"] = server_context
    if auth is not None:
        user, password = auth

        def authenticate(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            recorder.auth_attempts += 1
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
                user.encode(),
                password.encode(),
            )
            # handled=False: aiosmtpd answers 235 or 535 itself.
            return AuthResult(success=ok, handled=False)

        kwargs.update(authenticator=authenticate, auth_required=True)
    controller = _Controller(recorder, **kwargs)
    controller.start()
    # The controller's own probe connection is not the client's.
    recorder.connections = 0
    try:
        yield SmtpServer(controller.hostname, controller.port, recorder, ca_file)
    finally:
        controller.stop()
