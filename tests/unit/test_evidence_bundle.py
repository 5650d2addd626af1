"""The evidence bundle's packing (actions.evidence_bundle): the bound on the compressed bytes
always holds; the manifest names every part kept with its size and sha256, those cut or
trimmed and why, those missing and why; logs come last and are trimmed to their newest whole
lines before anything of them is left out."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actions.evidence_bundle import (
    MANIFEST,
    BundleTooSmall,
    Missing,
    Part,
    cut_reason,
    newest,
    pack,
    trim_reason,
)

ABOUT = {"incident_id": "inc-1", "action_id": "01ACTION", "created_at": "2026-03-01T12:00:00Z"}
T = 1_772_366_400.0


def unpack(data: bytes) -> tuple[list[str], dict[str, bytes]]:
    """The members' names in order, and each one's bytes."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
        files = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            files[m.name] = f.read()
    return names, files


def consistent(data: bytes, max_bytes: int) -> dict[str, Any]:
    """The bundle's manifest, after checking it against the bundle itself."""
    assert len(data) <= max_bytes
    names, files = unpack(data)
    assert names[-1] == MANIFEST
    manifest: dict[str, Any] = orjson.loads(files.pop(MANIFEST))
    assert [p["path"] for p in manifest["parts"]] == names[:-1]
    for part in manifest["parts"]:
        body = files[part["path"]]
        assert part["size"] == len(body)
        assert part["sha256"] == hashlib.sha256(body).hexdigest()
    assert not {c["path"] for c in manifest["cut"]} & set(files)
    return manifest


def noise(n: int, seed: int = 1) -> bytes:
    """Lines of random hex: about half as big compressed, never much less."""
    rng = random.Random(seed)
    out = bytearray()
    i = 0
    while len(out) < n:
        out += f"{i:06d} {rng.getrandbits(256):064x}\n".encode()
        i += 1
    return bytes(out[:n])


def test_everything_fits_and_the_manifest_says_what_is_where() -> None:
    parts = [
        Part("objects.yaml", b"apiVersion: v1\nkind: List\nitems: []\n"),
        Part("logs/web-1/web.log", b"one\ntwo\n", log=True, note="a note"),
        Part("top.json", b"{}"),
    ]
    missing = [Missing("prometheus/rate.json", "query rate: 503 unavailable")]
    packed = pack(parts, missing, ABOUT, 1 << 20, T)
    manifest = consistent(packed.data, 1 << 20)
    assert manifest == packed.manifest
    assert {k: manifest[k] for k in ABOUT} == ABOUT
    assert manifest["format"] == "sevpipe-evidence/1"
    assert manifest["max_bytes"] == 1 << 20
    # Logs go last, whatever order they were given in.
    assert [p["path"] for p in manifest["parts"]] == [
        "objects.yaml",
        "top.json",
        "logs/web-1/web.log",
    ]
    assert manifest["parts"][2]["note"] == "a note"
    assert manifest["cut"] == []
    assert manifest["missing"] == [
        {"path": "prometheus/rate.json", "reason": "query rate: 503 unavailable"}
    ]
    _, files = unpack(packed.data)
    assert files["logs/web-1/web.log"] == b"one\ntwo\n"
    with tarfile.open(fileobj=io.BytesIO(packed.data), mode="r:gz") as tar:
        assert tar.getmember("top.json").mtime == int(T)


def test_a_tight_bound_trims_logs_to_their_newest_lines_before_cutting_anything_else() -> None:
    log = noise(200_000)
    parts = [Part("objects.yaml", noise(3000, 2)), Part("logs/p/c.log", log, log=True)]
    max_bytes = 40_000
    packed = pack(parts, [], ABOUT, max_bytes, T)
    manifest = consistent(packed.data, max_bytes)
    objects, trimmed = manifest["parts"]
    assert objects["path"] == "objects.yaml"
    assert "trimmed_from" not in objects
    assert trimmed["trimmed_from"] == len(log)
    assert trimmed["cut"] == trim_reason(max_bytes)
    assert "evidence_max_bytes (40000 bytes)" in trimmed["cut"]
    kept = unpack(packed.data)[1]["logs/p/c.log"]
    assert log.endswith(kept)  # the newest bytes ...
    assert log[len(log) - len(kept) - 1 : len(log) - len(kept)] == b"\n"  # ... from a line start
    assert len(kept) > 20_000  # and most of what the bound leaves room for


def test_logs_share_the_room_left() -> None:
    logs = [Part(f"logs/p{i}/c.log", noise(100_000, i), log=True) for i in range(3)]
    packed = pack(logs, [], ABOUT, 60_000, T)
    manifest = consistent(packed.data, 60_000)
    sizes = [p["size"] for p in manifest["parts"]]
    assert len(sizes) == 3
    assert all(p["trimmed_from"] == 100_000 for p in manifest["parts"])
    assert max(sizes) < 2 * min(sizes)  # none starved by the first


def test_parts_that_do_not_fit_are_cut_and_the_rest_still_go_in() -> None:
    big, small = noise(50_000, 3), b"small and useful"
    parts = [Part("objects.yaml", big), Part("top.json", small)]
    packed = pack(parts, [], ABOUT, 6000, T)
    manifest = consistent(packed.data, 6000)
    assert [p["path"] for p in manifest["parts"]] == ["top.json"]
    assert manifest["cut"] == [
        {"path": "objects.yaml", "size": len(big), "reason": cut_reason(6000)}
    ]


def test_a_log_of_one_long_line_keeps_its_newest_bytes_or_is_cut() -> None:
    line = noise(30_000).replace(b"\n", b" ")
    packed = pack([Part("logs/p/c.log", line, log=True)], [], ABOUT, 12_000, T)
    manifest = consistent(packed.data, 12_000)
    (entry,) = manifest["parts"]
    kept = unpack(packed.data)[1]["logs/p/c.log"]
    assert line.endswith(kept)
    assert entry["trimmed_from"] == len(line)


def test_a_bound_too_small_for_the_manifest_is_refused() -> None:
    with pytest.raises(BundleTooSmall, match="no room for the bundle's manifest"):
        pack([Part("objects.yaml", b"x")], [], ABOUT, 300, T)


def test_newest() -> None:
    assert newest(b"a\nbb\nccc\n", 100) == b"a\nbb\nccc\n"
    assert newest(b"a\nbb\nccc\n", 6) == b"ccc\n"  # "b\nccc\n": from the next line start
    assert newest(b"a\nbb\nccc\n", 5) == b"ccc\n"
    assert newest(b"abcdef", 3) == b"def"  # no line start in it: the bytes as they are
    assert newest(b"abc\n", 0) == b""


@given(
    sizes=st.lists(st.integers(0, 60_000), min_size=1, max_size=6),
    logs=st.lists(st.booleans(), min_size=6, max_size=6),
    max_bytes=st.integers(3_000, 150_000),
    seed=st.integers(0, 1000),
)
def test_the_bound_always_holds(
    sizes: list[int], logs: list[bool], max_bytes: int, seed: int
) -> None:
    parts = [
        Part(f"logs/p{i}/c.log" if log else f"prometheus/q{i}.json", noise(n, seed + i), log=log)
        for i, (n, log) in enumerate(zip(sizes, logs, strict=False))
    ]
    try:
        packed = pack(parts, [Missing("top.json", "no metrics")], ABOUT, max_bytes, T)
    except BundleTooSmall:
        assert max_bytes < 2000 + 500 * len(parts)  # the manifest's room, at its largest
        return
    manifest = consistent(packed.data, max_bytes)
    listed = {p["path"] for p in manifest["parts"]} | {c["path"] for c in manifest["cut"]}
    assert listed == {p.path for p in parts}  # each part kept or cut, and said so
    _, files = unpack(packed.data)
    for part in parts:
        if part.path in files:
            assert part.data.endswith(files[part.path])
            if not part.log:
                assert files[part.path] == part.data  # only logs are ever trimmed
