"""``sevpipe send FILE``: post a webhook body like Alertmanager does, and say what came back."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from .harness import Launcher, Server, alert_events, fixture_files, sevpipe

pytestmark = pytest.mark.e2e

TOKEN = "e2e-send-token-2c81"
AUTH_ENV = {"SEVPIPE_AUTH_TOKEN": TOKEN}


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module, configured with a bearer token."""
    workdir = tmp_path_factory.mktemp("send")
    launch = Launcher(workdir)
    try:
        yield launch.start(workdir / "data", env=AUTH_ENV)
    finally:
        launch.close()


def _answer(line: str) -> tuple[int, dict[str, Any]]:
    status, _, body = line.rstrip("\n").partition(" ")
    parsed = orjson.loads(body)
    assert isinstance(parsed, dict), line
    return int(status), parsed


def test_send_posts_each_fixture_and_prints_the_200(token_server: Server) -> None:
    sent: list[dict[str, Any]] = []
    for fixture in fixture_files():
        alerts = orjson.loads(fixture.read_bytes())["alerts"]
        done = sevpipe("send", str(fixture), "--url", token_server.alerts_url, "--token", TOKEN)
        assert done.returncode == 0, (fixture.name, done.stderr)
        assert done.stderr == ""
        status, answer = _answer(done.stdout)
        assert status == 200, fixture.name
        assert answer["accepted"] == len(alerts), fixture.name
        assert answer["appended"] + answer["repeats"] == len(alerts), fixture.name
        sent.extend(alerts)

    stored = alert_events(token_server.data_dir)
    for alert in sent:
        matches = [e["data"] for e in stored if e["data"]["labels"] == alert["labels"]]
        assert matches, alert["labels"]
        if alert.get("fingerprint"):
            assert alert["fingerprint"] in {m["fingerprint"] for m in matches}
        else:  # Alertmanager < 0.19: computed from the labels
            assert all(m["fingerprint_computed"] for m in matches)


def test_send_reads_the_token_from_the_environment(token_server: Server) -> None:
    fixture = fixture_files()[0]
    done = sevpipe("send", str(fixture), "--url", token_server.alerts_url, env=AUTH_ENV)
    assert done.returncode == 0, done.stderr
    assert _answer(done.stdout)[0] == 200


def test_send_reads_the_body_from_stdin(token_server: Server) -> None:
    body = fixture_files()[2].read_text(encoding="utf-8")
    url = token_server.alerts_url
    done = sevpipe("send", "-", "--url", url, "--token", TOKEN, stdin=body)
    assert done.returncode == 0, done.stderr
    status, answer = _answer(done.stdout)
    assert (status, answer["accepted"]) == (200, 1)


@pytest.mark.parametrize("token", ["not-the-token", None], ids=["wrong-token", "no-token"])
def test_send_with_bad_credentials_prints_the_401_and_fails(
    token_server: Server, token: str | None
) -> None:
    args = ["--token", token] if token else []
    fixture = fixture_files()[0]
    done = sevpipe("send", str(fixture), "--url", token_server.alerts_url, *args)
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    status, answer = _answer(done.stderr)
    assert status == 401
    assert answer == {"error": "missing or wrong credentials"}


def test_send_invalid_body_prints_the_400_naming_the_field(
    token_server: Server, tmp_path: Path
) -> None:
    body = tmp_path / "no-alerts.json"
    body.write_text('{"version": "4", "status": "firing", "alerts": []}')
    done = sevpipe("send", str(body), "--url", token_server.alerts_url, "--token", TOKEN)
    assert done.returncode != 0
    status, answer = _answer(done.stderr)
    assert status == 400
    assert answer["field"] == "alerts"


def test_send_missing_file_fails_with_one_line(token_server: Server, tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    done = sevpipe("send", str(missing), "--url", token_server.alerts_url, "--token", TOKEN)
    assert done.returncode != 0
    assert done.stderr == f"sevpipe: cannot read {missing}: No such file or directory\n"


def test_send_to_nothing_listening_fails_with_one_line() -> None:
    with socket.socket() as sock:  # a port the OS gave out and nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}/api/v1/alerts"
        done = sevpipe("send", str(fixture_files()[0]), "--url", url)
    assert done.returncode != 0
    assert done.stderr.startswith(f"sevpipe: cannot post to {url}: ")
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_send_with_basic_auth_user(launcher: Launcher, data_dir: Path) -> None:
    env = {"SEVPIPE_BASIC_AUTH_USERNAME": "alertmanager", "SEVPIPE_BASIC_AUTH_PASSWORD": "pw-9d"}
    server = launcher.start(data_dir, env=env)
    fixture = str(fixture_files()[1])
    done = sevpipe("send", fixture, "--url", server.alerts_url, "--user", "alertmanager:pw-9d")
    assert done.returncode == 0, done.stderr
    assert _answer(done.stdout) == (200, {"accepted": 3, "appended": 3, "repeats": 0})
    refused = sevpipe("send", fixture, "--url", server.alerts_url, "--user", "alertmanager:no")
    assert refused.returncode != 0
    assert _answer(refused.stderr)[0] == 401
