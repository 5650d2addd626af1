"""The inventory's entries beyond Kubernetes: AWS resources, the application's databases and
Redis, probes and Prometheus. Each section maps a name (what playbooks and alert labels say)
to the entry; a target of one of these kinds has no namespace, only that name.

    aws:
      target_groups: {origin-web: {arn: "arn:aws:elasticloadbalancing:...:targetgroup/origin/1"}}
      instances: {origin-web: {tags: {app: origin}}}           # EC2 instances by tag
      rds: {origin-db: {identifier: origin-db-prod, failover: true}}
      elasticache:
        origin-cache:
          replication_group_id: origin-cache
          emergency: {replication_group_id: origin-cache-emergency, node_type: cache.r6g.large}
      cloudfront: {origin-cdn: {distribution_id: E2EXAMPLE, paths: ["/static/*", "/index.html"]}}
    databases:      # the application's PostgreSQL, never sevpipe's store
      origin-db: {dsn_file: /run/secrets/origin-db-dsn, idle_after: 5m, max_terminate: 50}
    redis:
      origin-cache: {url_file: /run/secrets/origin-redis-url, patterns: ["session:*"]}
    probes:
      http: {origin-health: {url: "https://origin.example.com/healthz"}}
      cdn: {origin-assets: {urls: ["https://cdn.example.com/static/app.js"]}}
      dns: {origin: {names: [origin.example.com, cdn.example.com]}}
    prometheus:
      main:
        url: http://prometheus:9090
        queries: {request_rate: 'sum(rate(http_requests_total[5m]))'}

Secrets are files named here and read when an action runs, never kept in the inventory.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.durations import Duration
from schemas.yamlfile import LocatedError

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]

ServiceKind = Literal[
    "TargetGroup",
    "Instances",
    "RdsInstance",
    "CacheGroup",
    "Distribution",
    "Database",
    "Redis",
    "HttpProbe",
    "CdnAssets",
    "DnsNames",
    "Prometheus",
]
SERVICE_KINDS: Final[tuple[ServiceKind, ...]] = (
    "TargetGroup",
    "Instances",
    "RdsInstance",
    "CacheGroup",
    "Distribution",
    "Database",
    "Redis",
    "HttpProbe",
    "CdnAssets",
    "DnsNames",
    "Prometheus",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetGroupEntry(_Model):
    arn: Name = Field(description="the ELBv2 target group's ARN")


class InstancesEntry(_Model):
    tags: dict[Name, str] = Field(min_length=1, description="EC2 instances with all these tags")


class RdsEntry(_Model):
    identifier: Name | None = Field(
        None, description="the DB instance identifier; default: the name"
    )
    failover: bool = Field(False, description="a Multi-AZ instance: reboot may force failover")


class EmergencyCache(_Model):
    replication_group_id: Name
    node_type: Name = "cache.t3.medium"
    num_cache_clusters: int = Field(2, ge=1, le=6)
    engine: Literal["redis", "valkey"] = "redis"


class CacheEntry(_Model):
    replication_group_id: Name
    emergency: EmergencyCache | None = Field(
        None, description="the emergency replication group; none: it is refused"
    )


class DistributionEntry(_Model):
    distribution_id: Name
    paths: tuple[Name, ...] = Field(
        ("/*",), min_length=1, description="the paths an invalidation may name"
    )
    max_paths: int = Field(15, ge=1, le=3000)


class DatabaseEntry(_Model):
    dsn_file: Path = Field(description="a file holding the DSN (with its credential)")
    idle_after: Duration = Field(timedelta(minutes=5), description="terminate idle longer")
    max_terminate: int = Field(50, ge=1, le=10_000, description="at most this many at once")


class RedisEntry(_Model):
    url_file: Path = Field(description="a file holding the redis:// URL (with its credential)")
    patterns: tuple[Name, ...] = Field(("*",), description="the key patterns TTLs are sampled by")
    max_scan: int = Field(1000, ge=1, le=100_000, description="keys a TTL sample reads at most")


class HttpProbeEntry(_Model):
    url: Name
    method: Literal["GET", "HEAD"] = "GET"
    timeout: Duration = timedelta(seconds=5)
    expect_status: tuple[int, ...] = (200,)


class CdnAssetsEntry(_Model):
    urls: tuple[Name, ...] = Field(min_length=1)
    timeout: Duration = timedelta(seconds=5)


class DnsNamesEntry(_Model):
    names: tuple[Name, ...] = Field(min_length=1)
    timeout: Duration = timedelta(seconds=5)


class PrometheusEntry(_Model):
    url: Name = Field(description="the server's base URL, e.g. http://prometheus:9090")
    queries: dict[Name, str] = Field(default_factory=dict, description="named PromQL queries")
    timeout: Duration = timedelta(seconds=10)


class AwsInventory(_Model):
    target_groups: dict[Name, TargetGroupEntry] = Field(default_factory=dict)
    instances: dict[Name, InstancesEntry] = Field(default_factory=dict)
    rds: dict[Name, RdsEntry] = Field(default_factory=dict)
    elasticache: dict[Name, CacheEntry] = Field(default_factory=dict)
    cloudfront: dict[Name, DistributionEntry] = Field(default_factory=dict)


class ProbesInventory(_Model):
    http: dict[Name, HttpProbeEntry] = Field(default_factory=dict)
    cdn: dict[Name, CdnAssetsEntry] = Field(default_factory=dict)
    dns: dict[Name, DnsNamesEntry] = Field(default_factory=dict)


class ServicesInventory(_Model):
    """The sections of the inventory beyond ``namespaces`` (mixed into ``Inventory``)."""

    aws: AwsInventory = Field(default_factory=AwsInventory)
    databases: dict[Name, DatabaseEntry] = Field(default_factory=dict)
    redis: dict[Name, RedisEntry] = Field(default_factory=dict)
    probes: ProbesInventory = Field(default_factory=ProbesInventory)
    prometheus: dict[Name, PrometheusEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cache_groups_differ(self) -> ServicesInventory:
        for name, cache in self.aws.elasticache.items():
            if (
                cache.emergency
                and cache.emergency.replication_group_id == cache.replication_group_id
            ):
                raise LocatedError(
                    "the emergency replication group must be another group",
                    ("aws", "elasticache", name, "emergency", "replication_group_id"),
                )
        return self

    def section(self, kind: str) -> Mapping[str, _Model] | None:
        """The entries a target of ``kind`` is chosen among; None for a kind not here."""
        sections: dict[str, Mapping[str, _Model]] = {
            "TargetGroup": self.aws.target_groups,
            "Instances": self.aws.instances,
            "RdsInstance": self.aws.rds,
            "CacheGroup": self.aws.elasticache,
            "Distribution": self.aws.cloudfront,
            "Database": self.databases,
            "Redis": self.redis,
            "HttpProbe": self.probes.http,
            "CdnAssets": self.probes.cdn,
            "DnsNames": self.probes.dns,
            "Prometheus": self.prometheus,
        }
        return sections.get(kind)

    def entry(self, kind: str, name: str) -> _Model | None:
        """The entry of the ``kind`` target named ``name``, for an action to read."""
        section = self.section(kind)
        return None if section is None else section.get(name)


SERVICE_MODELS: Final = (
    AwsInventory,
    TargetGroupEntry,
    InstancesEntry,
    RdsEntry,
    EmergencyCache,
    CacheEntry,
    DistributionEntry,
    DatabaseEntry,
    RedisEntry,
    HttpProbeEntry,
    CdnAssetsEntry,
    DnsNamesEntry,
    PrometheusEntry,
    ProbesInventory,
)
"""For error messages that name the model a wrong field belongs to."""
