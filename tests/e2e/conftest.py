"""Fixtures of the end-to-end suite: servers that are always killed at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
