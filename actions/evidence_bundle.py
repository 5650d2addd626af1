"""An evidence bundle as bytes (:func:`pack`): parts in one tar.gz never larger than a bound,
with ``manifest.json`` as its last member. Pure and CPU-bound: run it in a thread.

The bound is on the compressed bytes. Parts go into one gzip stream in order, each member
compressed on a copy of the compressor's state and flushed, so its exact cost is known before
it is kept; room for the manifest (at its largest), the end of the archive and the gzip
trailer is set aside first. A part that does not fit is left out (``cut``). Logs come last and
share what room is left: each gets an even share of it (what one does not use passes to the
next), and one that does not fit in its share is trimmed to its newest bytes, from the start
of a line, rather than left out (``trimmed_from``).

The manifest names every part with its size and sha256, those cut or trimmed and why, and
those missing (that could not be read) and why.
"""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

MANIFEST: Final = "manifest.json"
FORMAT: Final = "sevpipe-evidence/1"
BLOCK: Final = 512
END_OF_ARCHIVE: Final = b"\0" * (2 * BLOCK)
GRANULE: Final = 256
"""A log is trimmed to within this many bytes (or 1/64 of it) of the most that fits."""
LEVEL: Final = 6


class BundleTooSmall(ValueError):
    """The bound leaves no room even for the manifest."""

    retriable = False


@dataclass(frozen=True)
class Part:
    path: str
    data: bytes
    log: bool = False
    """A log: trimmed to its newest bytes, not left out, when room runs short."""
    note: str | None = None


@dataclass(frozen=True)
class Missing:
    path: str
    reason: str


@dataclass(frozen=True)
class Packed:
    data: bytes
    manifest: dict[str, Any]


def member(path: str, data: bytes, mtime: float) -> bytes:
    """One tar member: its header (PAX for long names), the data, the padding."""
    info = tarfile.TarInfo(path)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
    head = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    return head + data + b"\0" * (-len(data) % BLOCK)


def newest(data: bytes, keep: int) -> bytes:
    """The newest KEEP bytes of DATA, from the start of a line when one starts there."""
    if keep >= len(data):
        return data
    tail = data[len(data) - keep :] if keep > 0 else b""
    start = tail.find(b"\n")
    return tail[start + 1 :] if start >= 0 else tail


class _Gzip:
    """One gzip stream; a member is added only when the whole stream so far still fits."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(LEVEL, zlib.DEFLATED, 31)  # 31: the gzip wrapper
        self.out = bytearray()

    def _try(self, blob: bytes) -> tuple[Any, bytes]:
        z = self._z.copy()
        return z, z.compress(blob) + z.flush(zlib.Z_SYNC_FLUSH)

    def fits(self, blob: bytes, limit: int) -> bool:
        return len(self.out) + len(self._try(blob)[1]) <= limit

    def add(self, blob: bytes, limit: int) -> bool:
        z, chunk = self._try(blob)
        if len(self.out) + len(chunk) > limit:
            return False
        self._z = z
        self.out += chunk
        return True

    def finish(self, blob: bytes) -> bytes:
        self.out += self._z.compress(blob) + self._z.flush(zlib.Z_FINISH)
        return bytes(self.out)


def _bound(n: int) -> int:
    """The most N bytes can grow to in a deflate stream (zlib's deflateBound), with a flush."""
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13 + 5


def _render(manifest: Mapping[str, Any]) -> bytes:
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"


def cut_reason(max_bytes: int) -> str:
    return f"left out: the bundle is bounded by evidence_max_bytes ({max_bytes} bytes)"


def trim_reason(max_bytes: int) -> str:
    return (
        f"trimmed to its newest bytes: the bundle is bounded by evidence_max_bytes "
        f"({max_bytes} bytes)"
    )


def _entry(part: Part, data: bytes) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "path": part.path,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    if part.note:
        entry["note"] = part.note
    return entry


def _manifest(
    about: Mapping[str, Any],
    max_bytes: int,
    parts: list[dict[str, Any]],
    cut: list[dict[str, Any]],
    missing: Sequence[Missing],
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        **about,
        "max_bytes": max_bytes,
        "parts": parts,
        "cut": cut,
        "missing": [{"path": m.path, "reason": m.reason} for m in missing],
    }


def _reserve(
    parts: Sequence[Part], missing: Sequence[Missing], about: Mapping[str, Any], max_bytes: int
) -> int:
    """Compressed bytes set aside for the manifest at its largest, the archive's end and the
    gzip header and trailer."""
    big = 10**19
    worst = [
        {
            **_entry(p, b""),
            "size": big,
            "sha256": "0" * 64,
            "trimmed_from": big,
            "cut": max(trim_reason(max_bytes), cut_reason(max_bytes), key=len),
        }
        for p in parts
    ]
    size = len(_render(_manifest(about, max_bytes, worst, [], missing)))
    tail = len(member(MANIFEST, b"\0" * size, 0)) + len(END_OF_ARCHIVE)
    return _bound(tail) + 10 + 8 + 64  # gzip header, trailer, and a margin


def pack(
    parts: Sequence[Part],
    missing: Sequence[Missing],
    about: Mapping[str, Any],
    max_bytes: int,
    mtime: float,
) -> Packed:
    """PARTS (those not logs first, in order; then the logs) in a tar.gz of at most MAX_BYTES,
    with its manifest (ABOUT's keys, then the parts, cut and missing)."""
    room = max_bytes - _reserve(parts, missing, about, max_bytes)
    if room < 0:
        raise BundleTooSmall(
            f"evidence_max_bytes {max_bytes} leaves no room for the bundle's manifest"
        )
    gz = _Gzip()
    kept: list[dict[str, Any]] = []
    cut: list[dict[str, Any]] = []
    for part in (p for p in parts if not p.log):
        if gz.add(member(part.path, part.data, mtime), room):
            kept.append(_entry(part, part.data))
        else:
            cut.append({"path": part.path, "size": len(part.data), "reason": cut_reason(max_bytes)})
    logs = [p for p in parts if p.log]
    for i, part in enumerate(logs):
        share = len(gz.out) + (room - len(gz.out)) // (len(logs) - i)
        data = _fitting(gz, part, share, mtime)
        if data is None:
            cut.append({"path": part.path, "size": len(part.data), "reason": cut_reason(max_bytes)})
            continue
        entry = _entry(part, data)
        if len(data) < len(part.data):
            entry.update(trimmed_from=len(part.data), cut=trim_reason(max_bytes))
        kept.append(entry)
    manifest = _manifest(about, max_bytes, kept, cut, missing)
    data = gz.finish(member(MANIFEST, _render(manifest), mtime) + END_OF_ARCHIVE)
    if len(data) > max_bytes:  # the reserve is an upper bound: this is a bug, never a bundle
        raise RuntimeError(f"evidence bundle of {len(data)} bytes exceeds {max_bytes}")
    return Packed(data, manifest)


def _fitting(gz: _Gzip, part: Part, limit: int, mtime: float) -> bytes | None:
    """Add PART, or the most of its newest bytes that fits under LIMIT; what was added, or
    None when not even a line of it fits."""
    if gz.add(member(part.path, part.data, mtime), limit):
        return part.data
    lo, hi = 0, len(part.data)  # newest(lo) fits (or nothing does); newest(hi) does not
    while hi - lo > max(GRANULE, hi // 64):
        mid = (lo + hi) // 2
        if gz.fits(member(part.path, newest(part.data, mid), mtime), limit):
            lo = mid
        else:
            hi = mid
    data = newest(part.data, lo)
    if not data or not gz.add(member(part.path, data, mtime), limit):
        return None
    return data
