"""Settings: flags > SEVPIPE_* env > YAML file > defaults; errors name the key and where."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sevpipe.settings import SettingsError, is_loopback, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SEVPIPE_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "sevpipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    s = load_settings()
    assert s.host == "127.0.0.1"
    assert s.port == 9095
    assert s.data_dir == Path(".sevpipe")
    assert s.eventlog_path == Path(".sevpipe") / "events.db"
    assert s.fsync == "full"
    assert s.max_body_bytes == 1024 * 1024
    assert not s.credentials().configured


def test_precedence_flags_over_env_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(
        tmp_path,
        "port: 1000\nhost: 10.0.0.1\ndata_dir: /from/file\nfsync: normal\nmax_body_bytes: 2048\n",
    )
    s = load_settings(config)
    assert (s.port, s.host, s.data_dir, s.fsync) == (1000, "10.0.0.1", Path("/from/file"), "normal")

    monkeypatch.setenv("SEVPIPE_PORT", "2000")
    monkeypatch.setenv("SEVPIPE_DATA_DIR", "/from/env")
    s = load_settings(config)
    assert (s.port, s.host, s.data_dir) == (2000, "10.0.0.1", Path("/from/env"))
    assert s.max_body_bytes == 2048

    s = load_settings(config, port=3000, host=None, data_dir=None)  # None: flag not given
    assert (s.port, s.host, s.data_dir) == (3000, "10.0.0.1", Path("/from/env"))
    s = load_settings(config, data_dir=Path("/from/flag"))
    assert (s.port, s.data_dir) == (2000, Path("/from/flag"))


def test_env_overrides_a_bad_file_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path, "port: not-a-port\n")
    with pytest.raises(SettingsError):
        load_settings(config)
    monkeypatch.setenv("SEVPIPE_PORT", "9100")
    assert load_settings(config).port == 9100
    monkeypatch.delenv("SEVPIPE_PORT")
    assert load_settings(config, port=9200).port == 9200


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "# nothing set\n")).port == 9095


def test_unknown_key_names_key_and_line(tmp_path: Path) -> None:
    config = write(tmp_path, "port: 9095\n\nhots: 0.0.0.0\n")
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    message = str(err.value)
    assert "hots" in message
    assert "unknown setting" in message
    assert f"{config}:3" in message


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("host: 127.0.0.1\nport: 70000\n", "port", 2),
        ("host: 127.0.0.1\n\n\nfsync: sometimes\n", "fsync", 4),
        ("max_body_bytes: 0\n", "max_body_bytes", 1),
        ("data_dir: x\nallow_unauthenticated: perhaps\n", "allow_unauthenticated", 2),
        ("shutdown_timeout: -1\nport: 1\n", "shutdown_timeout", 1),
        ("port: 1\nhost: '   '\n", "host", 2),
    ],
)
def test_bad_value_names_key_and_line(tmp_path: Path, text: str, key: str, line: int) -> None:
    config = write(tmp_path, text)
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    message = str(err.value)
    assert f"invalid setting {key}:" in message
    assert f"({config}:{line})" in message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("port: 9095\nhost: [unclosed\n", 3),
        ("port: 9095\n  host: x\n", 2),
        ('port: 9095\nhost: "open\n', 3),
        ("port: 9095\n\tdata_dir: x\n", 2),
    ],
)
def test_bad_yaml_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    config = write(tmp_path, text)
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    assert str(err.value).startswith(f"{config}:{line}: invalid YAML")


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    config = write(tmp_path, "- port\n- 9095\n")
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    assert str(err.value).startswith(f"{config}:1:")
    assert "mapping" in str(err.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in str(err.value)


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEVPIPE_PORT", "ninety")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "invalid setting port:" in str(err.value)
    assert "SEVPIPE_PORT" in str(err.value)


def test_bad_flag_value_names_the_key() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(port=-1)
    assert "invalid setting port:" in str(err.value)


# -- secrets ----------------------------------------------------------------------------------


def test_secrets_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = write(tmp_path, "s3cret-token\n", "token")
    password = write(tmp_path, "pass word\n", "password")
    config = write(
        tmp_path,
        f"auth_token_file: {token}\nbasic_auth_username: am\n"
        f"basic_auth_password_file: {password}\n",
    )
    creds = load_settings(config).credentials()
    assert creds.bearer_token == "s3cret-token"  # the file's trailing newline is not part of it
    assert creds.basic_username == "am"
    assert creds.basic_password == "pass word"

    monkeypatch.setenv("SEVPIPE_AUTH_TOKEN_FILE", str(password))
    assert load_settings().credentials().bearer_token == "pass word"
    monkeypatch.setenv("SEVPIPE_AUTH_TOKEN", "direct")  # a value beats a file
    assert load_settings().credentials().bearer_token == "direct"


def test_secrets_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEVPIPE_AUTH_TOKEN", "s3cret-token")
    monkeypatch.setenv("SEVPIPE_BASIC_AUTH_USERNAME", "am")
    monkeypatch.setenv("SEVPIPE_BASIC_AUTH_PASSWORD", "pa55")
    s = load_settings()
    for text in (str(s), repr(s), repr(s.credentials()), repr(s.receiver_config())):
        assert "s3cret-token" not in text
        assert "pa55" not in text
    assert s.credentials().bearer_token == "s3cret-token"


def test_unreadable_secret_file_names_the_setting(tmp_path: Path) -> None:
    s = load_settings(auth_token_file=tmp_path / "missing")
    with pytest.raises(SettingsError) as err:
        s.credentials()
    assert str(err.value).startswith("auth_token_file:")
    assert str(tmp_path / "missing") in str(err.value)


def test_basic_password_needs_a_username() -> None:
    s = load_settings(basic_auth_password="pw")
    with pytest.raises(SettingsError) as err:
        s.credentials()
    assert str(err.value).startswith("basic_auth_username:")


def test_receiver_config_carries_limits_and_credentials() -> None:
    config = load_settings(auth_token="tok", max_body_bytes=4096).receiver_config()
    assert config.max_body_bytes == 4096
    assert config.credentials.bearer_token == "tok"


# -- exposure ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "sevpipe.internal"])
def test_refuses_to_expose_without_credentials(host: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(host=host).check_exposure()
    assert str(err.value).startswith("host:")
    assert host in str(err.value)


@pytest.mark.parametrize(
    "extra",
    [
        {"auth_token": "tok"},
        {"basic_auth_username": "am", "basic_auth_password": "pw"},
        {"allow_unauthenticated": True},
    ],
)
def test_exposure_allowed_with_credentials_or_explicit_opt_out(extra: dict[str, Any]) -> None:
    load_settings(host="0.0.0.0", **extra).check_exposure()


def test_exposure_allowed_with_token_file(tmp_path: Path) -> None:
    token = write(tmp_path, "tok\n", "token")
    load_settings(host="0.0.0.0", auth_token_file=token).check_exposure()


def test_empty_token_file_is_no_credentials(tmp_path: Path) -> None:
    token = write(tmp_path, "\n", "token")
    with pytest.raises(SettingsError):
        load_settings(host="0.0.0.0", auth_token_file=token).check_exposure()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.8.9.10"])
def test_loopback_needs_no_credentials(host: str) -> None:
    assert is_loopback(host)
    load_settings(host=host).check_exposure()


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.example.com", "128.0.0.1"]
)
def test_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_basic_auth_user_without_password_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEVPIPE_BASIC_AUTH_USERNAME", "alertmanager")
    settings = load_settings()
    with pytest.raises(SettingsError, match="basic_auth_password: required"):
        settings.credentials()
