"""The AWS read-only actions on CloudWatch metrics (registered by ``aws_catalogue``):

- ``aws.cache_memory`` (CacheGroup): ``BytesUsedForCache`` (namespace ``AWS/ElastiCache``,
  dimension ``CacheClusterId``) of each cache cluster of the group (the group's
  ``MemberClusters`` from DescribeReplicationGroups; at most ``MAX_CLUSTERS``).
- ``aws.rds_connections`` (RdsInstance): ``DatabaseConnections`` (``AWS/RDS``,
  ``DBInstanceIdentifier``).

Both read the last hour in 5-minute buckets (GetMetricStatistics, Average and Maximum). The
hour ends at the end of the current bucket, so every call within one bucket sends the same
request (the plan is the request sent) and the bucket in progress is included. The result
has each bucket (oldest first), the latest average and the hour's maximum; a metric with no
datapoints says so (``datapoints: []``): CloudWatch has none for a stopped resource or a
wrong identifier, which is not an error. A read has no effect: ``check`` finds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Final

from actions.aws_client import (
    AwsClients,
    Clock,
    NoParams,
    aws_request,
    entry_of,
    json_map,
    utc_now,
    window,
)
from actions.aws_reads import rds_identifier
from actions.catalogue import Outcome
from actions.inventory_services import CacheEntry, ServicesInventory
from schemas.actions import ApiRequest, Target

SPAN: Final = timedelta(hours=1)
PERIOD: Final = timedelta(minutes=5)
STATISTICS: Final = ("Average", "Maximum")
MAX_CLUSTERS: Final = 20


def series(datapoints: Sequence[Any]) -> dict[str, Any]:
    """Buckets oldest first, the latest average and the maximum over all of them."""
    points = sorted(datapoints, key=lambda p: p["Timestamp"])
    buckets = [
        {"time": p["Timestamp"], "average": p.get("Average"), "maximum": p.get("Maximum")}
        for p in points
    ]
    maxima = [b["maximum"] for b in buckets if b["maximum"] is not None]
    return json_map(
        {
            "datapoints": buckets,
            "latest_average": buckets[-1]["average"] if buckets else None,
            "maximum": max(maxima) if maxima else None,
            "unit": points[-1].get("Unit") if points else None,
        }
    )


class AwsMetrics:
    """cache_memory and rds_connections, on clients from CLIENTS, targets from INVENTORY."""

    def __init__(
        self, clients: AwsClients, inventory: ServicesInventory, clock: Clock = utc_now
    ) -> None:
        self.clients = clients
        self.inventory = inventory
        self.clock = clock

    def _query(self, namespace: str, metric: str, dimension: str, value: str) -> dict[str, Any]:
        start, end = window(self.clock, SPAN, PERIOD)
        return {
            "Namespace": namespace,
            "MetricName": metric,
            "Dimensions": [{"Name": dimension, "Value": value}],
            "StartTime": start,
            "EndTime": end,
            "Period": int(PERIOD.total_seconds()),
            "Statistics": list(STATISTICS),
        }

    async def _statistics(self, queries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        results = []
        async with self.clients.cloudwatch() as cloudwatch:
            for query in queries:
                found = await cloudwatch.get_metric_statistics(**query)
                results.append(series(found.get("Datapoints", [])))
        return results

    def _frame(self, query: dict[str, Any]) -> dict[str, Any]:
        return json_map(
            {
                "namespace": query["Namespace"],
                "metric": query["MetricName"],
                "start": query["StartTime"],
                "end": query["EndTime"],
                "period_seconds": query["Period"],
            }
        )

    # cache_memory

    async def _clusters(self, target: Target) -> tuple[str, list[str], bool]:
        group_id = entry_of(self.inventory, target, "CacheGroup", CacheEntry).replication_group_id
        async with self.clients.elasticache() as cache:
            found = await cache.describe_replication_groups(ReplicationGroupId=group_id)
        members = list(found["ReplicationGroups"][0].get("MemberClusters") or [])
        return group_id, members[:MAX_CLUSTERS], len(members) > MAX_CLUSTERS

    def _memory_query(self, cluster: str) -> dict[str, Any]:
        return self._query("AWS/ElastiCache", "BytesUsedForCache", "CacheClusterId", cluster)

    async def plan_cache_memory(self, target: Target, params: NoParams) -> tuple[ApiRequest, ...]:
        group_id, clusters, _ = await self._clusters(target)
        describe = {"ReplicationGroupId": group_id}
        return (
            aws_request("elasticache", "DescribeReplicationGroups", describe),
            *(
                aws_request("cloudwatch", "GetMetricStatistics", self._memory_query(c))
                for c in clusters
            ),
        )

    async def cache_memory(self, target: Target, params: NoParams, token: int) -> Outcome:
        group_id, clusters, truncated = await self._clusters(target)
        queries = [self._memory_query(c) for c in clusters]
        results = await self._statistics(queries)
        peaks = [r["maximum"] for r in results if r["maximum"] is not None]
        return {
            "replication_group_id": group_id,
            **self._frame(queries[0] if queries else self._memory_query("")),
            "clusters": [{"cluster": c, **r} for c, r in zip(clusters, results, strict=True)],
            "maximum_bytes": max(peaks) if peaks else None,
            "truncated": truncated,
        }

    # rds_connections

    def _connections_query(self, target: Target) -> dict[str, Any]:
        ident = rds_identifier(self.inventory, target)
        return self._query("AWS/RDS", "DatabaseConnections", "DBInstanceIdentifier", ident)

    async def plan_rds_connections(
        self, target: Target, params: NoParams
    ) -> tuple[ApiRequest, ...]:
        query = self._connections_query(target)
        return (aws_request("cloudwatch", "GetMetricStatistics", query),)

    async def rds_connections(self, target: Target, params: NoParams, token: int) -> Outcome:
        query = self._connections_query(target)
        (result,) = await self._statistics([query])
        ident = query["Dimensions"][0]["Value"]
        return {"identifier": ident, **self._frame(query), **result}
