"""What the end-to-end tests of ``sevpipe act`` on the real kube-apiserver share.

- ``Cluster``: namespaces of the test's own, each with an ``origin-backend`` Deployment whose
  Pods stay Pending (no kubelet), so the SEV-0 outage playbook finds it not ready and
  restarts it; deleted at the end.
- ``act_settings``: the inventory and settings files that point ``sevpipe`` at them, live.
- ``own_redis_db``: a Redis database of the test's own. The guard's rate limit (20 restarts an
  hour), concurrency slots and the locks a killed replica leaves behind (15 min) live under
  fixed keys; on the shared database 0 they would carry over between tests and runs.
- ``audit_entries`` and ``deployment_patches``: the kube-apiserver's audit log, as written
  (one entry per request; nothing deduplicated).
- ``playbooks``: the ``sevpipe.actions`` topic as incident -> step -> states, in log order.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from services import Services, unique_name

from .backends import Backend, backend_named
from .harness import one_alert_webhook, replay

NAME = "origin-backend"
_LAG = re.compile(r"^sevpipe_consumer_lag\{([^}]*)\}")
_LABEL = re.compile(r'(\w+)="([^"]*)"')
REDIS_DATABASES = range(1, 16)  # 0 is everyone's
REDIS_OWNER_KEY = "sevpipe-e2e:owner"
REDIS_OWNER_TTL = 3600
# Claim a database only while it is empty: one that holds anything is someone's.
_CLAIM_EMPTY = """
if redis.call('DBSIZE') == 0 then
    return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
end
return false
"""


@dataclass
class Cluster:
    """The admin's client, and the namespaces the test made (deleted by ``close``); the
    admin kubeconfig's path and the apiserver's audit log's."""

    api: client.ApiClient
    kubeconfig: str
    audit_log: str
    namespaces: list[str] = field(default_factory=list)

    @classmethod
    async def of(cls, services: Services) -> Cluster:
        assert services.kubeconfig, "scripts/test-services up provides SEVPIPE_KUBECONFIG"
        assert services.kube_audit_log, "scripts/test-services up provides SEVPIPE_KUBE_AUDIT_LOG"
        api = await config.new_client_from_config(config_file=services.kubeconfig)
        return cls(api, services.kubeconfig, services.kube_audit_log)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    async def namespace(self, prefix: str) -> str:
        """A new namespace with a Deployment origin-backend of 2 (generation 1)."""
        ns = unique_name(prefix).replace("_", "-").lower()[:50]
        await self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        self.namespaces.append(ns)
        labels = {"app": NAME}
        body: Any = {
            "metadata": {"name": NAME},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "app", "image": "origin:1"}]},
                },
            },
        }
        created = await self.apps.create_namespaced_deployment(ns, body)
        assert created.metadata.generation == 1
        return ns

    async def generation(self, ns: str) -> int:
        dep = await self.apps.read_namespaced_deployment(NAME, ns)
        generation: int = dep.metadata.generation
        return generation

    async def close(self) -> None:
        try:
            for ns in self.namespaces:
                with contextlib.suppress(ApiException):
                    await self.core.delete_namespace(ns)
        finally:
            await self.api.close()


def act_settings(tmp_path: Path, namespaces: Sequence[str], kubeconfig: str) -> tuple[str, ...]:
    """Settings (and their inventory) for live actions on ``namespaces``' origin-backend,
    with ``kubeconfig``; the ``--config`` arguments that name them."""
    inventory = tmp_path / "inventory.yaml"
    deployment = {"max_replicas": 20, "hpa": {"min": 2, "max": 20}}
    inventory.write_text(
        yaml.safe_dump(
            {
                "default_namespace": namespaces[0],
                "namespaces": {ns: {"deployments": {NAME: dict(deployment)}} for ns in namespaces},
            }
        )
    )
    settings = tmp_path / "sevpipe.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "inventory_file": str(inventory),
                "actions_mode": "live",
                "kubeconfig": kubeconfig,
                # A killed replica's actions are taken over after this: short, for the tests.
                "actions_lease": "15s",
            }
        )
    )
    return ("--config", str(settings))


def outage(ns: str) -> bytes:
    """A SEV-0 outage of origin-backend in ``ns``: one incident per namespace."""
    labels = {"alertname": "OriginDown", "impact": "outage", "namespace": ns, "deployment": NAME}
    return one_alert_webhook(
        f'{{}}:{{namespace="{ns}"}}',
        labels,
        uuid.uuid5(uuid.NAMESPACE_DNS, ns).hex[:16],
        summary=f"origin is down in {ns}",
        starts_at="2026-11-29T03:00:00Z",
    )


async def post_alerts(alerts_url: str, bodies: Iterable[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            headers = {"Content-Type": "application/json"}
            async with session.post(alerts_url, data=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()


async def action_events(data: Path, backend: Backend) -> list[dict[str, Any]]:
    return await asyncio.to_thread(replay, data, "--topic", "sevpipe.actions", env=backend.env)


Playbooks = dict[str, dict[str, list[str]]]
"""Per namespace (the incident's target), per step, the states of the action events in log
order (a re-decided duplicate would show twice)."""


def playbooks(events: Iterable[dict[str, Any]]) -> Playbooks:
    runs: Playbooks = {}
    for event in events:
        data = event["data"]
        ns = data["target"]["namespace"]
        runs.setdefault(ns, {}).setdefault(data["step"], []).append(data["state"])
    return runs


def finished(runs: Playbooks, namespaces: Iterable[str]) -> bool:
    """Every namespace's incident has reached the outage playbook's last step."""
    return all(runs.get(ns, {}).get("emergency-image") for ns in namespaces)


async def actions_partitions(session: aiohttp.ClientSession, metrics_url: str) -> set[int]:
    """The ``sevpipe.incidents`` partitions a ``sevpipe act`` consumes now (its lag metric)."""
    async with session.get(metrics_url) as resp:
        text = await resp.text()
    found: set[int] = set()
    for line in text.splitlines():
        if (match := _LAG.match(line)) is None:
            continue
        labels = dict(_LABEL.findall(match.group(1)))
        if labels["group"].endswith("sevpipe-actions") and labels["topic"] == "sevpipe.incidents":
            found.add(int(labels["partition"]))
    return found


@contextlib.asynccontextmanager
async def with_own_redis_db(backend: Backend) -> AsyncIterator[Backend]:
    """The production ``backend`` on a Redis database of its own (``own_redis_db``)."""
    async with own_redis_db(backend.env["SEVPIPE_REDIS_URL"]) as url:
        env = {**backend.env, "SEVPIPE_REDIS_URL": url}
        yield Backend(backend.name, env, backend.topic_prefix)


@contextlib.asynccontextmanager
async def own_redis_db(url: str) -> AsyncIterator[str]:
    """``url`` on an empty Redis database claimed for this test, emptied afterwards."""
    base = url.rstrip("/").rsplit("/", 1)[0] if re.search(r"/\d+$", url) else url.rstrip("/")
    owner = uuid.uuid4().hex
    for db in REDIS_DATABASES:
        conn = aioredis.from_url(f"{base}/{db}")
        try:
            claimed = await conn.eval(_CLAIM_EMPTY, 1, REDIS_OWNER_KEY, owner, REDIS_OWNER_TTL)
            if not claimed:
                continue
            try:
                yield f"{base}/{db}"
            finally:
                await conn.flushdb()
            return
        finally:
            await conn.aclose()
    raise AssertionError(f"no empty Redis database among {list(REDIS_DATABASES)} at {base}")


def audit_entries(path: str) -> list[dict[str, Any]]:
    """Every entry of the kube-apiserver's audit log (and of its rotated backups, audit-*.log
    beside it), oldest file first."""
    log = Path(path)
    assert log.is_file(), f"no audit log at {path}: scripts/test-services up starts it"
    files = [*sorted(log.parent.glob(f"{log.stem}-*{log.suffix}")), log]
    entries: list[dict[str, Any]] = []
    for file in files:
        for line in file.read_bytes().splitlines():
            if line.strip():
                entry = orjson.loads(line)
                assert isinstance(entry, dict), line
                entries.append(entry)
    return entries


def deployment_patches(
    entries: Iterable[dict[str, Any]], ns: str, *, user: str | None = None
) -> list[dict[str, Any]]:
    """The audit entries of PATCH requests on origin-backend in ``ns`` (not its
    subresources), by ``user`` when given: one per request, as the apiserver answered it."""
    found = []
    for entry in entries:
        ref = entry.get("objectRef") or {}
        if (
            entry.get("verb") == "patch"
            and entry.get("stage") == "ResponseComplete"
            and ref.get("resource") == "deployments"
            and not ref.get("subresource")
            and ref.get("namespace") == ns
            and ref.get("name") == NAME
            and (user is None or entry.get("user", {}).get("username") == user)
        ):
            found.append(entry)
    return found


def codes(entries: Iterable[dict[str, Any]]) -> list[int]:
    return [int((e.get("responseStatus") or {}).get("code", 0)) for e in entries]


@pytest.fixture
async def production(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Kafka, PostgreSQL and a Redis database of the test's own."""
    with backend_named("production", request) as backend:
        async with with_own_redis_db(backend) as own:
            yield own


@pytest.fixture
async def cluster(services: Services) -> AsyncIterator[Cluster]:
    found = await Cluster.of(services)
    try:
        yield found
    finally:
        await found.close()
