"""EmailConfig: what a bad config says, and the password file read when the channel starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from comms.email import EmailChannel, EmailConfig, message_id_for

BASE: dict[str, Any] = {
    "host": "smtp.example.org",
    "from_address": "sevpipe@example.org",
    "audiences": {"team": ["oncall@example.org"]},
}


def invalid(**changes: Any) -> str:
    with pytest.raises(ValidationError) as error:
        EmailConfig.model_validate({**BASE, **changes})
    return str(error.value)


def test_defaults() -> None:
    config = EmailConfig.model_validate(BASE)
    assert (config.port, config.security, config.username, config.ca_file) == (
        587,
        "starttls",
        None,
        None,
    )


def test_implicit_tls_defaults_to_port_465_unless_given() -> None:
    assert EmailConfig.model_validate({**BASE, "security": "tls"}).port == 465
    assert EmailConfig.model_validate({**BASE, "security": "tls", "port": 2465}).port == 2465


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("from_address", "sevpipe@example.org\r\nBcc: evil@x", "CR or LF"),
        ("from_address", "sevpipe.example.org", "local@domain"),
        ("from_address", "@example.org", "local@domain"),
        ("from_address", "Sevpipe <sevpipe@example.org>", "a space"),
        ("audiences", {"team": ["a@example.org, evil@x"]}, "a space"),
        ("audiences", {"team": ["a@example.org\nBcc: evil@x"]}, "CR or LF"),
        ("audiences", {"team": ["nobody"]}, "local@domain"),
    ],
)
def test_bad_addresses_name_the_field(field: str, value: Any, says: str) -> None:
    message = invalid(**{field: value})
    assert field in message
    assert says in message


def test_an_audience_with_no_addresses() -> None:
    message = invalid(audiences={"team": ["a@example.org"], "leadership": []})
    assert "audiences" in message
    assert "'leadership' has no addresses" in message


def test_an_unknown_audience() -> None:
    assert "unknown audience 'teem'" in invalid(audiences={"teem": ["a@example.org"]})


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"username": "u"}, "username and password_file go together"),
        ({"password_file": "/run/secrets/smtp"}, "username and password_file go together"),
        (
            {"username": "u", "password_file": "/p", "security": "none"},
            "username needs security starttls or tls",
        ),
        ({"ca_file": "/ca.pem", "security": "none"}, "ca_file is only used with"),
        ({"security": "ssl"}, "security"),
        ({"port": 0}, "port"),
        ({"timeout": 0}, "timeout"),
        ({"max_retry_seconds": -1}, "max_retry_seconds"),
        ({"pasword_file": "/p"}, "pasword_file"),
        ({"host": ""}, "host"),
    ],
)
def test_inconsistent_settings(changes: dict[str, Any], says: str) -> None:
    assert says in invalid(**changes)


def test_the_password_file_is_read_at_start(tmp_path: Path) -> None:
    config = {**BASE, "username": "u", "password_file": tmp_path / "missing"}
    with pytest.raises(ValueError, match=r"password_file .*missing: cannot read"):
        EmailChannel(EmailConfig.model_validate(config))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        EmailChannel(EmailConfig.model_validate({**config, "password_file": empty}))


def test_an_unreadable_ca_file_fails_at_start(tmp_path: Path) -> None:
    broken = tmp_path / "ca.pem"
    broken.write_text("not a certificate")
    with pytest.raises(ValueError, match="ca_file"):
        EmailChannel(EmailConfig.model_validate({**BASE, "ca_file": broken}))


def test_message_ids_are_deterministic_and_well_formed() -> None:
    assert message_id_for("eff-1") == "<eff-1@sevpipe>"
    odd = message_id_for("a b\r\n<c>@d")
    assert odd == message_id_for("a b\r\n<c>@d")
    assert odd != message_id_for("a b\r\n<c>@e")
    assert odd.startswith("<h.")
    assert odd.count("@") == 1
    assert message_id_for("x" * 64) == "<" + "x" * 64 + "@sevpipe>"
    assert message_id_for("x" * 65).startswith("<h.")
