"""The stage runtime's metrics, labelled by stage; one set per Prometheus registry."""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# ``sevpipe run`` runs several stages on one registry, and a registry refuses a second
# collector of the same name: every runtime on a registry shares one set, told apart by
# the ``stage`` label. Weak keys: a registry's set goes with it (tests make many).
_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, StageMetrics] = (
    weakref.WeakKeyDictionary()
)


class StageMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "sevpipe_stage_records_total",
            "Records a stage handled (dead letters not included)",
            ["stage"],
            registry=registry,
        )
        self.deadletters = Counter(
            "sevpipe_deadletters_total",
            "Records a stage could not process and sent to sevpipe.deadletter, by reason",
            ["stage", "reason"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "sevpipe_stage_batch_seconds",
            "Time to handle one fetched batch, dead letters included",
            ["stage"],
            registry=registry,
        )
        self.retries = Counter(
            "sevpipe_stage_retries_total",
            "Retries after a retriable error (a backend away), by step: fetch, handle, "
            "commit, tick, deadletter",
            ["stage", "step"],
            registry=registry,
        )
        self.ready = Gauge(
            "sevpipe_stage_ready",
            "1 while the stage consumes, 0 while it backs off or is stopped",
            ["stage"],
            registry=registry,
        )

    @classmethod
    def of(cls, registry: CollectorRegistry) -> StageMetrics:
        """The registry's set, made on first use."""
        metrics = _BY_REGISTRY.get(registry)
        if metrics is None:
            metrics = _BY_REGISTRY[registry] = cls(registry)
        return metrics
