"""The Dockerfile, built and run with podman from Debian.

No container registry can be reached here, so ``scripts/container-base`` installs podman (and
runc, debootstrap, iptables) when missing, writes the podman settings this VM needs and builds
a local Debian base image with Python 3.11 (cached by date in ``~/.cache/sevpipe/podman``);
the Dockerfile is built unchanged with ``--build-arg BASE=`` that image. The container
answers ``/healthz`` on its published port, runs as uid 10001, passes its own HEALTHCHECK,
and a webhook posted to it lands in its event log (``sevpipe replay`` inside the container).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "alertmanager" / "01_zulip_firing_2alerts.json"
UID = "10001"
TOKEN = "container-test-token"  # a throwaway token: the port is published on loopback only


def _podman_env() -> dict[str, str]:
    if os.geteuid() != 0 and not shutil.which("podman"):
        pytest.fail(
            "podman is missing and this user cannot install it: run as root (make test installs "
            "podman through scripts/container-base), or install podman, runc and debootstrap",
            pytrace=False,
        )
    result = subprocess.run(
        [str(ROOT / "scripts" / "container-base")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, f"scripts/container-base failed:\n{result.stderr}"
    env = dict(os.environ)
    for line in result.stdout.splitlines():
        _, assignment = line.split(" ", 1)
        name, value = assignment.split("=", 1)
        env[name] = shlex.split(value)[0]
    return env


def _podman(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[dict[str, str], str]]:
    env = _podman_env()
    tag = "localhost/sevpipe-test:latest"
    _ok(
        _podman(
            env,
            "build",
            "--format",
            "docker",  # the OCI format drops HEALTHCHECK
            "--build-arg",
            f"BASE={env['SEVPIPE_TEST_CONTAINER_BASE']}",
            "-t",
            tag,
            str(ROOT),
            timeout=1200,
        )
    )
    yield env, tag
    # Dangling layers of older builds go after a day; today's stay, so warm builds are quick.
    _podman(env, "image", "prune", "-f", "--filter", "until=24h")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own URL
        return int(resp.status), bytes(resp.read())


def _wait_healthz(base: str, env: dict[str, str], name: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            status, body = _get(f"{base}/healthz")
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                logs = _podman(env, "logs", name)
                pytest.fail(f"/healthz never answered; logs:\n{logs.stdout}{logs.stderr}")
            time.sleep(0.2)
            continue
        assert status == 200
        assert json.loads(body) == {"status": "ok"}
        return


def test_image_runs_as_non_root_and_keeps_its_healthcheck(
    image: tuple[dict[str, str], str],
) -> None:
    env, tag = image
    inspected = json.loads(_ok(_podman(env, "image", "inspect", tag)))[0]
    config = inspected["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["sevpipe"]
    assert config["Cmd"] == ["run", "--host", "0.0.0.0"]
    assert "9095/tcp" in config["ExposedPorts"]
    healthcheck = config.get("Healthcheck") or inspected.get("Healthcheck")  # podman 4 lifts it
    assert healthcheck, "no HEALTHCHECK in the image: built with --format oci?"
    assert "/healthz" in " ".join(healthcheck["Test"])


def test_without_credentials_it_refuses_to_listen_beyond_loopback(
    image: tuple[dict[str, str], str],
) -> None:
    env, tag = image
    result = _podman(env, "run", "--rm", tag, timeout=120)
    assert result.returncode != 0
    assert "without credentials" in result.stdout + result.stderr


def test_container_serves_healthz_and_logs_a_webhook(image: tuple[dict[str, str], str]) -> None:
    env, tag = image
    name = f"sevpipe-test-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    _ok(
        _podman(
            env,
            "run",
            "-d",
            "--name",
            name,
            "-p",
            f"127.0.0.1:{port}:9095",
            "-e",
            f"SEVPIPE_AUTH_TOKEN={TOKEN}",
            tag,
        )
    )
    try:
        _wait_healthz(base, env, name)
        assert _ok(_podman(env, "exec", name, "id", "-u")).strip() == UID
        _ok(_podman(env, "healthcheck", "run", name))

        body = FIXTURE.read_bytes()
        unauthorised = urllib.request.Request(  # noqa: S310 - our own URL
            f"{base}/api/v1/alerts", data=body, headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(unauthorised, timeout=10)  # noqa: S310
        assert denied.value.code == 401
        request = urllib.request.Request(  # noqa: S310 - our own URL
            f"{base}/api/v1/alerts",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            assert resp.status == 200

        replay = _ok(
            _podman(
                env,
                "exec",
                name,
                "sevpipe",
                "replay",
                "--data-dir",
                "/var/lib/sevpipe",
                "--topic",
                "sevpipe.alerts",
            )
        )
        records = [json.loads(line) for line in replay.splitlines() if line.strip()]
        assert records, f"nothing in the log: {replay!r}"
        assert "andromeda" in replay
        assert "High CPU Temperature" in replay
    finally:
        _podman(env, "rm", "-f", "-v", name, timeout=60)
    assert name not in _ok(_podman(env, "ps", "-a", "--format", "{{.Names}}"))
