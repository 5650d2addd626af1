"""Settings mistakes: one clear line that names the key, exit code 2, nothing started."""

from __future__ import annotations

import http.client
import re
import subprocess
from pathlib import Path

import orjson
import pytest

from .harness import Launcher, fixture_files, sevpipe

pytestmark = pytest.mark.e2e

EXIT_USAGE = 2


def assert_one_line_error(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, nothing on stdout, one ``sevpipe: ...`` line on stderr containing ``fragments``."""
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("sevpipe: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    line = done.stderr.rstrip("\n")
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


@pytest.mark.parametrize(
    ("yaml_text", "fragments"),
    [
        pytest.param("port: 0\nhost: [127.0.0.1\n", (":3: invalid YAML",), id="bad-yaml"),
        pytest.param(
            "port: 0\nlog_level: info\nlisten_port: 8080\n",
            ("listen_port", "unknown setting", ":3"),
            id="unknown-key",
        ),
        pytest.param(
            "log_level: info\nport: abc\n", ("port", "valid integer", ":2"), id="bad-port"
        ),
        pytest.param(
            "port: 0\nfsync: sometimes\n", ("fsync", "'full' or 'normal'", ":2"), id="bad-choice"
        ),
    ],
)
def test_config_file_error_is_one_line_naming_key_and_line(
    tmp_path: Path, data_dir: Path, yaml_text: str, fragments: tuple[str, ...]
) -> None:
    config = tmp_path / "sevpipe.yaml"
    config.write_text(yaml_text, encoding="utf-8")
    done = sevpipe("run", "--config", str(config), "--data-dir", str(data_dir), cwd=tmp_path)
    line = assert_one_line_error(done, *fragments)
    assert str(config) in line
    assert not data_dir.exists()  # refused before touching anything


def test_missing_config_file(tmp_path: Path, data_dir: Path) -> None:
    config = tmp_path / "missing.yaml"
    done = sevpipe("run", "--config", str(config), "--data-dir", str(data_dir), "--port", "0")
    assert_one_line_error(done, str(config), "cannot read")


def test_bad_port_in_environment(tmp_path: Path, data_dir: Path) -> None:
    env = {"SEVPIPE_PORT": "abc"}
    done = sevpipe("run", "--data-dir", str(data_dir), env=env, cwd=tmp_path)
    assert_one_line_error(done, "port", "SEVPIPE_PORT", "valid integer")
    assert not data_dir.exists()


def test_bad_value_in_environment_is_named_for_replay_too(tmp_path: Path) -> None:
    env = {"SEVPIPE_LOG_LEVEL": "chatty"}
    done = sevpipe("replay", "--data-dir", str(tmp_path), env=env, cwd=tmp_path)
    assert_one_line_error(done, "log_level", "SEVPIPE_LOG_LEVEL")


def test_env_beats_config_file(tmp_path: Path, data_dir: Path) -> None:
    config = tmp_path / "sevpipe.yaml"
    config.write_text("port: 0\nfsync: full\n", encoding="utf-8")
    env = {"SEVPIPE_FSYNC": "always"}
    done = sevpipe("run", "--config", str(config), "--data-dir", str(data_dir), env=env)
    line = assert_one_line_error(done, "fsync", "SEVPIPE_FSYNC")
    assert str(config) not in line


def test_all_interfaces_without_credentials_is_refused(tmp_path: Path, data_dir: Path) -> None:
    done = sevpipe("run", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(data_dir))
    assert_one_line_error(done, "host", "0.0.0.0", "without credentials", "SEVPIPE_AUTH_TOKEN")
    assert not (data_dir / "events.db").exists()


def _post(port: int, token: str | None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/api/v1/alerts", fixture_files()[0].read_bytes(), headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_all_interfaces_with_a_token_listens(launcher: Launcher, data_dir: Path) -> None:
    token = "e2e-exposed-5be0"
    server = launcher.start(data_dir, "--host", "0.0.0.0", env={"SEVPIPE_AUTH_TOKEN": token})
    assert re.fullmatch(r"http://0\.0\.0\.0:\d+", server.base_url)
    assert 'Authorization: Bearer $SEVPIPE_AUTH_TOKEN"' in server.curl_line
    assert token not in "".join(server.banner)
    status, body = _post(server.port, None)
    assert status == 401, body
    status, body = _post(server.port, token)
    assert status == 200, body
    assert orjson.loads(body)["accepted"] == 2
    assert server.stop() == 0
