"""``sevpipe run``: the banner, its ready-to-paste curl, and a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import http.client
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from .harness import CLI_TIMEOUT, Launcher, Server, alert_events, clean_env

pytestmark = pytest.mark.e2e

TOKEN = "e2e-bearer-7f3a9c"
BASIC_USER = "alertmanager"
BASIC_PASSWORD = "e2e-basic-pw-41b2"
POLL_TIMEOUT = 10.0

AUTH_MODES: dict[str, dict[str, str]] = {
    "no-auth": {},
    "bearer": {"SEVPIPE_AUTH_TOKEN": TOKEN},
    "basic": {
        "SEVPIPE_BASIC_AUTH_USERNAME": BASIC_USER,
        "SEVPIPE_BASIC_AUTH_PASSWORD": BASIC_PASSWORD,
    },
}


def run_in_shell(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Paste ``command`` into a shell whose environment is ``env`` (plus the usual)."""
    return subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        env=clean_env(env),
        timeout=CLI_TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize("mode", AUTH_MODES)
def test_banner_curl_posts_an_alert_that_lands_in_the_log(
    launcher: Launcher, data_dir: Path, mode: str
) -> None:
    env = AUTH_MODES[mode]
    server = launcher.start(data_dir, env=env)

    assert server.banner[0] == f"sevpipe listening on {server.base_url} (data dir {data_dir})\n"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.base_url)
    assert server.port > 0
    assert f"Alertmanager webhook URL: {server.alerts_url}\n" in server.banner
    assert server.curl_line.startswith("curl ")
    assert server.alerts_url in server.curl_line
    secrets = [TOKEN, BASIC_PASSWORD]
    banner = "".join(server.banner)
    assert not [s for s in secrets if s in banner], "the banner shows a secret"

    first = run_in_shell(server.curl_line, env)
    assert first.returncode == 0, first.stderr
    assert orjson.loads(first.stdout) == {"accepted": 1, "appended": 1, "repeats": 0}
    again = run_in_shell(server.curl_line, env)
    assert orjson.loads(again.stdout) == {"accepted": 1, "appended": 0, "repeats": 1}
    if env:  # the same line in a shell without the secret is refused
        refused = run_in_shell(server.curl_line, {})
        assert orjson.loads(refused.stdout) == {"error": "missing or wrong credentials"}

    # Replay reads the log while the server is still running.
    events = alert_events(data_dir)
    assert len(events) == 1
    event = events[0]
    assert event["type"] == "alert.firing"
    assert event["source"] == "/sevpipe/ingest"
    assert event["subject"] == '{}:{alertname="Demo"}'
    assert event["data"]["labels"] == {
        "alertname": "Demo",
        "service": "checkout",
        "impact": "error_rate",
    }
    assert event["data"]["annotations"] == {"summary": "checkout errors above 5%"}
    assert event["data"]["starts_at"] == "2026-01-01T00:00:00Z"

    assert server.stop() == 0
    assert not [s for s in secrets if s in server.stderr()], "a secret reached the log"


def _get(server: Server, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=POLL_TIMEOUT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + POLL_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _webhooks_received(server: Server) -> float:
    status, body = _get(server, "/metrics")
    assert status == 200
    match = re.search(rb"^sevpipe_webhooks_received_total (\S+)$", body, re.MULTILINE)
    assert match is not None, body
    return float(match.group(1))


IN_FLIGHT_BODY = orjson.dumps(
    {
        "version": "4",
        "status": "firing",
        "receiver": "sevpipe",
        "groupKey": '{}:{alertname="DiskFull"}',
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "DiskFull", "instance": "db-1:9100"},
                "annotations": {"summary": "disk 97% full"},
                "startsAt": "2026-02-02T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": "d15cf011d15cf011",
            }
        ],
    }
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_after_finishing_the_request_in_flight(
    launcher: Launcher, data_dir: Path, sig: signal.Signals
) -> None:
    server = launcher.start(data_dir)
    assert _get(server, "/readyz")[0] == 200
    received_before = _webhooks_received(server)

    # A webhook whose body is still arriving: the handler has started and waits for the rest.
    half = len(IN_FLIGHT_BODY) // 2
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=POLL_TIMEOUT)
    try:
        conn.putrequest("POST", "/api/v1/alerts")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(IN_FLIGHT_BODY)))
        conn.endheaders(IN_FLIGHT_BODY[:half])
        _wait_until(lambda: _webhooks_received(server) > received_before, "the handler to start")

        server.proc.send_signal(sig)
        _wait_until(lambda: "draining in-flight" in server.stderr(), "the drain to begin")
        conn.send(IN_FLIGHT_BODY[half:])
        resp = conn.getresponse()
        status, answer = resp.status, resp.read()
    finally:
        conn.close()

    assert status == 200, answer
    assert orjson.loads(answer) == {"accepted": 1, "appended": 1, "repeats": 0}
    assert server.proc.wait(CLI_TIMEOUT) == 0, server.stderr()
    assert "Traceback" not in server.stderr()
    events = alert_events(data_dir)
    assert [e["data"]["fingerprint"] for e in events] == ["d15cf011d15cf011"]
