"""Who may do what on the HTTP API: operators with roles, and the Alertmanager credential.

Operators are named in settings, each with a bearer token (a file, or its SHA-256) and roles:
``viewer`` reads, ``responder`` also re-rates, acknowledges and takes command, ``approver``
also approves actions. Once operators are configured, the credential Alertmanager uses may
only post alerts: a token in a config file on every Alertmanager replica should not also be
able to lower a SEV-0. Without operators, the credential (or, with none configured, anyone on
loopback) may do everything, as before operators existed. The name recorded for a decision
is always the operator's (or the credential's), never anything the request says.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from classifier.api import Refusal, Role
from ingest import Credentials, check_authorization

RANK: Final[dict[str, int]] = {"viewer": 1, "responder": 2, "approver": 3}


@dataclass(frozen=True, repr=False)
class OperatorToken:
    name: str
    roles: frozenset[str]
    sha256: bytes

    def __repr__(self) -> str:  # the digest is as good as the token to a log reader
        return f"OperatorToken({self.name!r}, roles={sorted(self.roles)!r})"

    def holds(self, role: Role) -> bool:
        return max((RANK[r] for r in self.roles), default=0) >= RANK[role]


class Access:
    def __init__(self, creds: Credentials, operators: Sequence[OperatorToken] = ()) -> None:
        self.creds = creds
        self.operators = tuple(operators)

    def authorize(self, request: web.Request, role: Role) -> str | Refusal:
        header = request.headers.get("Authorization")
        operator = self._operator(header)
        if operator is not None:
            if operator.holds(role):
                return operator.name
            return Refusal(403, f"{operator.name} does not hold the {role} role")
        if self.creds.configured and check_authorization(header, self.creds):
            if self.operators:
                return Refusal(403, "this credential may only post alerts; use an operator's")
            return self._credential_name(header)
        if not self.creds.configured and not self.operators:
            return "anonymous"  # loopback only: the server refuses to listen wider like this
        return Refusal(401, "missing or wrong credentials")

    def _operator(self, header: str | None) -> OperatorToken | None:
        if not header or not self.operators:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        digest = hashlib.sha256(value.strip().encode("utf-8")).digest()
        found = None
        for op in self.operators:  # every one compared: the time says nothing of which
            if hmac.compare_digest(digest, op.sha256):
                found = op
        return found

    def _credential_name(self, header: str | None) -> str:
        if header and header.lower().startswith("basic ") and self.creds.basic_username:
            return self.creds.basic_username
        return "api"
