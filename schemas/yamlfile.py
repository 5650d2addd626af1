"""YAML documents read with the line of every key, so errors can say where they are (file:line)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ValidationError

MAX_ERRORS: Final = 10


class ConfigFileError(Exception):
    """A config file that cannot be used; the message names the file and line."""


class LocatedError(ValueError):
    """A cross-field error raised high in a model that belongs to a key deeper down."""

    def __init__(self, message: str, loc: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.loc = loc


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


def describe(
    exc: ValidationError, doc: YamlDocument, models: Iterable[type[BaseModel]], what: str
) -> str:
    """One line per problem, ``file:line: key.path: what is wrong``; an unknown key names
    the closest key of ``models``. ``what`` names the whole document when no key does."""
    known = sorted({name for model in models for name in model.model_fields})
    found: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc: tuple[str | int, ...] = tuple(err["loc"])
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, LocatedError):
            loc, msg = (*loc, *cause.loc), str(cause)
        elif err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = "unknown key" + (f" (did you mean {close[0]}?)" if close else "")
        elif isinstance(cause, ValueError):
            msg = str(cause)
        else:
            msg = err["msg"]
        key = ".".join(str(part) for part in loc) or what
        found.append((doc.where(loc), f"{key}: {msg}"))
    found.sort(key=lambda item: _line_number(item[0]))  # stable: ties keep pydantic's order
    lines = [f"{where}: {text}" for where, text in found[:MAX_ERRORS]]
    if len(found) > MAX_ERRORS:
        lines.append(f"... and {len(found) - MAX_ERRORS} more")
    return "\n".join(lines)


def _line_number(where: str) -> int:
    line = where.rpartition(":")[2]
    return int(line) if line.isdigit() else 0
