"""The evidence directory store (atomic writes, one bundle per name, names that cannot reach
outside it), the action's params, names and wiring, and the pure helpers of its parts."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from actions.evidence import EvidenceParams, bundle_name
from actions.evidence_logs import _Tail, redacted
from actions.evidence_parts import KINDS, _configmap, _item, query_files
from actions.evidence_s3 import S3Store
from actions.evidence_store import DirectoryStore, InvalidName, checked
from actions.inventory import Inventory
from sevpipe.actions_wiring import catalogue_of
from sevpipe.evidence_http import evidence_store_of
from sevpipe.settings import Settings

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INC = "inc-01jnq0000000000000000000ab"


async def test_put_list_get_round_trip_and_a_retry_overwrites(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "evidence")
    assert await store.list(INC) == []  # no folder yet: nothing, not an error
    assert await store.get(INC, "evidence-a") is None
    assert await store.info(INC, "evidence-a") is None

    info = await store.put(INC, "evidence-a", b"first", action_id="A", created_at=AT)
    assert (info.name, info.size, info.action_id) == ("evidence-a", 5, "A")
    assert info.sha256 == hashlib.sha256(b"first").hexdigest()
    assert (tmp_path / "evidence" / INC / "evidence-a.tar.gz").read_bytes() == b"first"
    assert await store.get(INC, "evidence-a") == b"first"
    assert await store.list(INC) == [info]
    assert await store.info(INC, "evidence-a") == info

    later = AT + timedelta(minutes=1)
    again = await store.put(INC, "evidence-a", b"second", action_id="A", created_at=later)
    assert await store.list(INC) == [again]  # the same name: one bundle, the newer bytes
    assert await store.get(INC, "evidence-a") == b"second"
    other = await store.put(INC, "evidence-b", b"x", action_id="B", created_at=AT)
    assert [b.name for b in await store.list(INC)] == ["evidence-b", "evidence-a"]  # by time
    assert other.to_json()["created_at"] == "2026-03-01T12:00:00+00:00"
    # Nothing half-written is left behind, and nothing else is in the folder.
    assert sorted(p.name for p in (tmp_path / "evidence" / INC).iterdir()) == [
        "evidence-a.json",
        "evidence-a.tar.gz",
        "evidence-b.json",
        "evidence-b.tar.gz",
    ]


async def test_a_bundle_without_its_side_file_is_described_from_the_file(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    await store.put(INC, "evidence-a", b"first", action_id="A", created_at=AT)
    # A crash between the bundle's rename and its side file's: the side file is the old one.
    (tmp_path / INC / "evidence-a.tar.gz").write_bytes(b"rewritten")
    (info,) = await store.list(INC)
    assert (info.size, info.sha256) == (9, hashlib.sha256(b"rewritten").hexdigest())
    (tmp_path / INC / "evidence-a.json").unlink()
    assert (await store.info(INC, "evidence-a")).size == 9  # type: ignore[union-attr]


async def test_leftovers_of_an_interrupted_write_are_ignored_then_removed(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    folder = tmp_path / INC
    folder.mkdir()
    stale = folder / ".evidence-a.tar.gz.0123456789ab.tmp"
    stale.write_bytes(b"half")
    assert await store.list(INC) == []
    await store.put(INC, "evidence-a", b"whole", action_id="A", created_at=AT)
    assert not stale.exists()


@pytest.mark.parametrize(
    "name", ["../x", "..", "a/b", "/etc/passwd", ".hidden", "", "a..b", "a b", "x" * 200, "é"]
)
async def test_names_that_could_leave_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    root = tmp_path / "evidence"
    (tmp_path / "x.tar.gz").write_bytes(b"outside")
    store = DirectoryStore(root)
    with pytest.raises(InvalidName):
        checked(name, "bundle name")
    with pytest.raises(InvalidName):
        await store.get(INC, name)
    with pytest.raises(InvalidName):
        await store.get(name, "evidence-a")
    with pytest.raises(InvalidName):
        await store.put(INC, name, b"x", action_id="A", created_at=AT)
    with pytest.raises(InvalidName):
        await store.list(name)
    assert not root.exists()


async def test_files_are_not_readable_by_others(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    await store.put(INC, "evidence-a", b"x", action_id="A", created_at=AT)
    assert os.stat(tmp_path / INC / "evidence-a.tar.gz").st_mode & 0o007 == 0


def test_params() -> None:
    default = EvidenceParams()
    assert (default.pods, default.prometheus, default.queries) == (None, None, None)
    assert default.logs_since == timedelta(hours=1)
    assert default.max_log_bytes == 1024 * 1024
    assert EvidenceParams.model_validate({"logs_since": "15m"}).logs_since == timedelta(minutes=15)
    for bad in (
        {"queries": ["rate"]},  # queries of which Prometheus?
        {"max_log_bytes": 100},
        {"max_log_bytes": 1 << 30},
        {"logs_since": "0s"},
        {"logs_since": "30d"},
        {"query": "up"},  # no PromQL from params
    ):
        with pytest.raises(ValidationError):
            EvidenceParams.model_validate(bad)


def test_bundle_names_derive_from_the_action_id() -> None:
    assert bundle_name("01JNQACTION0000000000000A1") == "evidence-01jnqaction0000000000000a1"
    assert checked(bundle_name("01JNQACTION0000000000000A1"), "bundle name")


def test_objects_never_include_a_secret_or_a_configmap_value() -> None:
    assert all("secret" not in path.lower() for _, _, path in KINDS)
    item = {
        "metadata": {
            "name": "cfg",
            "namespace": "prod",
            "labels": {"app": "web"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{value}"},
            "managedFields": [{"manager": "kubectl"}],
        },
        "data": {"DB_POOL_MAX": "the value", "A": "b"},
        "binaryData": {"cert": "Zm9v"},
    }
    assert _configmap(item) == {
        "metadata": {"name": "cfg", "namespace": "prod", "labels": {"app": "web"}},
        "keys": ["A", "DB_POOL_MAX"],
        "binaryKeys": ["cert"],
    }
    shown = _item("v1", "Pod", {"metadata": {"name": "p", "managedFields": [{}]}, "spec": {}})
    assert shown == {"metadata": {"name": "p"}, "spec": {}, "apiVersion": "v1", "kind": "Pod"}


def test_query_files_are_safe_and_distinct() -> None:
    assert query_files(["rate", "../../etc/passwd", "a b", "a_b", "..", "rate "]) == {
        "rate": "prometheus/rate.json",
        "../../etc/passwd": "prometheus/etc_passwd.json",
        "a b": "prometheus/a_b.json",
        "a_b": "prometheus/a_b-2.json",
        "..": "prometheus/query.json",
        "rate ": "prometheus/rate-2.json",
    }


def test_a_log_is_kept_from_its_first_whole_line_and_redacted() -> None:
    tail = _Tail(keep=64)
    for chunk in (b"x" * 100, b"\nfirst whole line\n", b"password=hunter2 ok\nlast\n"):
        tail.feed(chunk)
    assert tail.total == 100 + 18 + 25
    out = redacted(tail, 64)
    assert out == b"first whole line\npassword=[redacted] ok\nlast\n"
    assert len(out) <= 64
    whole = _Tail(keep=1000)
    whole.feed(b"partial? no: all of it\n")
    assert redacted(whole, 1000) == b"partial? no: all of it\n"


def test_settings_choose_the_store_and_kubeconfig_brings_the_action(tmp_path: Path) -> None:
    by_dir = evidence_store_of(Settings(data_dir=tmp_path, evidence_dir=None, evidence_bucket=None))
    assert isinstance(by_dir, DirectoryStore)
    assert by_dir.root == tmp_path / "evidence"
    assert evidence_store_of(Settings(data_dir=tmp_path, evidence_dir=tmp_path / "e")).root == (  # type: ignore[attr-defined]
        tmp_path / "e"
    )
    s3 = evidence_store_of(Settings(data_dir=tmp_path, evidence_bucket="b", aws={"region": "x"}))
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.clients.config.region) == ("b", "x")
    assert s3.key(INC, "evidence-a") == f"evidence/{INC}/evidence-a.tar.gz"

    bare = Settings(data_dir=tmp_path, kubeconfig=None)  # whatever SEVPIPE_KUBECONFIG says
    assert "evidence.collect" not in catalogue_of(bare, Inventory()).names()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    settings = Settings(data_dir=tmp_path, kubeconfig=kubeconfig)
    spec = catalogue_of(settings, Inventory()).get("evidence.collect")
    assert (spec.risk, spec.target_kind) == ("read_only", "Namespace")
