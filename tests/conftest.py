"""Shared fixtures: a real EmbeddedLog in a temp dir, and the Hypothesis profile."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aws_support import moto_server  # noqa: F401 - the session fixture for the AWS emulator
from hypothesis import HealthCheck, settings
from services import Services, services  # noqa: F401 - the session fixture for real services

from eventlog import EmbeddedLog

# The property tests drive a real HTTP server and SQLite file: no per-example deadline
# (a fsync is not a bug), and one app per test shared by its examples on purpose.
settings.register_profile(
    "sevpipe",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("sevpipe")


@pytest.fixture
async def eventlog(tmp_path: Path) -> AsyncIterator[EmbeddedLog]:
    log = EmbeddedLog(tmp_path / "events.db")
    await log.start()
    try:
        yield log
    finally:
        await log.close()
