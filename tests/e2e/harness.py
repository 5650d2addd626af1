"""Drive ``sevpipe`` as a user does: real subprocesses, real ports, a temporary data dir.

Everything here is synchronous (``subprocess``); async tests call it through
``asyncio.to_thread`` so the event loop never blocks. ``env`` arguments are ``SEVPIPE_*``
settings for the process, such as a backend's (``tests/e2e/backends.py``).
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

TOPIC_ALERTS = "sevpipe.alerts"
SEVPIPE = (sys.executable, "-m", "sevpipe")
REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "alertmanager"
STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
CLI_TIMEOUT = 30.0

# "(data dir DIR)" on the embedded default, "(kafka HOST:PORT, postgresql, redis)" otherwise
_LISTENING = re.compile(r"^sevpipe listening on (http://\S+) \((.+)\)$")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without any ``SEVPIPE_*`` setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEVPIPE_")}
    env.update(extra or {})
    return env


class ServerFailedToStart(AssertionError):
    pass


@dataclass
class Server:
    """A running ``sevpipe run`` (or ``ingest``, ``classify``) process and its banner."""

    proc: subprocess.Popen[bytes]
    base_url: str
    data_dir: Path
    banner: list[str]
    stderr_path: Path

    @property
    def alerts_url(self) -> str:
        return f"{self.base_url}/api/v1/alerts"

    @property
    def curl_line(self) -> str:
        """The ready-to-paste command the banner shows under "Try it:"."""
        return self.banner[-1].strip()

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and wait for the exit code."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """kill -9, and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)


@dataclass
class Launcher:
    """Starts servers in ``workdir`` and kills every one still running on ``close``."""

    workdir: Path
    servers: list[Server] = field(default_factory=list)

    def start(
        self,
        data_dir: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        port: str = "0",
        command: str = "run",
    ) -> Server:
        n = len(self.servers)
        stderr_path = self.workdir / f"server-{n}.stderr"
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                [*SEVPIPE, command, "--port", port, "--data-dir", str(data_dir), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=clean_env(env),
                cwd=self.workdir,
            )
        try:
            banner = _read_banner(proc, STARTUP_TIMEOUT)
        except ServerFailedToStart as exc:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
            err = stderr_path.read_text(errors="replace")
            raise ServerFailedToStart(f"{exc}; stderr:\n{err}") from None
        match = _LISTENING.match(banner[0].rstrip("\n"))
        if match is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
            raise ServerFailedToStart(f"unexpected first line: {banner[0]!r}")
        server = Server(proc, match.group(1), data_dir, banner, stderr_path)
        self.servers.append(server)
        return server

    def close(self) -> None:
        for server in self.servers:
            server.kill()
            if server.proc.stdout is not None:
                server.proc.stdout.close()


def _banner_done(buf: bytes) -> bool:
    """The banner ends with the curl example, the line after "Try it:"; a stage without the
    HTTP edge (``sevpipe classify``) ends it with its metrics URL."""
    lines = buf.split(b"\n")[:-1]  # complete lines only
    if len(lines) >= 2 and lines[-1].startswith(b"Metrics: "):
        return True
    return len(lines) >= 2 and lines[-2].strip() == b"Try it:"


def _read_banner(proc: subprocess.Popen[bytes], timeout: float) -> list[str]:
    """What the server prints on startup, without blocking past ``timeout``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while not _banner_done(buf):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServerFailedToStart(f"no banner within {timeout} s; got {buf!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            code = proc.wait(STOP_TIMEOUT)
            raise ServerFailedToStart(f"exited with {code} before its banner; got {buf!r}")
        buf += chunk
    return [line.decode() + "\n" for line in buf.split(b"\n")[:-1]]


def sevpipe(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run one ``sevpipe`` command to completion, with ``stdin`` as its standard input."""
    return subprocess.run(
        [*SEVPIPE, *args],
        capture_output=True,
        text=True,
        env=clean_env(env),
        cwd=cwd,
        timeout=CLI_TIMEOUT,
        check=False,
        input=stdin,
    )


def replay(
    data_dir: Path, *args: str, env: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """``sevpipe replay --format jsonl``, parsed; fails the test if the command fails."""
    done = sevpipe("replay", "--data-dir", str(data_dir), "--format", "jsonl", *args, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    events: list[dict[str, Any]] = []
    for line in done.stdout.splitlines():
        event = orjson.loads(line)
        assert isinstance(event, dict), line
        events.append(event)
    return events


def alert_events(
    data_dir: Path, *args: str, env: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """The ``sevpipe.alerts`` topic (other stages write their own topics alongside)."""
    return replay(data_dir, "--topic", TOPIC_ALERTS, *args, env=env)


def fixture_files() -> Sequence[Path]:
    return sorted(FIXTURES.glob("*.json"))


def group_webhook(
    group_key: str,
    service: str,
    alertname: str,
    alerts: Sequence[Mapping[str, Any]],
    *,
    status: str = "firing",
) -> dict[str, Any]:
    """A webhook body as Alertmanager sends it for one group grouped by ``service``."""
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "sevpipe",
        "groupLabels": {"service": service},
        "commonLabels": {"alertname": alertname, "service": service},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


def one_alert_webhook(
    group_key: str,
    labels: Mapping[str, str],
    fingerprint: str,
    *,
    summary: str,
    starts_at: str,
    status: str = "firing",
    ends_at: str = "0001-01-01T00:00:00Z",
) -> bytes:
    """A webhook body of one alert, as Alertmanager sends it, encoded."""
    alert = {
        "status": status,
        "labels": dict(labels),
        "annotations": {"summary": summary},
        "startsAt": starts_at,
        "endsAt": ends_at,
        "fingerprint": fingerprint,
    }
    return orjson.dumps(
        {
            "version": "4",
            "groupKey": group_key,
            "status": status,
            "receiver": "sevpipe",
            "groupLabels": {},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": [alert],
        }
    )


async def _summaries(session: aiohttp.ClientSession, base_url: str) -> list[dict[str, Any]]:
    async with session.get(f"{base_url}/api/v1/incidents?limit=1000") as resp:
        assert resp.status == 200, await resp.text()
        incidents: list[dict[str, Any]] = (await resp.json())["incidents"]
    return incidents


async def _alerts(session: aiohttp.ClientSession, base_url: str, incident_id: str) -> list[Any]:
    alerts: list[Any] = []
    cursor: str | None = ""
    while cursor is not None:
        url = f"{base_url}/api/v1/incidents/{incident_id}/alerts?limit=1000"
        async with session.get(url + (f"&cursor={cursor}" if cursor else "")) as resp:
            assert resp.status == 200, await resp.text()
            page = await resp.json()
        alerts += page["alerts"]
        cursor = page["alerts_next_cursor"]
    return alerts


async def incidents_with_alerts(
    session: aiohttp.ClientSession, base_url: str
) -> list[dict[str, Any]]:
    """The incidents API's summaries, each with every one of its alerts paged in under
    ``"alerts"`` through ``/api/v1/incidents/{id}/alerts`` (as a client would).

    Summaries and pages are separate requests, so the classifier may move on in between: the
    answer is a consistent snapshot only when the summaries read after the pages are the same.
    """
    incidents = await _summaries(session, base_url)
    for _ in range(100):
        for inc in incidents:
            inc["alerts"] = await _alerts(session, base_url, inc["id"])
        again = await _summaries(session, base_url)
        if [(i["id"], i["version"]) for i in again] == [(i["id"], i["version"]) for i in incidents]:
            return incidents
        incidents = again
    raise AssertionError("the incidents never held still long enough to be read")


_LAG_LINE = re.compile(r'^sevpipe_consumer_lag\{[^}]*group="([^"]+)"[^}]*\} (\S+)$', re.M)


CAUGHT_UP_TIMEOUT = 60.0


async def until_caught_up(session: aiohttp.ClientSession, base_url: str, groups: int) -> None:
    """Until ``groups`` consumer groups of the process show no lag, twice in a row: every
    stage has handled what is in the log (so stopping now leaves no work for a restart)."""
    calm = 0
    async with asyncio.timeout(CAUGHT_UP_TIMEOUT):
        while calm < 2:
            async with session.get(f"{base_url}/metrics") as resp:
                text = await resp.text()
            lags: dict[str, float] = {}
            for group, value in _LAG_LINE.findall(text):
                lags[group] = lags.get(group, 0.0) + float(value)
            done = len(lags) >= groups and not any(lags.values())
            calm = calm + 1 if done else 0
            await asyncio.sleep(0.2)
