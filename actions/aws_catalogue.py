"""The catalogue's AWS actions, through aiobotocore: ``aws_catalogue``.

Targets are inventory entries of the ``aws`` section (kinds TargetGroup, Instances,
RdsInstance, CacheGroup, Distribution: a name, no namespace). Clients, the error mapping
(retriable: throttling, 5xx, timeouts, connection errors; not: access denied, not found,
validation) and the requests recorded are in :mod:`actions.aws_client`.

Reads (``check`` finds nothing: a read runs again): ``aws.target_health``,
``aws.instances``, ``aws.rds_describe``, ``aws.elasticache_describe``
(:mod:`actions.aws_reads`); ``aws.cache_memory``, ``aws.rds_connections``
(:mod:`actions.aws_metrics`).

Mutations, each idempotent and with a ``check`` that finds it done after a crash:
``aws.rds_start`` and ``aws.rds_reboot`` (:mod:`actions.aws_rds`; a reboot is destructive, as
the design counts it, so playbooks may only ask for it with approval),
``aws.elasticache_emergency`` (:mod:`actions.aws_cache`), ``aws.cloudfront_invalidate``
(:mod:`actions.aws_cloudfront`).
"""

from __future__ import annotations

from actions.aws_cache import EmergencyCacheGroup
from actions.aws_client import AwsClients, Clock, NoParams, Recorder, no_check, utc_now
from actions.aws_cloudfront import CloudFront, InvalidationParams
from actions.aws_config import AwsConfig
from actions.aws_metrics import AwsMetrics
from actions.aws_rds import Rds, RebootParams
from actions.aws_reads import AwsReads
from actions.catalogue import ActionSpec, Catalogue
from actions.inventory_services import ServicesInventory


def aws_catalogue(
    config: AwsConfig,
    inventory: ServicesInventory,
    cat: Catalogue | None = None,
    *,
    recorder: Recorder | None = None,
    clock: Clock = utc_now,
) -> Catalogue:
    """The AWS actions, registered in CAT (a new one by default). RECORDER, if given, is
    told of every request the actions' clients make (tests, audits)."""
    cat = cat if cat is not None else Catalogue()
    clients = AwsClients(config, recorder=recorder)
    reads = AwsReads(clients, inventory)
    metrics = AwsMetrics(clients, inventory, clock)
    rds = Rds(clients, inventory, clock)
    cache = EmergencyCacheGroup(clients, inventory)
    cdn = CloudFront(clients, inventory)
    specs: list[ActionSpec[NoParams] | ActionSpec[RebootParams] | ActionSpec[InvalidationParams]]
    specs = [
        ActionSpec(
            name="aws.target_health",
            params=NoParams,
            risk="read_only",
            target_kind="TargetGroup",
            plan=reads.plan_target_health,
            execute=reads.target_health,
            check=no_check,
            description="an ELBv2 target group's targets: healthy, unhealthy, and why",
        ),
        ActionSpec(
            name="aws.instances",
            params=NoParams,
            risk="read_only",
            target_kind="Instances",
            plan=reads.plan_instances,
            execute=reads.instances,
            check=no_check,
            description="EC2 instances with the entry's tags: state, type, zone, launch time",
        ),
        ActionSpec(
            name="aws.rds_describe",
            params=NoParams,
            risk="read_only",
            target_kind="RdsInstance",
            plan=reads.plan_rds,
            execute=reads.rds_describe,
            check=no_check,
            description="an RDS instance: status, class, Multi-AZ, endpoint, storage",
        ),
        ActionSpec(
            name="aws.rds_start",
            params=NoParams,
            risk="mutating",
            target_kind="RdsInstance",
            plan=rds.plan_start,
            execute=rds.start,
            check=rds.started,
            description="start a stopped RDS instance (any other status: said so, a success)",
        ),
        ActionSpec(
            name="aws.rds_reboot",
            params=RebootParams,
            risk="destructive",
            target_kind="RdsInstance",
            plan=rds.plan_reboot,
            execute=rds.reboot,
            check=rds.rebooted,
            description="reboot an RDS instance, at most once; force_failover if the "
            "inventory allows it",
        ),
        ActionSpec(
            name="aws.elasticache_describe",
            params=NoParams,
            risk="read_only",
            target_kind="CacheGroup",
            plan=reads.plan_cache,
            execute=reads.elasticache_describe,
            check=no_check,
            description="an ElastiCache replication group: status, nodes, roles, endpoints",
        ),
        ActionSpec(
            name="aws.elasticache_emergency",
            params=NoParams,
            risk="mutating",
            target_kind="CacheGroup",
            plan=cache.plan,
            execute=cache.create,
            check=cache.created,
            description="create the inventory's emergency replication group beside a cache",
        ),
        ActionSpec(
            name="aws.cloudfront_invalidate",
            params=InvalidationParams,
            risk="mutating",
            target_kind="Distribution",
            plan=cdn.plan,
            execute=cdn.invalidate,
            check=cdn.invalidated,
            description="invalidate paths the inventory allows on a CloudFront distribution, "
            "once per action",
        ),
        ActionSpec(
            name="aws.cache_memory",
            params=NoParams,
            risk="read_only",
            target_kind="CacheGroup",
            plan=metrics.plan_cache_memory,
            execute=metrics.cache_memory,
            check=no_check,
            description="BytesUsedForCache of each cluster of a cache group, the last hour",
        ),
        ActionSpec(
            name="aws.rds_connections",
            params=NoParams,
            risk="read_only",
            target_kind="RdsInstance",
            plan=metrics.plan_rds_connections,
            execute=metrics.rds_connections,
            check=no_check,
            description="DatabaseConnections of an RDS instance, the last hour",
        ),
    ]
    for spec in specs:
        cat.register(spec)
    return cat


__all__ = ["InvalidationParams", "RebootParams", "aws_catalogue"]
