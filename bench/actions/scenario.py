"""What the bench feeds the actions stage: the playbooks and inventory it runs with, and
incidents as the classifier writes them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from actions.inventory import Inventory
from actions.playbooks import Playbooks
from eventlog import EventLog
from schemas import Envelope, new_event_id
from schemas.incidents import Incident, IncidentAlert, IncidentCounts, IncidentEventData

BENCH_ACTION: Final = "bench.restart"
KUBE_ACTION: Final = "kubernetes.rollout_restart"
NAMESPACE: Final = "bench-production"
OUTAGE: Final = "BenchOutage"  # alertname -> the bench.restart playbook
KUBE_OUTAGE: Final = "KubeOutage"  # alertname -> the kubernetes.rollout_restart playbook
WARMUP: Final = "BenchWarmup"  # alertname -> a step in mode never: touches no guard state
STEP: Final = "restart"


def playbooks() -> Playbooks:
    # The alert's labels choose the Deployment (among the inventory's only).
    target = {
        "kind": "Deployment",
        "namespace_from_label": "namespace",
        "name_from_label": "deployment",
    }

    def book(alertname: str, action: str) -> dict[str, Any]:
        step = {"id": STEP, "action": action, "target": target, "mode": "auto"}
        match = {"min_severity": "SEV-0", "alertnames": [alertname]}
        return {"name": f"bench-{alertname}", "match": match, "steps": [step]}

    warmup = {"id": "warmup", "action": BENCH_ACTION, "target": target, "mode": "never"}
    return Playbooks.model_validate(
        {
            "playbooks": [
                {
                    "name": "bench-warmup",
                    "match": {"min_severity": "SEV-3", "alertnames": [WARMUP]},
                    "steps": [warmup],
                },
                book(OUTAGE, BENCH_ACTION),
                book(KUBE_OUTAGE, KUBE_ACTION),
            ]
        }
    )


def inventory(deployments: dict[str, Sequence[str]]) -> Inventory:
    """namespace -> its Deployments; the first namespace is the default."""
    return Inventory.model_validate(
        {
            "default_namespace": next(iter(deployments)),
            "namespaces": {
                ns: {"deployments": {name: {"max_replicas": 10} for name in names}}
                for ns, names in deployments.items()
            },
        }
    )


def deployment_names(n: int, tag: str = "svc") -> list[str]:
    return [f"{tag}-{i:05d}" for i in range(n)]


def opened(alertname: str, namespace: str, deployment: str) -> Envelope:
    """An ``incident.opened`` of one firing alert naming ``deployment``, as the classifier
    writes it (SEV-0 outage; a warm-up is SEV-3)."""
    now = datetime.now(UTC)
    incident_id = "inc-" + new_event_id().lower()
    severity = "SEV-3" if alertname == WARMUP else "SEV-0"
    reasons = ("impact outage",) if severity == "SEV-0" else ("no impact, users or revenue",)
    labels = {
        "alertname": alertname,
        "impact": "outage" if severity == "SEV-0" else "minor",
        "namespace": namespace,
        "deployment": deployment,
    }
    alert = IncidentAlert(
        fingerprint=uuid.uuid4().hex[:16],
        alertname=alertname,
        status="firing",
        starts_at=now,
        severity=severity,
        reasons=reasons,
        summary=f"{deployment} is down",
        labels=labels,
    )
    incident = Incident(
        id=incident_id,
        key=f'{{}}:{{alertname="{alertname}", incident="{incident_id}"}}',
        severity=severity,
        status="open",
        title=f"{alertname} {deployment}",
        reasons=reasons,
        counts=IncidentCounts(alerts=1, firing=1),
        opened_at=now,
        updated_at=now,
    )
    data = IncidentEventData(incident=incident, change=f"alert {alertname} firing", alerts=(alert,))
    return Envelope.new("incident.opened", "/sevpipe/classifier", incident_id, data)


def outages(names: Sequence[str], n: int) -> list[Envelope]:
    """``n`` outages, over ``names`` in turn."""
    return [opened(OUTAGE, NAMESPACE, names[i % len(names)]) for i in range(n)]


async def append(eventlog: EventLog, topic: str, envs: Sequence[Envelope]) -> None:
    """Append ``envs`` to ``topic``, each deduplicated by its id."""
    await eventlog.append(topic, envs, dedup_keys=[e.id for e in envs])
