"""What the actions on the application's own data stores (PostgreSQL, Redis) share: the
inventory entry a target names, and the secret it connects with.

The secret (a DSN, a redis:// URL with its credential) is a file the inventory names, read
when the action runs, never kept, logged, or put into an error message or an outcome.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final, TypeVar

from pydantic import BaseModel

from actions.inventory import Inventory
from schemas.actions import Target

E = TypeVar("E", bound=BaseModel)

MAX_SECRET_BYTES: Final = 16 * 1024


class AppActionError(Exception):
    """An action's failed outcome: reported, not retried."""

    retriable = False


def entry_of(inventory: Inventory, target: Target, kind: str, model: type[E]) -> E:
    """The inventory's entry for TARGET, which must be a ``kind`` it holds."""
    if target.kind != kind:
        raise AppActionError(f"target {target.key()} is not a {kind}")
    found = inventory.entry(kind, target.name) if target.name else None
    if not isinstance(found, model):
        raise AppActionError(f"{kind} {target.name!r} is not in the inventory")
    return found


def _read(path: Path) -> str:
    with path.open("rb") as file:
        data = file.read(MAX_SECRET_BYTES + 1)
    if len(data) > MAX_SECRET_BYTES:
        raise AppActionError(f"secret file {path} is larger than {MAX_SECRET_BYTES} bytes")
    return data.decode().strip()


async def read_secret(path: Path, what: str) -> str:
    """The one-line secret in PATH (read off the event loop); an error names the file only."""
    try:
        value = await asyncio.to_thread(_read, path)
    except UnicodeDecodeError:
        raise AppActionError(f"{what} file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise AppActionError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if not value:
        raise AppActionError(f"the {what} file {path} is empty")
    return value


def clip(text: str | None, limit: int) -> str | None:
    """TEXT cut to LIMIT characters, marked with an ellipsis when cut."""
    if text is None or len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + "\u2026"
