"""What an evidence bundle reads, part by part; each reader returns the parts it could read
and, for the rest, why not (:class:`actions.evidence_bundle.Missing`): a part that cannot be
read never fails the bundle.

- ``objects.yaml``: the namespace's objects as ``kubectl get all -o yaml`` shows them (a
  ``List``, each item with its apiVersion and kind, no managedFields): Pods, Services,
  ReplicationControllers, DaemonSets, Deployments, ReplicaSets, StatefulSets, HPAs, CronJobs,
  Jobs; and Ingresses, ConfigMaps (names, labels and keys; never values or annotations, which
  may hold them) and Events. Never Secrets: no request names them. At most MAX_PER_KIND of
  each kind.
- ``top.json``: ``kubernetes.top``'s outcome (metrics.k8s.io), or why there is none.
- ``prometheus/<query>.json``: each named query of an inventory Prometheus over the last
  hour (``/api/v1/query_range``, a STEP resolution), as Prometheus answered it.
- ``logs/<pod>/<container>.log``: see :mod:`actions.evidence_logs`.

Kubernetes reads are raw GETs (``response``, ``get_json``): the objects as the apiserver
serves them, errors mapped by :func:`actions.kubernetes_reads.call`.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

import orjson
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from actions.evidence_bundle import Missing, Part
from actions.inventory_services import PrometheusEntry
from actions.kubernetes_observe import Observe, TopParams
from actions.kubernetes_reads import (
    MAX_OBJECTS,
    REQUEST_TIMEOUT,
    ApiClientFactory,
    KubernetesError,
    call,
)
from actions.prometheus_api import PrometheusApi, PrometheusError, range_url, shown_url
from schemas.actions import ApiRequest, Target

PAGE: Final = 250
MAX_PER_KIND: Final = 1000
PROMETHEUS_RANGE: Final = 3600.0
STEP: Final = 15.0
CONCURRENCY: Final = 4
MAX_REASON: Final = 500
KINDS: Final = (
    ("v1", "Pod", "/api/v1/namespaces/{ns}/pods"),
    ("v1", "Service", "/api/v1/namespaces/{ns}/services"),
    ("v1", "ReplicationController", "/api/v1/namespaces/{ns}/replicationcontrollers"),
    ("apps/v1", "DaemonSet", "/apis/apps/v1/namespaces/{ns}/daemonsets"),
    ("apps/v1", "Deployment", "/apis/apps/v1/namespaces/{ns}/deployments"),
    ("apps/v1", "ReplicaSet", "/apis/apps/v1/namespaces/{ns}/replicasets"),
    ("apps/v1", "StatefulSet", "/apis/apps/v1/namespaces/{ns}/statefulsets"),
    (
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    ),
    ("batch/v1", "CronJob", "/apis/batch/v1/namespaces/{ns}/cronjobs"),
    ("batch/v1", "Job", "/apis/batch/v1/namespaces/{ns}/jobs"),
    ("networking.k8s.io/v1", "Ingress", "/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses"),
    ("v1", "ConfigMap", "/api/v1/namespaces/{ns}/configmaps"),
    ("v1", "Event", "/api/v1/namespaces/{ns}/events"),
)
_DUMPER: Final[Any] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass
class Read:
    parts: list[Part] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)

    def merge(self, other: Read) -> None:
        self.parts += other.parts
        self.missing += other.missing


def reason(exc: BaseException) -> str:
    """Why a part could not be read: the apiserver's status and message where it gave one
    ("403 Forbidden: events is forbidden: User ... cannot list ..."), else the error."""
    cause = exc.__cause__
    text = str(exc)
    if isinstance(cause, ApiException) and cause.body:
        body = cause.body if isinstance(cause.body, bytes) else str(cause.body).encode()
        try:
            said = orjson.loads(body).get("message")
        except (orjson.JSONDecodeError, AttributeError):
            said = body[:300].decode(errors="replace").strip()
        if said:
            text = f"{cause.status} {cause.reason}: {said}"
    return text[:MAX_REASON]


async def response(api: client.ApiClient, path: str, query: list[tuple[str, Any]]) -> Any:
    """GET PATH raw (an aiohttp response, to release), non-2xx raised as ApiException."""
    resp = await api.call_api(
        path,
        "GET",
        query_params=query,
        header_params={"Accept": "application/json, */*"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=REQUEST_TIMEOUT,
    )
    if not 200 <= resp.status <= 299:
        try:
            body = await resp.read()
        finally:
            resp.release()
        exc = ApiException(status=resp.status, reason=resp.reason)
        exc.body = body
        raise exc
    return resp


async def get_json(api: client.ApiClient, path: str, query: list[tuple[str, Any]]) -> Any:
    resp = await response(api, path, query)
    try:
        return orjson.loads(await resp.read())
    finally:
        resp.release()


def objects_plan(ns: str) -> list[ApiRequest]:
    query = urlencode([("limit", PAGE)])
    return [ApiRequest(method="GET", path=f"{p.format(ns=ns)}?{query}") for _, _, p in KINDS]


def _configmap(item: dict[str, Any]) -> dict[str, Any]:
    """A ConfigMap's names and keys: never its values (nor annotations, which may hold them)."""
    meta = item.get("metadata") or {}
    kept = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp", "labels")
    return {
        "metadata": {k: meta[k] for k in kept if k in meta},
        "keys": sorted(item.get("data") or {}),
        "binaryKeys": sorted(item.get("binaryData") or {}),
    }


def _item(api_version: str, kind: str, item: dict[str, Any]) -> dict[str, Any]:
    if kind == "ConfigMap":
        item = _configmap(item)
    else:
        (item.get("metadata") or {}).pop("managedFields", None)
    return {**item, "apiVersion": api_version, "kind": kind}


async def read_objects(api: client.ApiClient, ns: str) -> Read:
    read = Read()
    items: list[dict[str, Any]] = []
    notes: list[str] = []
    for api_version, kind, path in KINDS:
        found: list[dict[str, Any]] = []
        query: list[tuple[str, Any]] = [("limit", PAGE)]
        try:
            while True:
                page = await call("list", kind, ns, get_json(api, path.format(ns=ns), query))
                found += [_item(api_version, kind, i) for i in page.get("items") or []]
                more = (page.get("metadata") or {}).get("continue")
                if not more or len(found) >= MAX_PER_KIND:
                    break
                query = [("continue", more), ("limit", PAGE)]
        except KubernetesError as exc:
            read.missing.append(Missing("objects.yaml", f"{kind}: {reason(exc)}"))
            continue
        if more:
            notes.append(f"{kind}: the first {len(found)} (more exist)")
        items += found
    if len(read.missing) == len(KINDS):
        return read
    doc = {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}
    text = await asyncio.to_thread(_yaml, doc)
    read.parts.append(Part("objects.yaml", text.encode(), note="; ".join(notes) or None))
    return read


def _yaml(doc: dict[str, Any]) -> str:
    text: str = yaml.dump(doc, Dumper=_DUMPER, sort_keys=True, allow_unicode=True)
    return text


async def read_top(factory: ApiClientFactory, target: Target) -> Read:
    params = TopParams(max_pods=MAX_OBJECTS, max_nodes=MAX_OBJECTS)
    try:
        outcome = await Observe(factory).top(target, params, 0)
    except KubernetesError as exc:
        return Read(missing=[Missing("top.json", reason(exc))])
    if not outcome.get("available"):
        return Read(missing=[Missing("top.json", str(outcome.get("reason")))])
    return Read(parts=[Part("top.json", orjson.dumps(outcome, option=orjson.OPT_INDENT_2))])


def query_files(names: list[str]) -> dict[str, str]:
    """Each query name's file under prometheus/: safe characters only, and distinct."""
    files: dict[str, str] = {}
    for name in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "query"
        stem, n = base, 2
        while f"prometheus/{stem}.json" in files.values():
            stem, n = f"{base}-{n}", n + 1
        files[name] = f"prometheus/{stem}.json"
    return files


def prometheus_window(now: float) -> tuple[float, float]:
    end = math.floor(now / STEP) * STEP
    return end - PROMETHEUS_RANGE, end


def prometheus_plan(
    entry: PrometheusEntry, chosen: list[tuple[str, str]], now: float
) -> list[ApiRequest]:
    start, end = prometheus_window(now)
    base = shown_url(entry.url)
    return [ApiRequest(method="GET", path=range_url(base, q, start, end, STEP)) for _, q in chosen]


async def read_prometheus(
    entry: PrometheusEntry, chosen: list[tuple[str, str]], now: float
) -> Read:
    start, end = prometheus_window(now)
    files, gate = query_files([n for n, _ in chosen]), asyncio.Semaphore(CONCURRENCY)

    async def one(name: str, promql: str, api: PrometheusApi) -> Part | Missing:
        async with gate:
            try:
                data = await api.query_range(promql, start, end, STEP)
            except PrometheusError as exc:  # its message names the URL: shown, no password
                said = str(exc).replace(entry.url.rstrip("/"), shown_url(entry.url).rstrip("/"))
                return Missing(files[name], f"query {name}: {said}"[:MAX_REASON])
        body = {
            "name": name,
            "query": promql,
            "url": shown_url(entry.url),
            "start": start,
            "end": end,
            "step": STEP,
            "data": data,
        }
        return Part(files[name], orjson.dumps(body, option=orjson.OPT_INDENT_2))

    async with PrometheusApi(entry.url, entry.timeout.total_seconds()) as api:
        done = await asyncio.gather(*(one(n, q, api) for n, q in chosen))
    return Read(
        parts=[d for d in done if isinstance(d, Part)],
        missing=[d for d in done if isinstance(d, Missing)],
    )
