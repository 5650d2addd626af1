"""How the Kafka clients reach a secured cluster: TLS and SASL, as aiokafka takes them.

One ``KafkaSecurity`` holds what the settings say; ``client_args`` turns it into the keyword
arguments every client of the log gets (producer, consumers, admin), with one SSL context
built by ``aiokafka.helpers.create_ssl_context`` (the system's CAs unless a CA file is given;
host names always checked).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiokafka.helpers import create_ssl_context

from eventlog.base import EventLogError

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

PROTOCOLS: tuple[Protocol, ...] = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS: tuple[Mechanism, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaSecurityError(EventLogError):
    """Security settings that do not fit together, or files that cannot be read; the message
    names the setting."""


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: Protocol = "PLAINTEXT"
    sasl_mechanism: Mechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def check(self) -> None:
        """Raise KafkaSecurityError (naming the setting) unless the parts fit together."""
        if self.protocol not in PROTOCOLS:
            raise KafkaSecurityError(
                f"kafka_security_protocol: {self.protocol!r} is not one of {', '.join(PROTOCOLS)}"
            )
        if self.uses_sasl:
            self._check_sasl()
        else:
            self._only_with(
                "SASL_PLAINTEXT or SASL_SSL",
                kafka_sasl_mechanism=self.sasl_mechanism,
                kafka_sasl_username=self.sasl_username,
                kafka_sasl_password=self.sasl_password,
            )
        if not self.uses_ssl:
            self._only_with(
                "SSL or SASL_SSL",
                kafka_ssl_cafile=self.ssl_cafile,
                kafka_ssl_certfile=self.ssl_certfile,
                kafka_ssl_keyfile=self.ssl_keyfile,
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise KafkaSecurityError("kafka_ssl_keyfile: given without kafka_ssl_certfile")

    def _check_sasl(self) -> None:
        if self.sasl_mechanism not in MECHANISMS:
            raise KafkaSecurityError(
                f"kafka_sasl_mechanism: required with kafka_security_protocol {self.protocol}, "
                f"one of {', '.join(MECHANISMS)} (not {self.sasl_mechanism!r})"
            )
        if not self.sasl_username:
            raise KafkaSecurityError(
                f"kafka_sasl_username: required with kafka_security_protocol {self.protocol}"
            )
        if not self.sasl_password:
            raise KafkaSecurityError(
                "kafka_sasl_password: required with kafka_security_protocol "
                f"{self.protocol} (or kafka_sasl_password_file)"
            )

    def _only_with(self, protocols: str, **given: object) -> None:
        for name, value in given.items():
            if value is not None:
                raise KafkaSecurityError(
                    f"{name}: only used with kafka_security_protocol {protocols}, "
                    f"not {self.protocol}"
                )

    def client_args(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producer, consumer and admin client."""
        self.check()
        args: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_ssl:
            args["ssl_context"] = self._context()
        if self.uses_sasl:
            args["sasl_mechanism"] = self.sasl_mechanism
            args["sasl_plain_username"] = self.sasl_username
            args["sasl_plain_password"] = self.sasl_password
        return args

    def _context(self) -> ssl.SSLContext:
        try:
            context: ssl.SSLContext = create_ssl_context(cafile=self.ssl_cafile)
        except (OSError, ssl.SSLError) as exc:
            raise KafkaSecurityError(
                f"kafka_ssl_cafile: cannot load {self.ssl_cafile}: {exc}"
            ) from None
        if self.ssl_certfile is not None:
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            except (OSError, ssl.SSLError) as exc:
                which = (
                    "kafka_ssl_certfile/kafka_ssl_keyfile"
                    if self.ssl_keyfile
                    else ("kafka_ssl_certfile")
                )
                raise KafkaSecurityError(
                    f"{which}: cannot load {self.ssl_certfile}: {exc}"
                ) from None
        return context
