"""The receiver's Prometheus metrics, registered on the registry the process owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ReceiverMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.webhooks = Counter(
            "sevpipe_webhooks_received_total",
            "Webhook bodies received (any outcome)",
            registry=registry,
        )
        self.alerts = Counter(
            "sevpipe_alerts_received_total",
            "Alerts in accepted webhook bodies, by status",
            ["status"],
            registry=registry,
        )
        self.repeats = Counter(
            "sevpipe_alerts_repeated_total",
            "Alerts already in the log under the same (groupKey, fingerprint, startsAt, status)",
            registry=registry,
        )
        self.rejected = Counter(
            "sevpipe_webhooks_rejected_total",
            "Webhook bodies refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.append_seconds = Histogram(
            "sevpipe_eventlog_append_seconds",
            "Time from handing a webhook's events to the log until they are durable",
            buckets=APPEND_BUCKETS,
            registry=registry,
        )
        for reason in (
            "auth",
            "content_type",
            "too_large",
            "invalid_json",
            "invalid_schema",
            "log_unavailable",
            "internal",
        ):
            self.rejected.labels(reason)
        for status in ("firing", "resolved"):
            self.alerts.labels(status)
