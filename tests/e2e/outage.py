"""A Kafka of the test's own, which it may stop: ``scripts/test-services`` in a private dir.

``up`` there starts Kafka, PostgreSQL and Redis on free ports of their own; ``crash()`` kills
that Kafka (SIGKILL, by the pid in its pidfile) and ``restart()`` runs ``up`` again, which
starts only what is not running. ``close()`` runs ``down`` on that dir alone: the shared
services (the default SEVPIPE_SERVICES_DIR) are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .harness import REPO

SCRIPT = REPO / "scripts" / "test-services"
UP_TIMEOUT = 300.0
DOWN_TIMEOUT = 120.0
_EXPORT = re.compile(r"^export (SEVPIPE_[A-Z_]+)=['\"]?([^'\"]*)['\"]?$")
# Variables of the script that would pin this private set onto the shared one's ports.
_PINNING = {
    "SEVPIPE_SERVICES_DIR",
    "SEVPIPE_KAFKA_PORT",
    "SEVPIPE_KAFKA_CONTROLLER_PORT",
    "SEVPIPE_POSTGRES_PORT",
    "SEVPIPE_REDIS_PORT",
    "SEVPIPE_ETCD_PORT",
    "SEVPIPE_ETCD_PEER_PORT",
    "SEVPIPE_KUBE_APISERVER_PORT",
    "SEVPIPE_KUBE_CONTROLLER_MANAGER_PORT",
}


class PrivateServices:
    def __init__(self) -> None:
        # Under /tmp and world-traversable: the script runs PostgreSQL as the postgres user.
        self.dir = Path(tempfile.mkdtemp(prefix="sevpipe-outage-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.env: dict[str, str] = {}

    def _script(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in _PINNING}
        env["SEVPIPE_SERVICES_DIR"] = str(self.dir)
        return subprocess.run(
            [str(SCRIPT), command],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )

    def up(self) -> dict[str, str]:
        """Start what is not running; the ``SEVPIPE_*`` settings that reach it."""
        done = self._script("up", UP_TIMEOUT)
        assert done.returncode == 0, done.stderr[-4000:]
        found = {}
        for line in done.stdout.splitlines():
            match = _EXPORT.match(line.strip())
            if match:
                found[match.group(1)] = match.group(2)
        self.env = found
        return found

    @property
    def kafka_pid(self) -> int:
        return int((self.dir / "kafka" / "kafka.pid").read_text().strip())

    def crash_kafka(self) -> None:
        """kill -9 this Kafka and wait until it no longer runs."""
        pid = self.kafka_pid
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(pid):
            assert time.monotonic() < deadline, f"kafka {pid} survived SIGKILL"
            time.sleep(0.05)

    def restart(self) -> None:
        self.up()

    def close(self) -> None:
        try:
            self._script("down", DOWN_TIMEOUT)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Runs, and is not a zombie (nobody may reap it in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}
