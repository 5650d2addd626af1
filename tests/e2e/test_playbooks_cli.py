"""``sevpipe playbooks show`` prints the playbooks in force, and ``check-config`` reads playbook
and inventory files with errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from actions.playbooks import default_playbooks, load_playbooks

from .harness import sevpipe

pytestmark = pytest.mark.e2e


def test_playbooks_show_prints_what_loads_back_to_the_defaults(tmp_path: Path) -> None:
    done = sevpipe("playbooks", "show", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    shown = tmp_path / "shown.yaml"
    shown.write_text(done.stdout)
    assert load_playbooks(shown) == default_playbooks()
    assert sevpipe("check-config", str(shown)).stdout == f"{shown}: valid playbooks\n"
    names = [book["name"] for book in yaml.safe_load(done.stdout)["playbooks"]]
    assert "sev0-outage" in names


def test_check_config_names_the_line_of_a_bad_playbook_and_inventory(tmp_path: Path) -> None:
    books = tmp_path / "books.yaml"
    books.write_text(
        "playbooks:\n  - name: x\n    steps:\n      - id: a\n        action: kubernetes.scale\n"
        "        target: {kind: Deployment, name: web}\n        mode: sometimes\n"
    )
    done = sevpipe("check-config", str(books))
    assert done.returncode == 2
    assert f"{books}:7:" in done.stderr
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("namespaces:\n  origin:\n    deploymnts: {}\n")
    done = sevpipe("check-config", str(inventory))
    assert done.returncode == 2
    assert f"{inventory}:3:" in done.stderr


@pytest.mark.parametrize("name", ["sevpipe.example.yaml", "inventory.example.yaml"])
def test_the_shipped_examples_check(name: str) -> None:
    path = Path(__file__).parents[2] / "deploy" / name
    done = sevpipe("check-config", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{path}: valid ")
