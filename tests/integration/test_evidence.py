"""evidence.collect against the real kube-apiserver and controller-manager of
``scripts/test-services`` (no kubelet, no metrics-server; a fake kubelet where logs must be
read), a real Prometheus (``prometheus_support``) and the moto server; the bundle kept in the
directory store and in S3; the evidence API and ``sevpipe evidence`` over HTTP on a real
embedded store; and the actions stage collecting a bundle for an incident it opened on.

Every bundle read back is checked against its own manifest (each part's size and sha256, the
manifest last, nothing cut still present) and against the bound.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import test_kubernetes_actions as actions_tests
import test_kubernetes_observe as observe_tests
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aws_support import MotoServer
from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry
from prometheus_support import (
    JOB,
    SCRAPES,
    SHARD_LOAD,
    SHARDS,
    PrometheusServer,
    free_port,
    prometheus,  # noqa: F401 - the session fixture
)
from services import Services, unique_name
from test_actions_book import action
from test_actions_stage import open_actions
from test_incidents_api import TOKEN, bearer, operator
from test_kubernetes_actions import Recorder
from test_kubernetes_api import deployment, eventually, meta, service_account_client
from test_kubernetes_observe import FakeKubelet, _bare_pod, _force_delete
from yarl import URL

from actions.catalogue import ACTION_ID, ActionSpec
from actions.evidence import EvidenceParams, book_incidents, bundle_name, evidence_catalogue
from actions.evidence_bundle import MANIFEST, cut_reason
from actions.evidence_s3 import S3Store
from actions.evidence_store import (
    DirectoryStore,
    EvidenceStore,
    EvidenceStoreError,
    InvalidName,
)
from actions.guard import Guard, Limits
from actions.inventory import Inventory
from actions.kubernetes_observe import NOT_SERVED
from actions.playbooks import Playbooks
from actions.stage import ActionsStage
from eventlog import EmbeddedLog
from ingest import Credentials
from schemas import new_event_id
from schemas.actions import ApiRequest, Target
from schemas.incidents import Incident
from sevpipe.actions_wiring import catalogue_of
from sevpipe.cli import build_parser
from sevpipe.evidence_cli import run as evidence_cli
from sevpipe.evidence_http import evidence_routes, evidence_store_of
from sevpipe.http import build_app
from sevpipe.serve import authorizer
from sevpipe.settings import Settings
from store import EmbeddedStore
from store.base import IncidentWrite

# Fixtures of the Kubernetes action tests, by the names the tests ask for: admin (the cluster's
# admin client), ns (a fresh namespace), recorder (what the actions' clients sent), kubelet (a
# fake kubelet and a Node that points the apiserver at it).
admin = actions_tests.admin
ns = actions_tests.ns
recorder = actions_tests.recorder
kubelet = observe_tests.kubelet

NAME = "web"
VIEWER = "v-token"
CM_VALUE = "cm-value-that-must-never-leave-the-cluster"
SECRET_NAME = "db-credentials-never-listed"
SECRET_VALUE = "s3cr3t-p4ssw0rd-never-in-a-bundle"
MIB = 1 << 20
NO_NODE = (
    "no log: the pod is Pending on no node, so no container has started "
    "(the apiserver answered 204 No Content)"
)


# -- helpers -------------------------------------------------------------------------------------


def unpack(data: bytes) -> tuple[list[str], dict[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names, files = tar.getnames(), {}
        for member in tar.getmembers():
            extracted = tar.extractfile(member)
            assert extracted is not None
            files[member.name] = extracted.read()
    return names, files


def opened(data: bytes, max_bytes: int = MIB) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The bundle's manifest and parts, after checking one against the other."""
    assert len(data) <= max_bytes
    names, files = unpack(data)
    assert names[-1] == MANIFEST
    manifest: dict[str, Any] = json.loads(files.pop(MANIFEST))
    assert [p["path"] for p in manifest["parts"]] == names[:-1]
    for part in manifest["parts"]:
        assert part["size"] == len(files[part["path"]])
        assert part["sha256"] == hashlib.sha256(files[part["path"]]).hexdigest()
    assert not {c["path"] for c in manifest["cut"]} & set(files)
    return manifest, files


def missing(manifest: dict[str, Any]) -> dict[str, str]:
    return {m["path"]: m["reason"] for m in manifest["missing"]}


@contextmanager
def as_action(action_id: str) -> Iterator[None]:
    """As the stage runs an action: its id in ACTION_ID."""
    token = ACTION_ID.set(action_id)
    try:
        yield
    finally:
        ACTION_ID.reset(token)


@dataclass
class Bench:
    """The actions book the action finds its incident in, and the evidence store."""

    book: EmbeddedStore
    store: EvidenceStore
    incident: str

    async def new_action(self, namespace: str) -> str:
        """A fresh evidence action of the incident, recorded as the stage records it."""
        action_id = new_event_id()
        target = Target(kind="Namespace", namespace=namespace)
        await self.book.record_action(
            action(
                self.incident,
                step=f"evidence-{action_id}",
                state="started",
                action_id=action_id,
                action="evidence.collect",
                target=target,
                risk="read_only",
                mode="auto",
                params={},
                expires_at=None,
            )
        )
        return action_id

    def spec(
        self, factory: Any, inventory: dict[str, Any], max_bytes: int = MIB
    ) -> ActionSpec[Any]:
        cat = evidence_catalogue(
            factory,
            Inventory.model_validate(inventory),
            self.store,
            max_bytes=max_bytes,
            incident_of=book_incidents(self.book),
        )
        return cat.get("evidence.collect")

    async def collect(
        self, spec: ActionSpec[Any], namespace: str, action_id: str | None = None, **params: Any
    ) -> tuple[dict[str, Any], bytes]:
        """Run the action (as a fresh action unless one is given): its outcome and bundle."""
        action_id = action_id or await self.new_action(namespace)
        target = Target(kind="Namespace", namespace=namespace)
        with as_action(action_id):
            outcome = dict(await spec.execute(target, EvidenceParams(**params), 1))
        assert outcome["bundle"] == bundle_name(action_id)
        data = await self.store.get(self.incident, outcome["bundle"])
        assert data is not None
        assert (outcome["size"], outcome["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        return outcome, data


@pytest.fixture
async def book(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    async with EmbeddedStore(tmp_path / "store.db") as store:
        yield store


@pytest.fixture
def bench(book: EmbeddedStore, tmp_path: Path) -> Bench:
    return Bench(book, DirectoryStore(tmp_path / "evidence"), f"inc-{new_event_id().lower()}")


async def pods_of(core: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    return list((await core.list_namespaced_pod(namespace, label_selector=f"app={NAME}")).items)


async def events_of(core: client.CoreV1Api, namespace: str) -> list[Any]:
    return list((await core.list_namespaced_event(namespace)).items)


# -- the namespace's objects, never a Secret or a ConfigMap's values ------------------------------


async def test_a_bundle_of_a_namespace_never_holds_a_secret_or_a_configmap_value(
    admin: client.ApiClient, ns: str, recorder: Recorder, bench: Bench, tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
    await apps.create_namespaced_deployment(ns, deployment(NAME, 1))  # a Pod, Pending on no node
    applied = json.dumps({"data": {"DB_POOL_MAX": CM_VALUE}})  # what kubectl apply leaves
    cm_meta = meta("web-config", app=NAME)
    cm_meta.annotations = {"kubectl.kubernetes.io/last-applied-configuration": applied}
    await core.create_namespaced_config_map(
        ns, client.V1ConfigMap(metadata=cm_meta, data={"DB_POOL_MAX": CM_VALUE, "MODE": "x"})
    )
    await core.create_namespaced_secret(
        ns, client.V1Secret(metadata=meta(SECRET_NAME), string_data={"password": SECRET_VALUE})
    )
    (pod,) = await eventually(lambda: pods_of(core, ns), what="the Deployment's Pod")
    await eventually(lambda: events_of(core, ns), what="the controllers' Events")
    spec = bench.spec(recorder.factory, {"namespaces": {ns: {"pods": {"web": {"app": NAME}}}}})
    action_id = await bench.new_action(ns)
    target, params = Target(kind="Namespace", namespace=ns), EvidenceParams(pods="web")

    with as_action(action_id):
        planned = await spec.plan(target, params)
    name = bundle_name(action_id)
    written = tmp_path / "evidence" / bench.incident / f"{name}.tar.gz"
    assert planned[-1] == ApiRequest(method="PUT", path=str(written))
    log_read = (
        f"/api/v1/namespaces/{ns}/pods/{pod.metadata.name}/log"
        "?container=web&limitBytes=4194304&sinceSeconds=3600&timestamps=true"
    )
    assert ApiRequest(method="GET", path=log_read) in planned
    recorder.sent.clear()
    outcome, data = await bench.collect(spec, ns, action_id, pods="web")

    # Only reads, every one planned (but the Nodes' metrics, not asked once the Pods' are a
    # 404), and none of them names a Secret.
    sent = recorder.sent
    assert {r.method for r in sent} == {"GET"}
    reads = [r for r in planned[:-1] if not r.path.endswith("/nodes")]
    assert sorted(reads, key=lambda r: r.path) == sorted(sent, key=lambda r: r.path)
    assert not [r for r in sent if "secret" in r.path.lower()]

    raw = gzip.decompress(data)
    for never in (CM_VALUE, SECRET_NAME, SECRET_VALUE, base64.b64encode(SECRET_VALUE.encode())):
        assert (never if isinstance(never, bytes) else never.encode()) not in raw
    manifest, files = opened(data)
    assert set(files) == {"objects.yaml"}
    assert {k: manifest[k] for k in ("incident_id", "action_id", "namespace")} == {
        "incident_id": bench.incident,
        "action_id": action_id,
        "namespace": ns,
    }
    assert datetime.fromisoformat(manifest["created_at"]) > datetime.now(UTC) - timedelta(minutes=1)
    assert manifest["cut"] == []
    assert missing(manifest) == {
        "top.json": NOT_SERVED,
        f"logs/{pod.metadata.name}/web.log": NO_NODE,
    }
    listed = yaml.safe_load(files["objects.yaml"])
    assert (listed["apiVersion"], listed["kind"]) == ("v1", "List")
    items = {(i["kind"], i["metadata"]["name"]): i for i in listed["items"]}
    assert items[("Deployment", NAME)]["spec"]["replicas"] == 1
    assert items[("Deployment", NAME)]["apiVersion"] == "apps/v1"
    assert items[("Pod", pod.metadata.name)]["status"]["phase"] == "Pending"
    assert {k for k, _ in items} >= {"Deployment", "ReplicaSet", "Pod", "ConfigMap", "Event"}
    assert "Secret" not in {k for k, _ in items}
    assert items[("ConfigMap", "web-config")] == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "web-config",
            "namespace": ns,
            "uid": items[("ConfigMap", "web-config")]["metadata"]["uid"],
            "resourceVersion": items[("ConfigMap", "web-config")]["metadata"]["resourceVersion"],
            "creationTimestamp": items[("ConfigMap", "web-config")]["metadata"][
                "creationTimestamp"
            ],
            "labels": {"app": NAME},
        },
        "keys": ["DB_POOL_MAX", "MODE"],
        "binaryKeys": [],
    }
    assert not [i for i in listed["items"] if "managedFields" in i["metadata"]]
    assert outcome["missing_total"] == 2
    assert outcome["parts"] == ["objects.yaml"]

    # Listed on the incident; check finds it; a retry of the same action overwrites it.
    (info,) = await bench.store.list(bench.incident)
    assert (info.name, info.size, info.action_id) == (name, len(data), action_id)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.created_at == datetime.fromisoformat(manifest["created_at"])
    with as_action(action_id):
        found = await spec.check(target, params)
    assert found is not None
    assert (found["bundle"], found["sha256"]) == (name, info.sha256)
    with as_action(await bench.new_action(ns)):
        assert await spec.check(target, params) is None  # another action: not its bundle
    again, _ = await bench.collect(spec, ns, action_id, pods="web")
    assert again["bundle"] == name
    assert [b.name for b in await bench.store.list(bench.incident)] == [name]


async def test_outside_the_stage_or_on_another_target_it_refuses(
    recorder: Recorder, bench: Bench
) -> None:
    spec = bench.spec(recorder.factory, {})
    params = EvidenceParams()
    with pytest.raises(Exception, match="runs in the actions stage") as caught:
        await spec.execute(Target(kind="Namespace", namespace="x"), params, 1)
    assert getattr(caught.value, "retriable", None) is False
    with as_action(new_event_id()), pytest.raises(Exception, match="holds no action"):
        await spec.execute(Target(kind="Namespace", namespace="x"), params, 1)
    with as_action(new_event_id()), pytest.raises(Exception, match="takes a Namespace target"):
        await spec.plan(Target(kind="Deployment", namespace="x", name="web"), params)
    assert recorder.sent == []
    assert await bench.store.list(bench.incident) == []


async def test_what_the_inventory_lacks_is_missing_and_the_rest_collected(
    admin: client.ApiClient, ns: str, recorder: Recorder, bench: Bench
) -> None:
    await client.AppsV1Api(admin).create_namespaced_deployment(ns, deployment(NAME, 0))
    spec = bench.spec(recorder.factory, {"namespaces": {ns: {}}})
    _, data = await bench.collect(spec, ns, pods="origin-backend", prometheus="main")
    manifest, files = opened(data)
    assert "objects.yaml" in files
    assert missing(manifest) == {
        "logs/": f"pod group {ns}/origin-backend is not in the inventory",
        "prometheus/": "prometheus main is not in the inventory",
        "top.json": NOT_SERVED,
    }


# -- RBAC: what may not be read is missing, and why ------------------------------------------------


async def test_a_remediator_that_may_read_little_still_gets_a_bundle(
    services: Services, admin: client.ApiClient, ns: str, bench: Bench
) -> None:
    apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
    rbac = client.RbacAuthorizationV1Api(admin)
    await apps.create_namespaced_deployment(ns, deployment(NAME, 1))
    await eventually(lambda: pods_of(core, ns), what="a Pod")
    account = "sevpipe-evidence"
    await core.create_namespaced_service_account(
        ns, client.V1ServiceAccount(metadata=meta(account))
    )
    rules = [
        client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"]),
        client.V1PolicyRule(api_groups=["apps"], resources=["deployments"], verbs=["list"]),
    ]
    await rbac.create_namespaced_role(ns, client.V1Role(metadata=meta("reader"), rules=rules))
    ref = client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="reader")
    subject = client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=ns)
    await rbac.create_namespaced_role_binding(
        ns, client.V1RoleBinding(metadata=meta("reader"), role_ref=ref, subjects=[subject])
    )

    async def factory() -> client.ApiClient:
        return await service_account_client(services.kubeconfig, core, ns, account)

    spec = bench.spec(factory, {"namespaces": {ns: {"pods": {"web": {"app": NAME}}}}})

    async def readable() -> tuple[dict[str, Any], dict[str, bytes]] | None:
        _, data = await bench.collect(spec, ns, pods="web")
        manifest, files = opened(data)
        return (manifest, files) if "objects.yaml" in files else None

    manifest, files = await eventually(readable, what="the Role binding in effect", within=10)
    kinds = {i["kind"] for i in yaml.safe_load(files["objects.yaml"])["items"]}
    assert kinds == {"Pod", "Deployment"}
    why = [m["reason"] for m in manifest["missing"] if m["path"] == "objects.yaml"]
    assert len(why) == 11  # every other kind
    events = next(w for w in why if w.startswith("Event: "))
    assert events.startswith("Event: 403 Forbidden: events is forbidden: ")
    assert f"system:serviceaccount:{ns}:{account}" in events
    reasons = missing(manifest)
    assert reasons["top.json"].startswith("403 Forbidden: pods.metrics.k8s.io is forbidden: ")
    (log,) = [p for p in reasons if p.startswith("logs/")]
    assert reasons[log].startswith("403 Forbidden: ")
    assert '"pods/log"' in reasons[log]


# -- logs, read through the apiserver: redacted, the newest, bounded ------------------------------


def _noisy(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    lines = [
        f"2026-03-01T12:{i // 60 % 60:02d}:{i % 60:02d}Z req={rng.getrandbits(128):032x} "
        f"token=tok-{i:05d} line {i:05d}\n"
        for i in range(n)
    ]
    return "".join(lines).encode()


async def test_logs_come_redacted_and_newest_and_the_bound_trims_them(
    admin: client.ApiClient,
    ns: str,
    recorder: Recorder,
    kubelet: tuple[FakeKubelet, str],
    bench: Bench,
) -> None:
    fake, node = kubelet
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJl"
    chatty = _noisy(6000, 1)  # ~480 KB: more than the read's cap of 4 x 64 KiB
    fake.answers = {
        "app": (
            200,
            b"GET /health 200\n"
            b"login ok, Authorization: Bearer abc.def.ghi\n"
            b"db password=hunter2 retrying\n" + f"session {jwt} refreshed\n".encode(),
        ),
        "chatty": (200, chatty),
        "waiting": (
            400,
            b'container "waiting" in pod "api-0" is waiting to start: ContainerCreating',
        ),
    }
    core = client.CoreV1Api(admin)
    await core.create_namespaced_pod(ns, _bare_pod("api-0", node, "app", "chatty", "waiting"))
    try:
        group = {"namespaces": {ns: {"pods": {"backend": {"app": observe_tests.BACKEND}}}}}
        spec = bench.spec(recorder.factory, group)
        _, data = await bench.collect(spec, ns, pods="backend", max_log_bytes=65536)
        manifest, files = opened(data)
        app = files["logs/api-0/app.log"].decode()
        assert app.startswith("GET /health 200\nlogin ok, Authorization: Bearer [redacted]\n")
        assert "db password=[redacted] retrying\nsession [redacted] refreshed\n" in app
        for secret in ("hunter2", "abc.def.ghi", jwt):
            assert secret not in gzip.decompress(data).decode(errors="replace")

        kept = files["logs/api-0/chatty.log"]
        assert 60_000 < len(kept) <= 65536
        last = chatty.decode().splitlines()[-1].replace("token=tok-05999", "token=[redacted]")
        assert kept.decode().endswith(last + "\n")  # the newest ...
        assert kept.startswith(b"2026-03-01T12:")  # ... from a whole line
        assert b"tok-0" not in kept
        (entry,) = [p for p in manifest["parts"] if p["path"] == "logs/api-0/chatty.log"]
        assert entry["note"].startswith("more than 262144 bytes in the window: its last ")
        chatty_asked = [a for a in fake.asked if a.startswith(f"/containerLogs/{ns}/api-0/chatty")]
        assert len(chatty_asked) == 2
        assert "limitBytes=262144" in chatty_asked[0]
        assert "sinceSeconds=3600" in chatty_asked[0]
        assert "timestamps=true" in chatty_asked[0]
        assert "tailLines=" in chatty_asked[1]  # read again by its last lines

        assert missing(manifest)["logs/api-0/waiting.log"] == (
            '400 Bad Request: container "waiting" in pod "api-0" is waiting to start: '
            "ContainerCreating"
        )

        # A tight bound: the logs are trimmed to their newest lines, the manifest says so.
        full = len(data)
        tight = bench.spec(recorder.factory, group, max_bytes=full // 2)
        _, small = await bench.collect(tight, ns, pods="backend", max_log_bytes=65536)
        manifest, trimmed = opened(small, full // 2)
        assert "objects.yaml" in trimmed  # kept: the logs give way first
        cut = {p["path"]: p for p in manifest["parts"] if "trimmed_from" in p}
        assert "logs/api-0/chatty.log" in cut
        assert cut["logs/api-0/chatty.log"]["trimmed_from"] == len(kept)
        assert "evidence_max_bytes" in cut["logs/api-0/chatty.log"]["cut"]
        for path, part in trimmed.items():
            if path.startswith("logs/"):
                assert files[path].endswith(part)
                assert part.startswith((b"2026-", b"GET")) or part == b""
    finally:
        await _force_delete(core, ns, "api-0")


async def test_a_tiny_bound_cuts_parts_and_the_manifest_says_so(
    admin: client.ApiClient, ns: str, recorder: Recorder, bench: Bench
) -> None:
    core = client.CoreV1Api(admin)
    rng = random.Random(7)
    for i in range(40):
        keys = {f"K{rng.getrandbits(64):016x}": "v" for _ in range(5)}
        await core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=meta(f"cm-{i}-{rng.getrandbits(64):016x}"), data=keys)
        )
    tiny = 4000
    spec = bench.spec(recorder.factory, {"namespaces": {ns: {}}}, max_bytes=tiny)
    outcome, data = await bench.collect(spec, ns)
    manifest, files = opened(data, tiny)
    assert files == {}
    (cut,) = manifest["cut"]
    assert cut["path"] == "objects.yaml"
    assert cut["reason"] == cut_reason(tiny)
    assert cut["reason"] == "left out: the bundle is bounded by evidence_max_bytes (4000 bytes)"
    assert cut["size"] > tiny
    assert manifest["max_bytes"] == tiny
    assert missing(manifest) == {"top.json": NOT_SERVED}
    assert (outcome["cut"], outcome["cut_total"]) == (["objects.yaml"], 1)

    too_small = bench.spec(recorder.factory, {"namespaces": {ns: {}}}, max_bytes=500)
    with pytest.raises(ValueError, match="no room for the bundle's manifest") as caught:
        await bench.collect(too_small, ns)
    assert getattr(caught.value, "retriable", None) is False


# -- Prometheus ----------------------------------------------------------------------------------


async def test_prometheus_series_of_the_last_hour(
    ns: str,
    recorder: Recorder,
    bench: Bench,
    prometheus: PrometheusServer,  # noqa: F811
) -> None:
    queries = {"scrapes": SCRAPES, "shards": SHARD_LOAD, "broken": f"sum(rate({SCRAPES}[5m])"}
    inventory = {
        "namespaces": {ns: {}},
        "prometheus": {
            "main": {"url": prometheus.url, "queries": queries},
            "down": {"url": f"http://127.0.0.1:{free_port()}", "queries": {"up": "up"}},
        },
    }
    spec = bench.spec(recorder.factory, inventory)
    action_id = await bench.new_action(ns)

    async def with_points() -> tuple[dict[str, Any], dict[str, bytes]] | None:
        # The window ends at the last whole 15 s: a young Prometheus may have nothing before.
        _, data = await bench.collect(spec, ns, action_id, prometheus="main")
        manifest, files = opened(data)
        body = json.loads(files["prometheus/scrapes.json"])
        return (manifest, files) if body["data"]["result"] else None

    manifest, files = await eventually(with_points, what="a point in the window", within=30)
    scrapes = json.loads(files["prometheus/scrapes.json"])
    assert (scrapes["name"], scrapes["query"], scrapes["url"]) == (
        "scrapes",
        SCRAPES,
        prometheus.url,
    )
    assert (scrapes["end"] - scrapes["start"], scrapes["step"]) == (3600, 15)
    assert scrapes["data"]["resultType"] == "matrix"
    (series,) = scrapes["data"]["result"]
    assert series["metric"]["__name__"] == SCRAPES
    assert series["metric"]["job"] == JOB
    assert series["values"]
    assert all(scrapes["start"] <= t <= scrapes["end"] for t, _ in series["values"])
    shards = json.loads(files["prometheus/shards.json"])
    assert len(shards["data"]["result"]) == SHARDS
    assert "bad_data" in missing(manifest)["prometheus/broken.json"]
    assert [b.name for b in await bench.store.list(bench.incident)] == [bundle_name(action_id)]

    _, data = await bench.collect(spec, ns, prometheus="main", queries=["shards"])
    _, files = opened(data)
    assert sorted(files) == ["objects.yaml", "prometheus/shards.json"]

    _, data = await bench.collect(spec, ns, prometheus="down")  # Prometheus away: still a bundle
    manifest, files = opened(data)
    assert "objects.yaml" in files
    assert "ClientConnectorError" in missing(manifest)["prometheus/up.json"]

    _, data = await bench.collect(spec, ns, prometheus="main", queries=["nope"])
    manifest, _ = opened(data)
    assert "has no query named nope" in missing(manifest)["prometheus/"]


# -- S3 ------------------------------------------------------------------------------------------


async def make_bucket(moto: MotoServer) -> str:
    bucket = unique_name("sevpipe-evidence")
    async with S3Store(bucket, moto.config()).clients.s3() as s3:
        await s3.create_bucket(Bucket=bucket)
    return bucket


async def test_the_s3_store_round_trip(moto_server: MotoServer) -> None:
    bucket = await make_bucket(moto_server)
    store = S3Store(bucket, moto_server.config())
    inc, at = f"inc-{new_event_id().lower()}", datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert await store.list(inc) == []
    assert await store.get(inc, "evidence-a") is None
    assert await store.info(inc, "evidence-a") is None
    moto_server.reset_recording()
    first = await store.put(inc, "evidence-a", b"first", action_id="A1", created_at=at)
    key = f"evidence/{inc}/evidence-a.tar.gz"
    puts = [r for r in moto_server.received("s3") if r.method == "PUT"]
    assert [r.path for r in puts] == [f"/{bucket}/{key}"]
    assert store.write_request(inc, "evidence-a") == ApiRequest(
        method="PutObject", path="s3:PutObject", body={"Bucket": bucket, "Key": key}
    )
    assert await store.list(inc) == [first]
    assert await store.get(inc, "evidence-a") == b"first"
    assert await store.info(inc, "evidence-a") == first
    later = at + timedelta(minutes=1)
    second = await store.put(inc, "evidence-a", b"second!", action_id="A1", created_at=later)
    other = await store.put(inc, "evidence-b", b"b", action_id="B1", created_at=at)
    assert await store.list(inc) == [other, second]  # one object per name, oldest first
    assert second.sha256 == hashlib.sha256(b"second!").hexdigest()
    assert await store.get(inc, "evidence-a") == b"second!"
    assert await store.list(f"inc-{new_event_id().lower()}") == []  # another incident's: none
    with pytest.raises(InvalidName):
        await store.get(inc, "../x")
    with pytest.raises(InvalidName):
        await store.put("../other", "evidence-a", b"x", action_id="A", created_at=at)

    nowhere = S3Store(unique_name("no-such-bucket"), moto_server.config())
    with pytest.raises(EvidenceStoreError, match="NoSuchBucket") as caught:
        await nowhere.put(inc, "evidence-a", b"x", action_id="A", created_at=at)
    assert caught.value.retriable is False


async def test_the_action_writes_where_settings_say(
    services: Services, moto_server: MotoServer, ns: str, book: EmbeddedStore, tmp_path: Path
) -> None:
    """catalogue_of's evidence.collect: into <data_dir>/evidence by default, into the bucket
    when one is set; its incident from the actions book."""
    inventory = Inventory.model_validate({"namespaces": {ns: {}}})
    bucket = await make_bucket(moto_server)
    by_dir = Settings(data_dir=tmp_path, kubeconfig=Path(services.kubeconfig))
    by_s3 = by_dir.model_copy(update={"evidence_bucket": bucket, "aws": moto_server.config()})
    for settings in (by_dir, by_s3):
        bench = Bench(book, evidence_store_of(settings), f"inc-{new_event_id().lower()}")
        spec = catalogue_of(settings, inventory, book).get("evidence.collect")
        outcome, data = await bench.collect(spec, ns)
        manifest, files = opened(data)
        assert manifest["incident_id"] == bench.incident
        assert "objects.yaml" in files
        if settings is by_dir:
            path = tmp_path / "evidence" / bench.incident / f"{outcome['bundle']}.tar.gz"
            assert path.read_bytes() == data
        else:
            stored = await S3Store(bucket, moto_server.config()).get(
                bench.incident, outcome["bundle"]
            )
            assert stored == data


# -- the actions stage: a bundle for the incident it opened on ------------------------------------


async def test_the_stage_collects_evidence_for_an_incident_and_it_is_listed_there(
    services: Services, ns: str, tmp_path: Path
) -> None:
    inventory = Inventory.model_validate(
        {"default_namespace": ns, "namespaces": {ns: {"pods": {"web": {"app": NAME}}}}}
    )
    playbooks = Playbooks.model_validate(
        {
            "playbooks": [
                {
                    "name": "sev0",
                    "match": {"min_severity": "SEV-1"},
                    "steps": [
                        {
                            "id": "evidence",
                            "action": "evidence.collect",
                            "params": {"pods": "web"},
                            "target": {"kind": "Namespace"},
                            "mode": "auto",
                        }
                    ],
                }
            ]
        }
    )
    settings = Settings(data_dir=tmp_path, kubeconfig=Path(services.kubeconfig))
    async with open_actions(tmp_path) as a:
        stage = ActionsStage(
            a.log,
            a.store,
            ledger=a.ledger,
            catalogue=catalogue_of(settings, inventory, a.store),
            playbooks=playbooks,
            inventory=inventory,
            guard=Guard(a.coordinator, Limits(), inventory),
            live=False,  # a read, and sevpipe's own store: it runs in dry-run too
        )
        await a.outage()
        await a.run(stage)
        events = await a.events()
        assert [t for t, _ in events] == ["action.planned", "action.started", "action.succeeded"]
        done = events[-1][1]
        store = evidence_store_of(settings)
        (info,) = await store.list(done.incident_id)
        assert (info.name, info.action_id) == (bundle_name(done.action_id), done.action_id)
        assert done.result["bundle"] == info.name
        assert done.result["sha256"] == info.sha256
        data = await store.get(done.incident_id, info.name)
        assert data is not None
        manifest, _ = opened(data)
        assert (manifest["incident_id"], manifest["action_id"]) == (
            done.incident_id,
            done.action_id,
        )
        assert events[0][1].requests[-1].path.endswith(f"/{info.name}.tar.gz")
        await a.run(stage)  # delivered again: nothing more
        assert len(await a.events()) == 3


# -- the evidence API and ``sevpipe evidence`` ----------------------------------------------------


@dataclass
class Served:
    client: TestClient[web.Request, web.Application]
    incident: str
    name: str
    data: bytes
    root: Path

    async def get(self, path: str, token: str | None = VIEWER) -> tuple[int, bytes, Any]:
        headers = bearer(token) if token else {}
        async with self.client.get(URL(path, encoded=True), headers=headers) as resp:
            return resp.status, await resp.read(), resp.headers


def incident(incident_id: str) -> Incident:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    return Incident(
        id=incident_id,
        key='{}:{service="checkout"}',
        severity="SEV-1",
        status="open",
        title="checkout errors",
        reasons=("impact feature_degraded",),
        opened_at=at,
        updated_at=at,
    )


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    settings = Settings(data_dir=tmp_path / "data")
    operators = [operator("vic", "v-token", "viewer"), operator("rita", "r-token", "responder")]
    authorize = authorizer(Credentials(bearer_token=TOKEN), operators)
    inc, other = f"inc-{new_event_id().lower()}", f"inc-{new_event_id().lower()}"
    data = gzip.compress(b"a bundle, as bytes")
    evidence = evidence_store_of(settings)
    at = datetime.now(UTC)
    await evidence.put(inc, "evidence-one", data, action_id="01ONE", created_at=at)
    await evidence.put(other, "evidence-other", b"another incident's", action_id="X", created_at=at)
    (tmp_path / "data" / "outside.tar.gz").write_bytes(b"outside the evidence dir")
    (tmp_path / "outside.tar.gz").write_bytes(b"outside the data dir")
    async with (
        EmbeddedStore(tmp_path / "store.db") as store,
        EmbeddedLog(tmp_path / "events.db") as log,
    ):
        await store.save(
            [], [IncidentWrite(incident(inc), 0), IncidentWrite(incident(other), 0)], []
        )
        routes = evidence_routes(settings, store, authorize)
        client_ = TestClient(TestServer(build_app(routes, log, CollectorRegistry(), 1 << 20)))
        await client_.start_server()
        try:
            yield Served(client_, inc, "evidence-one", data, tmp_path / "data" / "evidence")
        finally:
            await client_.close()


async def test_a_viewer_lists_and_downloads_an_incidents_bundles(served: Served) -> None:
    base = f"/api/v1/incidents/{served.incident}/evidence"
    status, body, _ = await served.get(base)
    assert status == 200
    listed = json.loads(body)
    assert listed["incident_id"] == served.incident
    (bundle,) = listed["bundles"]
    assert {k: bundle[k] for k in ("name", "size", "sha256", "action_id", "download")} == {
        "name": "evidence-one",
        "size": len(served.data),
        "sha256": hashlib.sha256(served.data).hexdigest(),
        "action_id": "01ONE",
        "download": f"{base}/evidence-one",
    }
    assert datetime.fromisoformat(bundle["created_at"]).tzinfo is not None
    for path in (f"{base}/evidence-one", f"{base}/evidence-one.tar.gz"):
        status, body, headers = await served.get(path, "r-token")  # a responder views too
        assert (status, body) == (200, served.data)
        assert headers["Content-Type"] == "application/gzip"
        assert headers["Content-Disposition"] == 'attachment; filename="evidence-one.tar.gz"'


async def test_who_may_not_and_what_is_not_there(served: Served) -> None:
    base = f"/api/v1/incidents/{served.incident}/evidence"
    for path in (base, f"{base}/evidence-one"):
        status, body, _ = await served.get(path, None)
        assert (status, json.loads(body)["error"]) == (401, "missing or wrong credentials")
        assert (await served.get(path, "wrong"))[0] == 401
        assert (await served.get(path, TOKEN))[0] == 403  # Alertmanager's credential: alerts only
    unknown = f"inc-{new_event_id().lower()}"
    status, body, _ = await served.get(f"/api/v1/incidents/{unknown}/evidence")
    assert (status, json.loads(body)["error"]) == (404, f"no incident {unknown}")
    assert (await served.get(f"/api/v1/incidents/{unknown}/evidence/evidence-one"))[0] == 404
    status, body, _ = await served.get(f"{base}/evidence-two")
    assert (status, json.loads(body)["error"]) == (
        404,
        f"incident {served.incident} has no evidence bundle evidence-two",
    )
    # Another incident's bundle is not this one's.
    assert (await served.get(f"{base}/evidence-other"))[0] == 404


@pytest.mark.parametrize(
    "name",
    [
        "..%2Foutside",
        "..%2F..%2Foutside",
        "%2E%2E%2Foutside.tar.gz",
        "..",
        "%2E%2E",
        "..%2Finc-x%2Fevidence-other",
        "evidence-one%00",
        "%2Fetc%2Fpasswd",
        ".evidence-one.tar.gz.0123.tmp",
    ],
)
async def test_a_name_that_is_not_a_bundles_is_refused_and_nothing_outside_is_read(
    served: Served, name: str
) -> None:
    status, body, _ = await served.get(f"/api/v1/incidents/{served.incident}/evidence/{name}")
    assert status in (400, 404)
    assert b"outside the" not in body  # neither file outside the evidence dir was read
    assert body != served.data


async def test_sevpipe_evidence_lists_and_downloads_byte_identical(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(served.client.make_url(""))

    async def cli(*argv: str) -> tuple[int, str, str]:
        args: argparse.Namespace = build_parser().parse_args(["evidence", *argv, "--url", url])
        out, err = io.StringIO(), io.StringIO()
        return await evidence_cli(args, out, err), out.getvalue(), err.getvalue()

    code, out, _ = await cli(served.incident, "--token", "v-token")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["NAME", "SIZE", "CREATED", "ACTION", "SHA256"]
    assert row.split()[0:2] == ["evidence-one", str(len(served.data))]
    assert row.split()[-1] == hashlib.sha256(served.data).hexdigest()
    code, out, _ = await cli(served.incident, "--token", "v-token", "--format", "json")
    assert [b["name"] for b in json.loads(out)] == ["evidence-one"]

    stored = (served.root / served.incident / "evidence-one.tar.gz").read_bytes()
    code, out, err = await cli(served.incident, "--token", "v-token", "--out", str(tmp_path / "dl"))
    assert (code, err) == (0, "")
    assert (tmp_path / "dl" / "evidence-one.tar.gz").read_bytes() == stored == served.data
    assert out.startswith(f"{tmp_path / 'dl' / 'evidence-one.tar.gz'}  {len(stored)} bytes")

    monkeypatch.chdir(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text("v-token\n")
    code, _, _ = await cli(
        served.incident, "--token-file", str(token_file), "--name", "evidence-one"
    )
    assert code == 0
    assert (tmp_path / "evidence-one.tar.gz").read_bytes() == stored
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["evidence-one.tar.gz"]

    code, _, err = await cli(served.incident, "--token", "v-token", "--name", "evidence-two")
    assert (code, err) == (
        1,
        f"sevpipe: incident {served.incident} has no evidence bundle evidence-two\n",
    )
    code, _, err = await cli(served.incident)
    assert (code, err) == (1, "sevpipe: 401: missing or wrong credentials\n")
    code, _, err = await cli("inc-unknown", "--token", "v-token")
    assert (code, err) == (1, "sevpipe: 404: no incident inc-unknown\n")


async def test_a_download_that_does_not_match_its_listing_leaves_no_file(
    served: Served, tmp_path: Path
) -> None:
    # The bundle changes between the listing and the download (a retry overwrote it): the
    # listed sha256 no longer matches, and the CLI writes nothing.
    url = str(served.client.make_url(""))
    (served.root / served.incident / "evidence-one.tar.gz").write_bytes(b"rewritten")
    (served.root / served.incident / "evidence-one.json").write_text(
        json.dumps(
            {
                "name": "evidence-one",
                "size": len(served.data),
                "sha256": hashlib.sha256(served.data).hexdigest(),
                "created_at": datetime.now(UTC).isoformat(),
                "action_id": "01ONE",
                "file": [
                    9,
                    (served.root / served.incident / "evidence-one.tar.gz").stat().st_mtime_ns,
                ],
            }
        )
    )
    args = build_parser().parse_args(
        [
            "evidence",
            served.incident,
            "--token",
            "v-token",
            "--out",
            str(tmp_path / "dl"),
            "--url",
            url,
        ]
    )
    err = io.StringIO()
    assert await evidence_cli(args, io.StringIO(), err) == 1
    assert "is not the listed" in err.getvalue()
    assert not (tmp_path / "dl").exists() or list((tmp_path / "dl").iterdir()) == []


async def test_the_store_being_away_is_a_503(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    authorize = authorizer(Credentials(), [])
    inc = f"inc-{new_event_id().lower()}"
    blocked = tmp_path / "data" / "evidence"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the evidence dir should be")
    async with (
        EmbeddedStore(tmp_path / "store.db") as store,
        EmbeddedLog(tmp_path / "events.db") as log,
    ):
        await store.save([], [IncidentWrite(incident(inc), 0)], [])
        app = build_app(evidence_routes(settings, store, authorize), log, CollectorRegistry(), 1024)
        async with (
            TestClient(TestServer(app)) as c,
            c.get(f"/api/v1/incidents/{inc}/evidence") as resp,
        ):
            assert resp.status == 503
            assert "evidence store unavailable" in (await resp.json())["error"]
