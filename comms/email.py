"""Email: each message one SMTP transaction (aiosmtplib), to the addresses of its audience.

A connection per send rather than a kept one: incident mail comes a few messages at a time,
servers drop idle sessions after minutes, and one SMTP session carries one transaction at a
time; a kept connection would need a lock, NOOP probes and reconnection to save a TLS
handshake per message. Each retry so starts from a clean session, too.
"""

from __future__ import annotations

import hashlib
import logging
import re
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import aiosmtplib
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

from comms.channel import Audience, ChannelRefused, ChannelRetry, Message, Outcome

log = logging.getLogger(__name__)

AUDIENCES: tuple[str, ...] = get_args(Audience)

# C0, DEL, C1 and the Unicode line/paragraph separators: anything a mail header or a
# client could take as a line break.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# Besides spaces and control characters, these would turn one address into a list or a
# display name once joined into a header.
_NOT_IN_ADDRESS = re.compile(r"[\s<>,;\"()\\\x00-\x1f\x7f]")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_MSGID_LOCAL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")


def _address(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{value!r} contains CR or LF")
    local, at, domain = value.rpartition("@")
    if not (at and local and domain):
        raise ValueError(f"{value!r} is not an address: it needs local@domain")
    if _NOT_IN_ADDRESS.search(value):
        raise ValueError(f'{value!r} has a space, a control character or one of <>,;"()\\')
    return value


Address = Annotated[str, AfterValidator(_address)]


class EmailConfig(BaseModel):
    """Where and how to send mail, and who each audience is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(min_length=1, description="the SMTP server")
    port: int = Field(587, ge=1, le=65535, description="465 when security is tls and unset")
    security: Literal["none", "starttls", "tls"] = Field(
        "starttls", description="starttls: upgrade after connecting; tls: TLS from the start"
    )
    username: str | None = Field(None, description="SMTP login, with password_file")
    password_file: Path | None = Field(None, description="read once, when the channel starts")
    ca_file: Path | None = Field(None, description="a private CA to trust; default system trust")
    from_address: Address = Field(description="the From: of every message")
    audiences: dict[str, list[Address]] = Field(
        description="audience (team, leadership, org, support, security) -> its addresses"
    )
    timeout: float = Field(30.0, gt=0, description="seconds for each connect and command")
    max_retry_seconds: float = Field(60.0, ge=0, description="how long one send retries")
    retry_initial_wait: float = Field(1.0, gt=0, description="first backoff; then doubles")

    @model_validator(mode="before")
    @classmethod
    def _implicit_tls_port(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("security") == "tls" and "port" not in data:
            return {**data, "port": 465}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> EmailConfig:
        for name, addresses in self.audiences.items():
            if name not in AUDIENCES:
                raise ValueError(f"audiences: unknown audience {name!r} (one of {AUDIENCES})")
            if not addresses:
                raise ValueError(f"audiences: {name!r} has no addresses; list one or drop it")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together: set both or neither")
        if self.username is not None and self.security == "none":
            raise ValueError("username needs security starttls or tls: no password in clear")
        if self.ca_file is not None and self.security == "none":
            raise ValueError("ca_file is only used with security starttls or tls")
        return self


def message_id_for(effect_id: str) -> str:
    """The Message-ID of an effect's mail: the same for every attempt, so a duplicate sent
    after a crash is recognisably the same message."""
    local = effect_id
    # Long ids are hashed too, so the header stays on one line.
    if len(effect_id) > 64 or not _MSGID_LOCAL.fullmatch(effect_id):
        local = "h." + hashlib.sha256(effect_id.encode()).hexdigest()[:32]
    return f"<{local}@sevpipe>"


def _one_line(value: str) -> str:
    return _CONTROL.sub(" ", value).strip()


class _Transient(Exception):
    """A failure worth another attempt in-process (4xx, timeout, connection lost)."""


def _read_password(path: Path) -> SecretStr:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"password_file {path}: cannot read it ({type(exc).__name__})") from None
    password = raw.rstrip("\r\n")
    if not password:
        raise ValueError(f"password_file {path} is empty")
    return SecretStr(password)


def _tls_context(config: EmailConfig) -> ssl.SSLContext | None:
    if config.security == "none":
        return None
    try:
        return ssl.create_default_context(cafile=config.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"ca_file {config.ca_file}: cannot load it ({exc})") from exc


def _cert_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _classify(exc: Exception) -> Exception | None:
    """The channel's error for what aiosmtplib raised (ChannelRefused or _Transient), or
    None for anything else: a bug, to raise as it is."""
    cert = _cert_failure(exc)
    if cert is not None:
        # The same certificate fails the same way every time: retrying only delays the
        # notification.failed that tells someone to fix the CA or the server.
        return ChannelRefused("tls_unverified", cert.verify_message or str(cert))
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused | aiosmtplib.SMTPResponseException):
        return _classify_reply(exc)
    if isinstance(exc, OSError):
        # aiosmtplib's timeouts, lost and refused connections are all OSErrors.
        return _Transient(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException):
        # No STARTTLS, no AUTH, no SMTPUTF8: the server and the config disagree.
        return ChannelRefused("smtp_unsupported", str(exc))
    return None


def _classify_reply(
    exc: aiosmtplib.SMTPRecipientsRefused | aiosmtplib.SMTPResponseException,
) -> Exception:
    """4xx is the server's "not now", 5xx its "never"."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        if any(r.code < 500 for r in exc.recipients):
            return _Transient(f"recipients refused for now: {detail}")
        return ChannelRefused(f"smtp_{exc.recipients[0].code}", f"all recipients refused: {detail}")
    detail = f"{exc.code} {exc.message}"
    if exc.code < 500:
        return _Transient(detail)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return ChannelRefused("auth_failed", detail)
    return ChannelRefused(f"smtp_{exc.code}", detail)


class EmailChannel:
    """Sends each message to its audience's addresses over SMTP.

    ``check`` cannot tell: SMTP gives no way to ask whether a message went. A crash after
    the server accepted a message and before the ledger recorded it sends it again; the
    second copy carries the same Message-ID (from the effect id), which mail systems and
    clients use to drop duplicates.
    """

    name = "email"

    def __init__(self, config: EmailConfig) -> None:
        self._config = config
        self._password = (
            _read_password(config.password_file) if config.password_file is not None else None
        )
        self._tls = _tls_context(config)
        self._closed = False

    def __repr__(self) -> str:
        c = self._config
        return f"EmailChannel({c.host}:{c.port}, security={c.security})"

    async def send(self, message: Message, thread: Outcome | None) -> Outcome:
        if self._closed:
            raise RuntimeError("EmailChannel is closed")
        recipients = self._config.audiences.get(message.audience)
        if not recipients:
            raise ChannelRefused("no_recipients", f"no addresses for audience {message.audience}")
        mail = self._compose(message, recipients, thread)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_before_delay(self._config.max_retry_seconds),
            wait=wait_exponential(
                multiplier=self._config.retry_initial_wait,
                max=max(self._config.retry_initial_wait, self._config.max_retry_seconds / 4),
            )
            + wait_random(0, self._config.retry_initial_wait),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    refused, reply = await self._transaction(mail, recipients)
        except _Transient as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise ChannelRetry(f"smtp {self._server}: {exc} ({attempts} attempts)") from exc
        message_id = str(mail["Message-ID"])
        accepted = len(recipients) - len(refused)
        if refused:
            log.warning("email %s: refused by %s", message_id, ", ".join(sorted(refused)))
        log.info(
            "email %s sent to %d/%d (%s)", message_id, accepted, len(recipients), message.route
        )
        return {
            "message_id": message_id,
            "recipients": list(recipients),
            "accepted": accepted,
            "refused": refused,
            "reply": reply,
        }

    async def check(self, message: Message, thread: Outcome | None) -> Outcome | None:
        """Always None: SMTP cannot say whether a message was delivered. A crash between
        the server's accept and the ledger's record sends the message twice; the
        deterministic Message-ID lets mail systems and clients drop the duplicate."""
        return None

    async def close(self) -> None:
        # Nothing is kept open between sends; this only refuses later ones.
        self._closed = True

    @property
    def _server(self) -> str:
        return f"{self._config.host}:{self._config.port}"

    def _compose(
        self, message: Message, recipients: list[str], thread: Outcome | None
    ) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self._config.from_address
        mail["To"] = ", ".join(recipients)
        mail["Subject"] = _one_line(message.subject)
        mail["Date"] = format_datetime(datetime.now(UTC))
        mail["Message-ID"] = message_id_for(message.effect_id)
        mail["X-Sevpipe-Incident"] = _one_line(message.incident.id)
        mail["X-Sevpipe-Effect"] = _one_line(message.effect_id)
        parent = thread.get("message_id") if thread is not None else None
        if isinstance(parent, str) and _one_line(parent):
            mail["In-Reply-To"] = _one_line(parent)
            mail["References"] = _one_line(parent)
        mail.set_content(message.text)
        if message.html:
            mail.add_alternative(message.html, subtype="html")
        return mail

    async def _transaction(
        self, mail: EmailMessage, recipients: list[str]
    ) -> tuple[dict[str, str], str]:
        config = self._config
        smtp = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            use_tls=config.security == "tls",
            start_tls=config.security == "starttls",
            tls_context=self._tls,
            timeout=config.timeout,
        )
        try:
            await smtp.connect()
            if config.username is not None and self._password is not None:
                await smtp.login(config.username, self._password.get_secret_value())
            errors, reply = await smtp.send_message(
                mail, sender=config.from_address, recipients=recipients
            )
            await _quit(smtp)
        except Exception as exc:
            error = _classify(exc)
            if error is None:
                raise
            raise error from exc
        finally:
            # After a failure no QUIT: it could wait out another timeout on the very server
            # that failed. Closing after a QUIT changes nothing.
            smtp.close()
        return {address: f"{r.code} {r.message}" for address, r in errors.items()}, reply

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "email via %s failed (attempt %d): %s; again in %.2fs",
            self._server,
            state.attempt_number,
            error,
            wait,
        )


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError):
        # The message is accepted whatever QUIT says: a failed goodbye is no failed send.
        log.debug("QUIT failed after an accepted message", exc_info=True)
