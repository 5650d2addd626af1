"""Fixtures of the end-to-end suite: servers that are always killed at teardown, and the
backend set a test runs on (``backend``: embedded, then production)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .backends import BACKENDS, Backend, backend_named
from .harness import Launcher


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    """Start ``sevpipe run`` processes; any still running at teardown is killed."""
    launch = Launcher(tmp_path)
    try:
        yield launch
    finally:
        launch.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The test once per backend set; on production, its own topics and database.

    Ask for it before ``launcher``, so the servers are killed before their database goes.
    """
    with backend_named(request.param, request) as chosen:
        yield chosen
