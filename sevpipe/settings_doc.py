"""``sevpipe settings reference``: the configuration reference, generated from the settings
model (:class:`sevpipe.settings.Settings` and the models nested in it), so that it cannot say
other than the code.

Each key gets its type (with its bounds), its default, its environment variable
(``SEVPIPE_<KEY>``; a nested object is one variable holding JSON) and its ``description``.
The whole reference is ``docs/configuration.md``; the top-level table is also the README's
Settings table, between :data:`START` and :data:`END`. ``tests/unit/test_settings_reference.py``
fails when either differs from what the model generates; :data:`REGENERATE` rewrites both.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
from collections.abc import Iterator
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from comms.email import Address
from schemas.durations import Seconds, format_duration
from sevpipe.settings import Settings

START = "<!-- settings-reference:start -->"
END = "<!-- settings-reference:end -->"
DOC = "docs/configuration.md"
REGENERATE = f".venv/bin/sevpipe settings reference --out {DOC} --readme README.md"
ENV_PREFIX = "SEVPIPE_"

_SECONDS = get_args(Seconds)[1:]
_ADDRESS = get_args(Address)[1:]
_SCALARS: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
    SecretStr: "secret",
    timedelta: "duration",
}
_MIB = 1024 * 1024


def fields_of(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    yield from model.model_fields.items()


def nested_models(model: type[BaseModel] = Settings) -> list[tuple[str, type[BaseModel]]]:
    """(dotted key, model) of every object nested in MODEL's keys, in field order, depth first
    (a list of objects is ``key[]``)."""
    return [(key, inner) for key, inner, _ in _nested(model)]


def _nested(model: type[BaseModel]) -> Iterator[tuple[str, type[BaseModel], FieldInfo]]:
    """As nested_models, with the field holding each object."""
    for name, info in fields_of(model):
        for inner, many in _models_in(info.annotation):
            key = f"{name}[]" if many else name
            yield key, inner, info
            yield from ((f"{key}.{k}", m, i) for k, m, i in _nested(inner))


def _models_in(tp: Any, many: bool = False) -> Iterator[tuple[type[BaseModel], bool]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        yield tp, many
        return
    origin = get_origin(tp)
    if origin is Annotated:
        yield from _models_in(get_args(tp)[0], many)
        return
    collection = origin in (list, tuple, set, frozenset, dict)
    for arg in get_args(tp):
        if arg is not Ellipsis:
            yield from _models_in(arg, many or collection)


def missing_descriptions(model: type[BaseModel] = Settings) -> list[str]:
    """Dotted keys of MODEL (nested ones included) that have no description."""
    keys = [name for name, info in fields_of(model) if not (info.description or "").strip()]
    for prefix, inner in nested_models(model):
        keys += [
            f"{prefix}.{name}"
            for name, info in fields_of(inner)
            if not (info.description or "").strip()
        ]
    return keys


# -- types


def type_name(tp: Any, metadata: list[Any] | tuple[Any, ...] = ()) -> str:
    """How a reader would name TP: ``integer``, ``duration``, ``one of `a`, `b```, ..."""
    if any(m in _SECONDS for m in metadata):
        base = "duration"
    elif any(m in _ADDRESS for m in metadata):
        base = "email address"
    else:
        base = _bare_type(tp)
    bounds = _bounds(metadata)
    return f"{base} ({bounds})" if bounds else base


def _bare_type(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return type_name(args[0], args[1:])
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args if a is not type(None))
    if origin is not None:
        return _generic(origin, args)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "object"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in tp)
    return _SCALARS.get(tp) or str(getattr(tp, "__name__", tp))


def _generic(origin: Any, args: tuple[Any, ...]) -> str:
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is dict:
        return f"map of {type_name(args[0])} to {type_name(args[1])}"
    items = [a for a in args if a is not Ellipsis]
    return "list of " + (type_name(items[0]) if len(items) == 1 else "values")


def _bounds(metadata: list[Any] | tuple[Any, ...]) -> str:
    lower = upper = None
    out = []
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            lower = f">= {m.ge}"
        elif isinstance(m, annotated_types.Gt):
            lower = f"> {m.gt}"
        elif isinstance(m, annotated_types.Le):
            upper = f"<= {m.le}"
        elif isinstance(m, annotated_types.Lt):
            upper = f"< {m.lt}"
        elif isinstance(m, annotated_types.MinLen) and m.min_length > 0:
            out.append("not empty" if m.min_length == 1 else f"at least {m.min_length}")
        elif isinstance(m, annotated_types.MaxLen):
            out.append(f"at most {m.max_length} long")
    if lower and upper and lower.startswith(">=") and upper.startswith("<="):
        out.insert(0, f"{lower[3:]}..{upper[3:]}")
    else:
        out[:0] = [b for b in (lower, upper) if b]
    return ", ".join(out)


# -- defaults


def default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if any(m in _SECONDS for m in info.metadata) and isinstance(value, int | float):
        value = timedelta(seconds=value)
    return _shown(value)


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, BaseModel):
        return "its keys' defaults"
    if isinstance(value, timedelta):
        text = format_duration(value)
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, Enum):
        text = str(value.value)
    elif isinstance(value, str):
        text = value or '""'
    elif isinstance(value, dict) and not value:
        text = "{}"
    elif isinstance(value, list | tuple) and not value:
        text = "[]"
    elif isinstance(value, int) and value >= _MIB and value % _MIB == 0:
        return f"`{value}` ({value // _MIB} MiB)"
    else:
        text = str(value)
    return f"`{text}`"


# -- Markdown


def _cell(text: str) -> str:
    """TEXT on one line, safe in a table cell: no column break, no tag (``<data_dir>``)."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "\\<")


def env_var(key: str) -> str:
    return f"{ENV_PREFIX}{key.upper()}"


def _anchor(key: str) -> str:
    """GitHub's anchor of the heading naming KEY."""
    return re.sub(r"[^\w\- ]", "", key.removesuffix("[]").lower()).replace(" ", "-")


def _type_cell(info: FieldInfo, key: str, page: str = "") -> str:
    text = type_name(info.annotation, info.metadata)
    if any(True for _ in _models_in(info.annotation)):
        text = text.replace("object", f"object, see [{key}]({page}#{_anchor(key)})", 1)
    return _cell(text)


def settings_table(model: type[BaseModel] = Settings, page: str = "") -> str:
    """The top-level keys: key, type, default, environment variable, description; nested
    objects link to their section of PAGE (this page by default)."""
    lines = [
        "| key | type | default | environment | description |",
        "|---|---|---|---|---|",
    ]
    for name, info in fields_of(model):
        lines.append(
            f"| `{name}` | {_type_cell(info, name, page)} | {default_text(info)} "
            f"| `{env_var(name)}` | {_cell(info.description or '')} |"
        )
    return "\n".join(lines) + "\n"


def _nested_table(prefix: str, model: type[BaseModel]) -> str:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, info in fields_of(model):
        key = f"{prefix}.{name}"
        lines.append(
            f"| `{key}` | {_type_cell(info, key)} | {default_text(info)} "
            f"| {_cell(info.description or '')} |"
        )
    return "\n".join(lines) + "\n"


def _intro(prefix: str, model: type[BaseModel], holder: FieldInfo) -> str:
    said = [(holder.description or "").strip().rstrip(".")]
    doc = (model.__doc__ or "").strip().split("\n\n")[0]
    if doc:
        said.append(" ".join(doc.split()).rstrip("."))
    text = ". ".join(s[0].upper() + s[1:] for s in said if s) + "."
    if "." in prefix:
        return text
    top = prefix.removesuffix("[]")
    if prefix.endswith("[]"):
        where = f"In YAML, a list of objects under `{top}:`; from the environment, the whole list"
    else:
        where = f"In YAML, an object under `{top}:`; from the environment, the whole object"
    return f"{text} {where} as JSON in `{env_var(top)}`."


HEADER = f"""\
# Configuration reference

<!-- Generated from the settings model (sevpipe/settings.py and the models nested in it) by
`sevpipe settings reference`. Do not edit by hand: change a Field's description in the model,
then run `{REGENERATE}`. -->

Settings are read in this order, each overriding the one before: defaults, the YAML file given
with `--config`, `{ENV_PREFIX}*` environment variables, then flags (`--data-dir`, `--host`,
`--port`). Unknown keys and bad values fail at start with one line that names the key and where
it came from. Durations take `1h`, `30m`, `1h30m`, `500ms`, `2d`, `1w`, a number of seconds, or
ISO 8601 (`PT1H`). Every top-level key is also the environment variable `{ENV_PREFIX}<KEY>`;
a key holding an object or a list (`slack`, `operators`, ...) takes JSON there, for example
`{ENV_PREFIX}SLACK='{{"token_file": "/run/secrets/slack-token"}}'`. `sevpipe check-config FILE`
validates a settings file; `deploy/sevpipe.example.yaml` is an example. Where secrets come from
and how they are kept is in [security.md](security.md#secrets).
"""


def reference(model: type[BaseModel] = Settings) -> str:
    """The whole of ``docs/configuration.md``."""
    parts = [HEADER, "## Settings\n", settings_table(model)]
    for prefix, inner, holder in _nested(model):
        parts += [f"## {prefix.removesuffix('[]')}\n", _intro(prefix, inner, holder) + "\n"]
        parts.append(_nested_table(prefix, inner))
    return "\n".join(parts)


def readme_block(model: type[BaseModel] = Settings) -> str:
    """What the README holds between START and END."""
    links = [
        f"[`{p.removesuffix('[]')}`]({DOC}#{_anchor(p)})"
        for p, _ in nested_models(model)
        if "." not in p
    ]
    nested = ", ".join(links[:-1]) + f" and {links[-1]}" if len(links) > 1 else "".join(links)
    return (
        f"{START}\n"
        f"<!-- Generated from sevpipe/settings.py; do not edit. Regenerate: {REGENERATE} -->\n\n"
        f"{settings_table(model, DOC)}\n"
        f"The keys of {nested} are in [{DOC}]({DOC}), the whole reference.\n"
        f"{END}"
    )


def replace_block(text: str, block: str) -> str:
    """TEXT with what lies between START and END (markers included) replaced by BLOCK."""
    begin, end = text.find(START), text.find(END)
    if begin < 0 or end < begin:
        raise ValueError(f"no {START} ... {END} block to replace")
    return text[:begin] + block + text[end + len(END) :]


def current_block(text: str) -> str | None:
    begin, end = text.find(START), text.find(END)
    if begin < 0 or end < begin:
        return None
    return text[begin : end + len(END)]


# -- the command


def add_parser(sub: Any) -> None:
    settings = sub.add_parser("settings", help="the settings model")
    actions = settings.add_subparsers(dest="settings_command", required=True, metavar="ACTION")
    ref = actions.add_parser(
        "reference", help="print the configuration reference (Markdown) generated from the model"
    )
    ref.add_argument("--out", type=Path, help=f"write it to this file (the repo's: {DOC})")
    ref.add_argument(
        "--readme",
        type=Path,
        help="replace the README's settings table (between its settings-reference markers)",
    )
    ref.add_argument("--check", action="store_true", help="change nothing; exit 1 if out of date")


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``sevpipe settings reference``: print the reference, or write (``--check``: compare)
    ``--out`` and the README block of ``--readme``."""
    out = out or sys.stdout
    err = err or sys.stderr
    if args.out is None and args.readme is None:
        if args.check:
            err.write("sevpipe: --check needs --out or --readme\n")
            return 2
        out.write(reference())
        return 0
    try:
        wanted = _generated(args.out, args.readme)
    except (OSError, ValueError) as exc:
        err.write(f"sevpipe: {args.readme}: {exc}\n")
        return 2
    return _sync(wanted, check=args.check, out=out, err=err)


def _sync(wanted: list[tuple[Path, str]], *, check: bool, out: TextIO, err: TextIO) -> int:
    """Write each file of WANTED that differs (CHECK: say which, and exit 1)."""
    stale = [(path, text) for path, text in wanted if _read(path) != text]
    if check and stale:
        names = ", ".join(str(path) for path, _ in stale)
        err.write(f"sevpipe: out of date with the settings model: {names}; run {REGENERATE}\n")
        return 1
    try:
        for path, text in [] if check else stale:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            out.write(f"{path}\n")
    except OSError as exc:
        err.write(f"sevpipe: {exc}\n")
        return 1
    return 0


def _generated(out: Path | None, readme: Path | None) -> list[tuple[Path, str]]:
    """(file, what it should hold): OUT the reference, README with its block replaced."""
    wanted = [(out, reference())] if out is not None else []
    if readme is not None:
        wanted.append((readme, replace_block(readme.read_text(encoding="utf-8"), readme_block())))
    return wanted


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
