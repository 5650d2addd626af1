"""The real services the integration tests talk to: Apache Kafka, PostgreSQL, Redis, and a
Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager).

Taken from ``SEVPIPE_KAFKA_BOOTSTRAP``, ``SEVPIPE_POSTGRES_DSN``, ``SEVPIPE_REDIS_URL``,
``SEVPIPE_KUBECONFIG`` (the path of an admin kubeconfig) and ``SEVPIPE_KUBE_AUDIT_LOG`` (the
path of the kube-apiserver's audit log) when they are set, and Kafka's SASL_SSL listener
from ``SEVPIPE_TEST_KAFKA_SASL_BOOTSTRAP``, ``_USERNAME``, ``_PASSWORD`` and ``_CAFILE`` (the
test CA's PEM) (``make test`` sets them); otherwise
``scripts/test-services up`` is run once per session to start them. A missing service fails
the tests that need it; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
VARS = (
    "SEVPIPE_KAFKA_BOOTSTRAP",
    "SEVPIPE_POSTGRES_DSN",
    "SEVPIPE_REDIS_URL",
    "SEVPIPE_KUBECONFIG",
    "SEVPIPE_KUBE_AUDIT_LOG",
)
# Kafka's SASL_SSL listener (SCRAM-SHA-512, the test CA): not needed to reuse running services
# (a Kafka started by an older test-services has no such listener), but the tests that use it
# fail without it (`scripts/test-services up` restarts such a Kafka with it).
SASL_VARS = (
    "SEVPIPE_TEST_KAFKA_SASL_BOOTSTRAP",
    "SEVPIPE_TEST_KAFKA_SASL_USERNAME",
    "SEVPIPE_TEST_KAFKA_SASL_PASSWORD",
    "SEVPIPE_TEST_KAFKA_SASL_CAFILE",
)
_EXPORT = re.compile(r"^export (SEVPIPE_[A-Z_]+)=['\"]?([^'\"]*)['\"]?$")


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    postgres_dsn: str
    redis_url: str
    # The admin kubeconfig's path (a bearer token in system:masters; the CA inline). Last and
    # with a default, so that the three-argument form still builds a Services.
    kubeconfig: str = ""
    # The kube-apiserver's audit log (JSON lines): the writes to deployments (and their scale),
    # HPAs and ConfigMaps, one entry per request with its response code. Read, never written.
    kube_audit_log: str = ""
    # Kafka's SASL_SSL listener: host:port, the SCRAM-SHA-512 user and password, the CA file.
    kafka_sasl_bootstrap: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_sasl_cafile: str = ""

    def env(self) -> dict[str, str]:
        values = (
            self.kafka_bootstrap,
            self.postgres_dsn,
            self.redis_url,
            self.kubeconfig,
            self.kube_audit_log,
            self.kafka_sasl_bootstrap,
            self.kafka_sasl_username,
            self.kafka_sasl_password,
            self.kafka_sasl_cafile,
        )
        names = (*VARS, *SASL_VARS)
        return {name: value for name, value in zip(names, values, strict=True) if value}

    def require_kafka_sasl(self) -> None:
        """Fail (never skip) when Kafka's SASL_SSL listener is not known."""
        if not all((self.kafka_sasl_bootstrap, self.kafka_sasl_username, self.kafka_sasl_cafile)):
            pytest.fail(
                "Kafka's SASL_SSL listener is not available (SEVPIPE_TEST_KAFKA_SASL_*): run "
                "scripts/test-services up, which restarts a Kafka started without it",
                pytrace=False,
            )


def _running() -> bool:
    """True when ``scripts/test-services status`` finds all of them running already."""
    proc = subprocess.run(
        [str(ROOT / "scripts" / "test-services"), "status"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return proc.returncode == 0


def _start() -> dict[str, str]:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "test-services"), "up"],
        capture_output=True,
        text=True,
        # The first `up` on a machine builds kube-apiserver and kube-controller-manager with Go
        # (6 to 15 minutes on 2 cores); later ones take seconds.
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/test-services up failed:\n{proc.stderr[-4000:]}", pytrace=False)
    found = {}
    for line in proc.stdout.splitlines():
        match = _EXPORT.match(line.strip())
        if match:
            found[match.group(1)] = match.group(2)
    return found


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    values = {name: os.environ.get(name, "") for name in (*VARS, *SASL_VARS)}
    needed = not all(values[name] for name in VARS)
    # Services someone else started (another session, `make test`) are shared: reuse them,
    # and never stop them at the end.
    started = needed and not _running()
    if needed:
        values.update(_start())
    missing = [name for name in VARS if not values.get(name)]
    if missing:
        pytest.fail(f"services not available: {', '.join(missing)}", pytrace=False)
    yield Services(*(values[name] for name in (*VARS, *SASL_VARS)))
    if started:  # leave running only what the caller had started
        subprocess.run(
            [str(ROOT / "scripts" / "test-services"), "down"],
            capture_output=True,
            timeout=120,
            check=False,
        )


def unique_name(prefix: str) -> str:
    """A fresh topic, group or key prefix per test, as the tests share the servers."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _admin(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _database(services: Services, prefix: str) -> tuple[str, str, str]:
    """A fresh database's (CREATE, DROP, DSN), on the shared server."""
    name = unique_name(prefix).replace("-", "_")
    return (
        f'CREATE DATABASE "{name}"',
        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',  # FORCE: a test may leave sessions
        urlsplit(services.postgres_dsn)._replace(path=f"/{name}").geturl(),
    )


@contextlib.asynccontextmanager
async def fresh_database(services: Services, prefix: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for one test; its DSN, dropped afterwards."""
    create, drop, dsn = _database(services, prefix)
    await _admin(services.postgres_dsn, create)
    try:
        yield dsn
    finally:
        await _admin(services.postgres_dsn, drop)


@contextlib.contextmanager
def fresh_database_sync(services: Services, prefix: str) -> Iterator[str]:
    """``fresh_database`` outside any event loop: for a module-scoped (synchronous) fixture,
    whose database outlives each test's own event loop."""
    create, drop, dsn = _database(services, prefix)
    asyncio.run(_admin(services.postgres_dsn, create))
    try:
        yield dsn
    finally:
        asyncio.run(_admin(services.postgres_dsn, drop))
