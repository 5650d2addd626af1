"""``sevpipe replay``: filters by topic, time and offset; JSON lines or a table.

The same checks read the embedded log and Kafka (``SEVPIPE_KAFKA_*`` in the environment),
where an offset counts within its partition and ``--from-offset n`` starts every partition
at ``n`` (eventlog/kafka.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from .backends import BACKENDS, Backend, backend_named
from .harness import TOPIC_ALERTS, Launcher, fixture_files, replay, sevpipe

pytestmark = pytest.mark.e2e

BATCH_A = fixture_files()[0]  # 01: two firing alerts
BATCH_B = fixture_files()[2]  # 03: one resolved alert
BATCH_B_FINGERPRINT = "fbab788ec4c1018b"


@dataclass(frozen=True)
class Row:
    """One line of ``--format table``."""

    offset: int
    time: str
    topic: str
    type: str
    rest: str


@dataclass(frozen=True)
class Log:
    data_dir: Path
    backend: Backend
    events: list[dict[str, Any]]  # every topic, in log order
    rows: list[Row]  # the same, as the table shows them

    def topic_of(self, event: dict[str, Any]) -> str:
        return self.rows[self.events.index(event)].topic

    def replay(self, *args: str) -> list[dict[str, Any]]:
        return replay(self.data_dir, *args, env=self.backend.env)

    def table(self, *args: str) -> tuple[str, list[Row]]:
        return table(self.data_dir, *args, env=self.backend.env)


def table(
    data_dir: Path, *args: str, env: Mapping[str, str] | None = None
) -> tuple[str, list[Row]]:
    done = sevpipe("replay", "--data-dir", str(data_dir), "--format", "table", *args, env=env)
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    rows = []
    for line in lines:
        offset, time, topic, type_, rest = line.split(None, 4)
        rows.append(Row(int(offset), time, topic, type_, rest))
    return header, rows


@pytest.fixture(scope="module", params=BACKENDS)
def log(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Log]:
    """A log written by a real server: fixture 01, then (later) fixture 03."""
    with backend_named(request.param, request) as backend:
        workdir = tmp_path_factory.mktemp("replay")
        launch = Launcher(workdir)
        try:
            server = launch.start(workdir / "data", env=backend.env)
            for body in (BATCH_A, BATCH_B):  # two processes: the batches are milliseconds apart
                done = sevpipe("send", str(body), "--url", server.alerts_url)
                assert done.returncode == 0, done.stderr
            assert server.stop() == 0
        finally:
            launch.close()
        data_dir = workdir / "data"
        events = replay(data_dir, env=backend.env)
        _, rows = table(data_dir, env=backend.env)
        yield Log(data_dir, backend, events, rows)


def _ms(value: str | datetime) -> int:
    moment = (
        datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    )
    return int(moment.timestamp() * 1000)


def _ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in events]


def _batch_b_time(log: Log) -> datetime:
    (event,) = [e for e in log.events if e["data"].get("fingerprint") == BATCH_B_FINGERPRINT]
    return datetime.fromisoformat(event["time"].replace("Z", "+00:00"))


def test_table_shows_every_event_with_offset_time_topic_type_and_summary(log: Log) -> None:
    header, rows = log.table()
    assert header.split() == ["OFFSET", "TIME", "TOPIC", "TYPE", "SUBJECT", "/", "SUMMARY"]
    assert len(rows) == len(log.events) >= 3
    if log.backend.embedded:  # one sequence for the whole log
        assert [r.offset for r in rows] == sorted({r.offset for r in rows})
    per_key: dict[tuple[str, str], list[int]] = {}  # a key's events sit in one partition
    for row, event in zip(rows, log.events, strict=True):
        per_key.setdefault((row.topic, event["subject"]), []).append(row.offset)
    for offsets in per_key.values():
        assert offsets == sorted(set(offsets))
    for row, event in zip(rows, log.events, strict=True):
        assert row.type == event["type"]
        assert row.rest.startswith(event["subject"])
        assert _ms(row.time) == _ms(event["time"])
    alert_rows = [r for r in rows if r.topic == TOPIC_ALERTS]
    assert [r.type for r in alert_rows] == ["alert.firing", "alert.firing", "alert.resolved"]
    assert alert_rows[0].rest.endswith("High CPU Temperature a1bc48475b20e73d")
    assert alert_rows[2].rest.endswith(f"Deployment {BATCH_B_FINGERPRINT}")


def test_topic_filter(log: Log) -> None:
    alerts = log.replay("--topic", TOPIC_ALERTS)
    assert _ids(alerts) == _ids([e for e in log.events if log.topic_of(e) == TOPIC_ALERTS])
    assert len(alerts) == 3
    unknown = sevpipe(
        "replay",
        "--data-dir",
        str(log.data_dir),
        "--topic",
        "sevpipe.no-such-topic",
        env=log.backend.env,
    )
    assert unknown.returncode == 0, unknown.stderr
    assert unknown.stdout == ""
    assert "'sevpipe.no-such-topic' is not one of" in unknown.stderr


def test_since_and_until_with_iso_times(log: Log) -> None:
    boundary = _batch_b_time(log)
    after = [e for e in log.events if _ms(e["time"]) >= _ms(boundary)]
    before = [e for e in log.events if _ms(e["time"]) < _ms(boundary)]
    assert BATCH_B_FINGERPRINT in {e["data"].get("fingerprint") for e in after}
    assert {"a1bc48475b20e73d", "c2ea85182f28cbd9"} <= {
        e["data"].get("fingerprint") for e in before
    }

    india = timezone(timedelta(hours=5, minutes=30))
    zulu = boundary.isoformat().replace("+00:00", "Z")
    assert _ids(log.replay("--since", zulu)) == _ids(after)
    assert _ids(log.replay("--until", boundary.astimezone(india).isoformat())) == _ids(before)
    naive = boundary.replace(tzinfo=None).isoformat()  # no offset: UTC
    assert _ids(log.replay("--since", naive)) == _ids(after)
    first = log.events[0]["time"]
    window = log.replay("--since", first, "--until", zulu)
    assert _ids(window) == _ids(before)


def test_since_and_until_with_durations(log: Log) -> None:
    assert _ids(log.replay("--since", "2h")) == _ids(log.events)
    assert log.replay("--until", "2h") == []
    # The log was written a moment ago: all of it is within 90 minutes, none older.
    for ago in ("90m", "1h30m", "PT90M"):
        assert _ids(log.replay("--since", ago)) == _ids(log.events), ago
        assert log.replay("--until", ago) == [], ago


def test_from_offset(log: Log) -> None:
    """The rows at or past the offset, in the same order (every partition from there)."""
    offsets = sorted({r.offset for r in log.rows})
    _, rows = log.table("--from-offset", str(offsets[1]))
    assert rows == [r for r in log.rows if r.offset >= offsets[1]]
    assert 0 < len(rows) < len(log.rows)
    if log.backend.embedded:
        assert rows == log.rows[1:]
    alerts = [e for e in log.events if log.topic_of(e) == TOPIC_ALERTS]
    last_alert_offset = log.rows[log.events.index(alerts[-1])].offset
    tail = log.replay("--topic", TOPIC_ALERTS, "--from-offset", str(last_alert_offset))
    alert_offsets = [log.rows[log.events.index(a)].offset for a in alerts]
    assert _ids(tail) == _ids(
        [a for a, o in zip(alerts, alert_offsets, strict=True) if o >= last_alert_offset]
    )
    assert _ids(tail)[-1:] == _ids(alerts[-1:])


def test_unreadable_time_is_one_line_naming_it(log: Log) -> None:
    done = sevpipe(
        "replay", "--data-dir", str(log.data_dir), "--until", "yesterday", env=log.backend.env
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "sevpipe: invalid time 'yesterday': use a duration like 90m, 1h30m, 7d"
        " or an ISO 8601 time\n"
    )


@pytest.mark.parametrize(("exists", "fmt"), [(False, "jsonl"), (True, "table")])
def test_no_log_is_one_line_error(tmp_path: Path, exists: bool, fmt: str) -> None:
    data_dir = tmp_path / "empty"
    if exists:
        data_dir.mkdir()
    done = sevpipe("replay", "--data-dir", str(data_dir), "--format", fmt)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == f"sevpipe: no event log at {data_dir / 'events.db'}\n"
    assert data_dir.exists() == exists  # replay creates nothing
    assert not (data_dir / "events.db").exists()


def test_an_unknown_topic_gets_a_note_on_stderr(tmp_path: Path) -> None:
    done = sevpipe("replay", "--data-dir", str(tmp_path), "--topic", "sevpipe.alert")
    assert "'sevpipe.alert' is not one of sevpipe.alerts" in done.stderr
