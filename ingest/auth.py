"""Credentials as Alertmanager's ``http_config`` sends them: bearer token or basic auth."""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass


@dataclass(frozen=True, repr=False)
class Credentials:
    """What the receiver accepts; any one configured scheme that matches lets a request in."""

    bearer_token: str | None = None
    basic_username: str | None = None
    basic_password: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.bearer_token) or self.basic_username is not None

    def schemes(self) -> list[str]:
        out = []
        if self.bearer_token:
            out.append('Bearer realm="sevpipe"')
        if self.basic_username is not None:
            out.append('Basic realm="sevpipe"')
        return out

    def __repr__(self) -> str:  # secrets never reach a log line
        return f"Credentials(schemes={self.schemes()!r})"


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def check_authorization(header: str | None, creds: Credentials) -> bool:
    """True when ``header`` (the Authorization value) carries valid credentials.

    Comparisons are constant-time; with no credentials configured every request passes
    (the CLI refuses to listen beyond loopback in that case).
    """
    if not creds.configured:
        return True
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer" and creds.bearer_token:
        return _same(value, creds.bearer_token)
    if scheme == "basic" and creds.basic_username is not None:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        ok_user = _same(user, creds.basic_username)
        ok_password = _same(password, creds.basic_password or "")
        return bool(sep) and ok_user and ok_password
    return False
