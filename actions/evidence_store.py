"""Where evidence bundles are kept: a small protocol (``put``, ``list``, ``get``, ``info``) and
two backends, chosen by settings (``sevpipe.evidence_http.evidence_store_of``):

- :class:`DirectoryStore` (``evidence_dir``, default ``<data_dir>/evidence``):
  ``<dir>/<incident>/<name>.tar.gz`` and beside it ``<name>.json`` (size, sha256, created_at,
  action_id). Each file is written atomically: a temp file in the same directory, fsynced,
  renamed over the old one, the directory fsynced. A bundle whose side file is missing or
  describes another write (a crash between the two renames) is described from the file.
- :class:`actions.evidence_s3.S3Store` (``evidence_bucket``, through the ``aws`` settings
  and :mod:`actions.aws_client`): key ``evidence/<incident>/<name>.tar.gz``.

Incident ids and bundle names are checked (:func:`checked`): letters, digits, ``.``, ``_``,
``-``, never ``..``; so no name reaches a path or key outside the incident's own. Putting the
same name again overwrites it: a retried action leaves one bundle.

Errors are :class:`EvidenceStoreError`; ``retriable`` for a full disk, a throttled or
unreachable S3; not for a refused write (permissions, a read-only disk, no such bucket).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import orjson

from schemas.actions import ApiRequest

SUFFIX: Final = ".tar.gz"
MAX_LIST: Final = 1000
"""Bundles one listing returns at most (oldest first)."""
_SAFE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CHUNK: Final = 1 << 20


class EvidenceStoreError(Exception):
    """The store could not do it; ``retriable`` when trying later may help."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class InvalidName(ValueError):
    """An incident id or bundle name that may not name a file or key."""


def is_safe(value: str) -> bool:
    return bool(_SAFE.fullmatch(value)) and ".." not in value


def checked(value: str, what: str) -> str:
    """VALUE when it is a safe incident id or bundle name, else InvalidName."""
    if not is_safe(value):
        raise InvalidName(f"{what} {value[:80]!r} is not a valid name (letters, digits, ._-)")
    return value


@dataclass(frozen=True)
class BundleInfo:
    name: str
    size: int
    sha256: str | None
    created_at: datetime
    action_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "created_at": self.created_at.astimezone(UTC).isoformat(),
            "action_id": self.action_id,
        }


class EvidenceStore(Protocol):
    def write_request(self, incident_id: str, name: str) -> ApiRequest:
        """The write ``put`` makes, as a plan shows it."""
        ...

    async def put(
        self, incident_id: str, name: str, data: bytes, *, action_id: str, created_at: datetime
    ) -> BundleInfo: ...

    async def list(self, incident_id: str) -> list[BundleInfo]:
        """The incident's bundles, oldest first (at most MAX_LIST)."""
        ...

    async def get(self, incident_id: str, name: str) -> bytes | None:
        """The bundle's bytes; None when there is no such bundle."""
        ...

    async def info(self, incident_id: str, name: str) -> BundleInfo | None: ...


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> os.stat_result:
    """DATA as PATH, all or nothing: its stat after the rename."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # an earlier attempt's leftovers
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path.stat()


def _os_error(exc: OSError, what: str) -> EvidenceStoreError:
    # A full disk or an I/O hiccup may pass; a refusal (permissions, read-only) will not.
    refused = isinstance(exc, PermissionError) or exc.errno == errno.EROFS
    return EvidenceStoreError(f"{what}: {exc.strerror or exc}", retriable=not refused)


class DirectoryStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _paths(self, incident_id: str, name: str) -> tuple[Path, Path]:
        folder = self.root / checked(incident_id, "incident id")
        name = checked(name, "bundle name")
        bundle, meta = folder / f"{name}{SUFFIX}", folder / f"{name}.json"
        if not bundle.resolve().is_relative_to(self.root.resolve()):
            raise InvalidName(f"bundle {name!r} resolves outside {self.root}")
        return bundle, meta

    def write_request(self, incident_id: str, name: str) -> ApiRequest:
        return ApiRequest(method="PUT", path=str(self._paths(incident_id, name)[0]))

    async def put(
        self, incident_id: str, name: str, data: bytes, *, action_id: str, created_at: datetime
    ) -> BundleInfo:
        bundle, meta = self._paths(incident_id, name)

        def write() -> BundleInfo:
            digest = hashlib.sha256(data).hexdigest()
            info = BundleInfo(name, len(data), digest, created_at, action_id)
            bundle.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            st = _atomic_write(bundle, data)
            stamp = {**info.to_json(), "file": [st.st_size, st.st_mtime_ns]}
            _atomic_write(meta, orjson.dumps(stamp))
            return info

        try:
            return await asyncio.to_thread(write)
        except OSError as exc:
            raise _os_error(exc, f"cannot write {bundle}") from exc

    def _describe(self, bundle: Path, meta: Path) -> BundleInfo | None:
        try:
            st = bundle.stat()
        except FileNotFoundError:
            return None
        name = bundle.name.removesuffix(SUFFIX)
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            stamp = orjson.loads(meta.read_bytes())
            if stamp["file"] == [st.st_size, st.st_mtime_ns]:
                return BundleInfo(
                    name,
                    int(stamp["size"]),
                    str(stamp["sha256"]),
                    datetime.fromisoformat(stamp["created_at"]),
                    stamp.get("action_id"),
                )
        # No side file, or one of another write: what the file itself says.
        made = datetime.fromtimestamp(st.st_mtime, UTC)
        return BundleInfo(name, st.st_size, _sha256_file(bundle), made, None)

    async def list(self, incident_id: str) -> list[BundleInfo]:
        folder = self.root / checked(incident_id, "incident id")

        def scan() -> list[BundleInfo]:
            try:
                with os.scandir(folder) as entries:
                    names = sorted(e.name for e in entries if e.is_file())
            except FileNotFoundError:
                return []  # no bundle yet
            found = []
            for file in names:
                name = file.removesuffix(SUFFIX)
                if name == file or not is_safe(name):
                    continue
                info = self._describe(folder / file, folder / f"{name}.json")
                if info is not None:
                    found.append(info)
            found.sort(key=lambda i: (i.created_at, i.name))
            return found[:MAX_LIST]

        try:
            return await asyncio.to_thread(scan)
        except OSError as exc:
            raise _os_error(exc, f"cannot list {folder}") from exc

    async def get(self, incident_id: str, name: str) -> bytes | None:
        bundle, _ = self._paths(incident_id, name)
        try:
            return await asyncio.to_thread(bundle.read_bytes)
        except (FileNotFoundError, IsADirectoryError):
            return None
        except OSError as exc:
            raise _os_error(exc, f"cannot read {bundle}") from exc

    async def info(self, incident_id: str, name: str) -> BundleInfo | None:
        bundle, meta = self._paths(incident_id, name)
        try:
            return await asyncio.to_thread(self._describe, bundle, meta)
        except OSError as exc:
            raise _os_error(exc, f"cannot read {bundle}") from exc
