"""YAML documents read with the line of every key, so errors can say where they are (file:line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigFileError(Exception):
    """A config file that cannot be used; the message names the file and line."""


def _lines(
    node: yaml.Node, path: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]
) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = (*path, str(key_node.value))
            out[key_path] = key_node.start_mark.line + 1
            _lines(value_node, key_path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = item.start_mark.line + 1
            _lines(item, (*path, i), out)


class YamlDocument:
    """A parsed YAML mapping plus the line each key path starts on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigFileError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigFileError(f"{where}: invalid YAML: {exc.problem}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigFileError(
                f"{path}:1: expected a mapping of settings, got {type(data).__name__}"
            )
        self.data: dict[str, Any] = data
        self.lines: dict[tuple[str | int, ...], int] = {}
        if node is not None:
            _lines(node, (), self.lines)

    def where(self, loc: tuple[str | int, ...]) -> str:
        """``file:line`` of the deepest known key on ``loc``."""
        for end in range(len(loc), 0, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return f"{self.path}:{line}"
        return str(self.path)
