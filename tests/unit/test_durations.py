"""The one duration grammar: policy durations, settings in seconds, ``--since``/``--until``."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, ValidationError

from schemas.durations import Duration, Seconds, format_duration, parse_duration, parse_time
from sevpipe.cli import _times, build_parser
from sevpipe.settings import SettingsError, load_settings

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1h", timedelta(hours=1)),
        ("30m", timedelta(minutes=30)),
        ("90m", timedelta(minutes=90)),
        ("1h30m", timedelta(minutes=90)),
        (" 1h30m ", timedelta(minutes=90)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5s", timedelta(seconds=1.5)),
        ("2w", timedelta(weeks=2)),
        ("90", timedelta(seconds=90)),
        (90, timedelta(seconds=90)),
        (1.5, timedelta(seconds=1.5)),
        (0, timedelta(0)),
        ("PT2H", timedelta(hours=2)),
        ("P1DT30M", timedelta(days=1, minutes=30)),
    ],
)
def test_parse_duration(value: str | float, expected: timedelta) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "expected a duration"),
        ("soon", "expected a duration"),
        ("1 hour", "expected a duration"),
        ("1h 30m", "expected a duration"),
        ("h", "expected a duration"),
        ("-5m", "must not be negative"),
        (-1, "must not be negative"),
        ("PTxH", "expected a duration"),
        (float("nan"), "expected a duration"),
        (True, "expected a duration"),  # YAML's "yes"
        ("1e400", "expected a duration"),
        ("99999999999w", "too long"),
    ],
)
def test_parse_duration_refuses(value: str | float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1h", timedelta(hours=1)), ("1h30m", timedelta(minutes=90)), ("0s", timedelta(0))],
)
def test_format_duration_round_trips(text: str, value: timedelta) -> None:
    assert format_duration(value) == text
    assert parse_duration(format_duration(value)) == value


def test_duration_and_seconds_as_model_fields() -> None:
    class Model(BaseModel):
        window: Duration
        timeout: Seconds

    model = Model.model_validate({"window": "1h30m", "timeout": "1m"})
    assert model.window == timedelta(minutes=90)
    assert model.timeout == 60.0
    assert model.model_dump(mode="json") == {"window": "1h30m", "timeout": 60.0}
    assert Model.model_validate({"window": 5, "timeout": 2.5}).timeout == 2.5
    with pytest.raises(ValidationError, match="must not be negative"):
        Model.model_validate({"window": "-1m", "timeout": 1})
    with pytest.raises(ValidationError, match="expected a duration"):
        Model.model_validate({"window": "1m", "timeout": "soon"})


# -- settings ---------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SEVPIPE_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
def test_settings_take_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().shutdown_timeout == 10.0
    monkeypatch.setenv("SEVPIPE_SHUTDOWN_TIMEOUT", "1m30s")
    assert load_settings().shutdown_timeout == 90.0
    monkeypatch.setenv("SEVPIPE_SHUTDOWN_TIMEOUT", "2.5")
    assert load_settings().shutdown_timeout == 2.5
    monkeypatch.setenv("SEVPIPE_SHUTDOWN_TIMEOUT", "soon")
    with pytest.raises(SettingsError, match=r"shutdown_timeout.*expected a duration"):
        load_settings()
    monkeypatch.setenv("SEVPIPE_SHUTDOWN_TIMEOUT", "0s")
    with pytest.raises(SettingsError, match="shutdown_timeout"):
        load_settings()


# -- --since / --until ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90m", NOW - timedelta(minutes=90)),
        ("1h30m", NOW - timedelta(minutes=90)),
        ("7d", NOW - timedelta(days=7)),
        ("PT2H", NOW - timedelta(hours=2)),
        ("2026-03-01T10:30:00Z", datetime(2026, 3, 1, 10, 30, tzinfo=UTC)),
        ("2026-03-01T10:30:00", datetime(2026, 3, 1, 10, 30, tzinfo=UTC)),  # no offset: UTC
        (
            "2026-03-01T16:00:00+05:30",
            datetime(2026, 3, 1, 16, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        ),
        ("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC)),
        ("20260301", datetime(2026, 3, 1, tzinfo=UTC)),  # a bare number is a date, not seconds
    ],
)
def test_parse_time(value: str, expected: datetime) -> None:
    got = parse_time(value, now=NOW)
    assert got == expected
    assert got.tzinfo is not None


@pytest.mark.parametrize("value", ["yesterday", "90", "-5m", "2026-13-01T00:00:00Z", ""])
def test_parse_time_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="invalid time"):
        parse_time(value, now=NOW)


@pytest.mark.parametrize("command", ["replay", "backtest"])
def test_since_and_until_on_the_command_line(command: str) -> None:
    extra = ["--policy", "p.yaml"] if command == "backtest" else []
    for since, ago in (("90m", timedelta(minutes=90)), ("1h30m", timedelta(minutes=90))):
        args = build_parser().parse_args([command, *extra, "--since", since, "--until", "30m"])
        before = datetime.now(UTC)
        start, end = _times(args)
        after = datetime.now(UTC)
        assert start is not None
        assert end is not None
        assert before - ago <= start <= after - ago
        half_hour = timedelta(minutes=30)
        assert before - half_hour <= end <= after - half_hour

    iso = ["--since", "2026-03-01T10:30:00Z", "--until", "2026-03-01T12:00:00+01:00"]
    args = build_parser().parse_args([command, *extra, *iso])
    assert _times(args) == (
        datetime(2026, 3, 1, 10, 30, tzinfo=UTC),
        datetime(2026, 3, 1, 11, 0, tzinfo=UTC),
    )

    args = build_parser().parse_args([command, *extra, "--since", "yesterday"])
    with pytest.raises(SettingsError, match="invalid time 'yesterday'"):
        _times(args)
