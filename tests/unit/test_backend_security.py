"""TLS and SASL settings of the backends: what each client gets, and clear errors for
combinations that do not fit. No services: the clients are built, never connected."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from eventlog.kafka import KafkaLog
from eventlog.kafka_security import KafkaSecurity
from sevpipe.backends import (
    kafka_security,
    make_effects_ledger,
    make_eventlog,
    make_store,
    postgres_ssl,
    redis_ca_file,
)
from sevpipe.settings import Settings, SettingsError
from store.redis_coord import RedisCoordinator


@pytest.fixture(autouse=True)
def _no_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings() reads SEVPIPE_* from the environment (the test services export some)."""
    for name in list(os.environ):
        if name.startswith("SEVPIPE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a client certificate with its key, made with openssl."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=client",
        "-keyout", str(d / "client.key"), "-out", str(d / "client.csr"))  # fmt: skip
    run("x509", "-req", "-in", str(d / "client.csr"), "-CA", str(d / "ca.crt"),
        "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1",
        "-out", str(d / "client.crt"))  # fmt: skip
    return {"ca": d / "ca.crt", "cert": d / "client.crt", "key": d / "client.key"}


def settings(**values: Any) -> Settings:
    return Settings(kafka_bootstrap="127.0.0.1:9092", **values)


# -- Kafka ---------------------------------------------------------------------------------------


def test_plaintext_by_default() -> None:
    log = make_eventlog(settings())
    assert isinstance(log, KafkaLog)
    assert log.security_args() == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_with_scram(pki: dict[str, Path], tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    log = make_eventlog(
        settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="sevpipe",
            kafka_sasl_password_file=secret,
            kafka_ssl_cafile=pki["ca"],
        )
    )
    assert isinstance(log, KafkaLog)
    args = log.security_args()
    context = args.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert args == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "sevpipe",
        "sasl_plain_password": "s3cret",
    }
    assert "s3cret" not in repr(log.security)


def test_mutual_tls(pki: dict[str, Path]) -> None:
    security = kafka_security(
        settings(
            kafka_security_protocol="SSL",
            kafka_ssl_cafile=pki["ca"],
            kafka_ssl_certfile=pki["cert"],
            kafka_ssl_keyfile=pki["key"],
        )
    )
    args = security.client_args()
    assert args["security_protocol"] == "SSL"
    assert isinstance(args["ssl_context"], ssl.SSLContext)
    assert "sasl_mechanism" not in args


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN"},
            "kafka_sasl_username: required with kafka_security_protocol SASL_SSL",
        ),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"},
            "kafka_sasl_mechanism: required with kafka_security_protocol SASL_PLAINTEXT",
        ),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "SCRAM-SHA-256",
                "kafka_sasl_username": "u",
            },
            "kafka_sasl_password: required with kafka_security_protocol SASL_SSL",
        ),
        (
            {"kafka_sasl_username": "u"},
            "kafka_sasl_username: only used with kafka_security_protocol SASL_PLAINTEXT or "
            "SASL_SSL, not PLAINTEXT",
        ),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_ssl_cafile": "/ca.pem",
                "kafka_sasl_mechanism": "PLAIN",
                "kafka_sasl_username": "u",
                "kafka_sasl_password": "p",
            },
            "kafka_ssl_cafile: only used with kafka_security_protocol SSL or SASL_SSL",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "/key.pem"},
            "kafka_ssl_keyfile: given without kafka_ssl_certfile",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"},
            "kafka_ssl_cafile: cannot load /nonexistent/ca.pem",
        ),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "PLAIN",
                "kafka_sasl_username": "u",
                "kafka_sasl_password_file": "/nonexistent/password",
            },
            "kafka_sasl_password_file: cannot read /nonexistent/password",
        ),
    ],
)
def test_kafka_combinations_that_do_not_fit(values: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=r"^" + message.replace(".", r"\.")):
        make_eventlog(settings(**values))


def test_a_security_error_is_raised_by_the_log_itself_too() -> None:
    with pytest.raises(Exception, match="kafka_sasl_username: required"):
        KafkaLog(
            "127.0.0.1:9092",
            security=KafkaSecurity(protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN"),
        )


# -- PostgreSQL ----------------------------------------------------------------------------------


def test_postgres_sslmodes(pki: dict[str, Path]) -> None:
    assert postgres_ssl(Settings()) is None  # as the DSN says
    assert postgres_ssl(Settings(postgres_sslmode="disable")) is False
    require = postgres_ssl(Settings(postgres_sslmode="require"))
    assert isinstance(require, ssl.SSLContext)
    assert require.verify_mode == ssl.CERT_NONE
    assert not require.check_hostname
    ca = postgres_ssl(Settings(postgres_sslmode="verify-ca", postgres_sslrootcert=pki["ca"]))
    assert isinstance(ca, ssl.SSLContext)
    assert ca.verify_mode == ssl.CERT_REQUIRED
    assert not ca.check_hostname
    full = postgres_ssl(Settings(postgres_sslmode="verify-full", postgres_sslrootcert=pki["ca"]))
    assert isinstance(full, ssl.SSLContext)
    assert full.verify_mode == ssl.CERT_REQUIRED
    assert full.check_hostname


def test_postgres_tls_errors(pki: dict[str, Path]) -> None:
    with pytest.raises(SettingsError, match=r"^postgres_sslrootcert: needs postgres_sslmode"):
        postgres_ssl(Settings(postgres_sslrootcert=pki["ca"]))
    with pytest.raises(SettingsError, match=r"^postgres_sslrootcert: not used with .* disable"):
        postgres_ssl(Settings(postgres_sslmode="disable", postgres_sslrootcert=pki["ca"]))
    with pytest.raises(SettingsError, match=r"^postgres_sslrootcert: cannot load /nonexistent"):
        postgres_ssl(
            Settings(postgres_sslmode="verify-full", postgres_sslrootcert=Path("/nonexistent"))
        )


def test_postgres_sslmode_reaches_the_pool() -> None:
    values: dict[str, Any] = {
        "postgres_dsn": "postgresql://127.0.0.1:1/x",
        "postgres_sslmode": "verify-full",
    }
    backends: list[object] = [make_store(Settings(**values))]
    backends.append(make_effects_ledger(Settings(**values)))
    for backend in backends:
        assert isinstance(getattr(backend, "_ssl", None), ssl.SSLContext)


# -- Redis ---------------------------------------------------------------------------------------


def test_redis_ca_file_only_with_rediss(pki: dict[str, Path]) -> None:
    assert redis_ca_file(Settings(redis_url="rediss://:pw@127.0.0.1:6380/0")) is None
    assert (
        redis_ca_file(Settings(redis_url="rediss://127.0.0.1:6380/0", redis_ca_file=pki["ca"]))
        == pki["ca"]
    )
    with pytest.raises(SettingsError, match=r"^redis_ca_file: only used with a rediss://"):
        redis_ca_file(Settings(redis_url="redis://127.0.0.1:6379/0", redis_ca_file=pki["ca"]))
    with pytest.raises(SettingsError, match=r"^redis_ca_file: /nonexistent is not a file"):
        redis_ca_file(
            Settings(redis_url="rediss://127.0.0.1:6380/0", redis_ca_file=Path("/nonexistent"))
        )


def test_redis_tls_options(pki: dict[str, Path]) -> None:
    coord = RedisCoordinator("rediss://user:pw@127.0.0.1:6380/0", ca_file=pki["ca"])
    assert coord._tls == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(pki["ca"]),
    }
    assert RedisCoordinator("redis://127.0.0.1:6379/0")._tls == {}
    with pytest.raises(ValueError, match="rediss://"):
        RedisCoordinator("redis://127.0.0.1:6379/0", ca_file=pki["ca"])
