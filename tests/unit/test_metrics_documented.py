"""Every metric sevpipe exports is in the README's Metrics table, with its type and labels, and
the table lists nothing the code does not export (the code read by metrics_support)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from metrics_support import ROOT, declared_in_source, exported

README: Final = ROOT / "README.md"
TICKED: Final = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Row:
    type: str
    labels: tuple[str, ...]
    line: int


def readme_table() -> dict[str, Row]:
    """The Metrics section's table: metric name -> type and labels (a row may name several)."""
    rows: dict[str, Row] = {}
    inside = False
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("## "):
            inside = line.strip() == "## Metrics"
            continue
        if not inside or not line.startswith("| `sevpipe_"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 4, f"README.md:{number}: a row has 4 cells: {line}"
        names, kind, labels, _what = cells
        for name in TICKED.findall(names):
            assert name not in rows, f"README.md:{number}: {name} is listed twice"
            rows[name] = Row(kind, tuple(TICKED.findall(labels)), number)
    return rows


def test_the_table_is_found() -> None:
    assert len(readme_table()) >= 10


def test_every_metric_the_code_declares_is_registered_here() -> None:
    # A metric whose owner metrics_support.exported() does not instantiate would be missed by
    # the comparisons below; the source says what every constructor call names.
    declared = declared_in_source()
    missing = {name: where for name, where in declared.items() if name not in exported()}
    assert not missing, (
        "metrics declared in the code but not registered by metrics_support.exported() "
        f"(add their owner there): {missing}"
    )
    assert set(exported()) == set(declared)


def test_every_metric_is_sevpipes() -> None:
    assert all(name.startswith("sevpipe_") for name in exported())


def test_the_readme_lists_every_exported_metric_and_no_other() -> None:
    table = readme_table()
    undocumented = sorted(set(exported()) - set(table))
    stale = sorted(
        f"{name} (README.md:{table[name].line})" for name in set(table) - set(exported())
    )
    assert not undocumented, f"exported but not in README's Metrics table: {undocumented}"
    assert not stale, f"in README's Metrics table but not exported: {stale}"


def test_types_and_labels_agree() -> None:
    table = readme_table()
    wrong = []
    for name, metric in sorted(exported().items()):
        row = table.get(name)
        if row is None:
            continue  # the test above names it
        if row.type != metric.type:
            wrong.append(f"README.md:{row.line}: {name} is a {metric.type}, not a {row.type}")
        if sorted(row.labels) != sorted(metric.labels):
            wrong.append(
                f"README.md:{row.line}: {name} has labels {list(metric.labels)}, "
                f"not {list(row.labels)}"
            )
    assert not wrong, "\n".join(wrong)
