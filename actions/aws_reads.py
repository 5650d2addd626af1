"""The AWS read-only actions (registered by ``aws_catalogue``). Each ``plan`` is the request
its ``execute`` sends; a read has no effect, so ``check`` finds nothing and it runs again.

- ``aws.target_health`` (TargetGroup): ELBv2 DescribeTargetHealth of the entry's ARN: counts
  by state (``healthy``, ``unhealthy``, ``other``: initial, draining, unused, unavailable)
  and each target with its state, reason and description (at most ``MAX_TARGETS``).
- ``aws.instances`` (Instances): EC2 DescribeInstances of the instances with all the entry's
  tags, page by page (``PAGE_SIZE``), at most ``MAX_INSTANCES`` (``truncated`` says when
  more): each one's state, type, availability zone, launch time, private address.
- ``aws.rds_describe`` (RdsInstance): DescribeDBInstances of the entry's identifier.
- ``aws.elasticache_describe`` (CacheGroup): DescribeReplicationGroups of the entry's group.
"""

from __future__ import annotations

from typing import Any, Final

from actions.aws_client import AwsClients, NoParams, aws_request, entry_of, json_map
from actions.catalogue import Outcome
from actions.inventory_services import (
    CacheEntry,
    InstancesEntry,
    RdsEntry,
    ServicesInventory,
    TargetGroupEntry,
)
from schemas.actions import ApiRequest, Target

MAX_TARGETS: Final = 200
MAX_INSTANCES: Final = 200
PAGE_SIZE: Final = 100


def rds_identifier(inventory: ServicesInventory, target: Target) -> str:
    entry = entry_of(inventory, target, "RdsInstance", RdsEntry)
    return entry.identifier or target.name


def db_summary(db: Any) -> dict[str, Any]:
    """What a person reads first of a DescribeDBInstances entry."""
    endpoint = db.get("Endpoint") or {}
    return json_map(
        {
            "identifier": db.get("DBInstanceIdentifier"),
            "status": db.get("DBInstanceStatus"),
            "class": db.get("DBInstanceClass"),
            "engine": db.get("Engine"),
            "engine_version": db.get("EngineVersion"),
            "multi_az": db.get("MultiAZ"),
            "availability_zone": db.get("AvailabilityZone"),
            "secondary_availability_zone": db.get("SecondaryAvailabilityZone"),
            "endpoint": {"address": endpoint.get("Address"), "port": endpoint.get("Port")},
            "storage": {
                "allocated_gb": db.get("AllocatedStorage"),
                "type": db.get("StorageType"),
                "iops": db.get("Iops"),
            },
            "pending_modified_values": db.get("PendingModifiedValues") or {},
            "read_replicas": db.get("ReadReplicaDBInstanceIdentifiers") or [],
            "created": db.get("InstanceCreateTime"),
            "arn": db.get("DBInstanceArn"),
        }
    )


def group_summary(group: Any) -> dict[str, Any]:
    """What a person reads first of a DescribeReplicationGroups entry."""
    node_groups = []
    for ng in group.get("NodeGroups") or []:
        primary = ng.get("PrimaryEndpoint") or {}
        node_groups.append(
            {
                "id": ng.get("NodeGroupId"),
                "status": ng.get("Status"),
                "primary_endpoint": primary.get("Address"),
                "members": [
                    {
                        "cluster": m.get("CacheClusterId"),
                        "role": m.get("CurrentRole"),
                        "availability_zone": m.get("PreferredAvailabilityZone"),
                    }
                    for m in ng.get("NodeGroupMembers") or []
                ],
            }
        )
    return json_map(
        {
            "replication_group_id": group.get("ReplicationGroupId"),
            "status": group.get("Status"),
            "description": group.get("Description"),
            "engine": group.get("Engine"),
            "node_type": group.get("CacheNodeType"),
            "cluster_enabled": group.get("ClusterEnabled"),
            "automatic_failover": group.get("AutomaticFailover"),
            "multi_az": group.get("MultiAZ"),
            "member_clusters": group.get("MemberClusters") or [],
            "node_groups": node_groups,
            "pending_modified_values": group.get("PendingModifiedValues") or {},
            "created": group.get("ReplicationGroupCreateTime"),
        }
    )


class AwsReads:
    """The read-only actions, on clients from CLIENTS, targets from INVENTORY."""

    def __init__(self, clients: AwsClients, inventory: ServicesInventory) -> None:
        self.clients = clients
        self.inventory = inventory

    # target_health

    def _health_params(self, target: Target) -> dict[str, Any]:
        entry = entry_of(self.inventory, target, "TargetGroup", TargetGroupEntry)
        return {"TargetGroupArn": entry.arn}

    async def plan_target_health(self, target: Target, params: NoParams) -> tuple[ApiRequest, ...]:
        return (aws_request("elbv2", "DescribeTargetHealth", self._health_params(target)),)

    async def target_health(self, target: Target, params: NoParams, token: int) -> Outcome:
        request = self._health_params(target)
        async with self.clients.elbv2() as elb:
            found = await elb.describe_target_health(**request)
        counts = {"healthy": 0, "unhealthy": 0, "other": 0}
        by_state: dict[str, int] = {}
        targets = []
        for desc in found.get("TargetHealthDescriptions", []):
            health = desc.get("TargetHealth") or {}
            state = health.get("State") or "unknown"
            by_state[state] = by_state.get(state, 0) + 1
            counts[state if state in ("healthy", "unhealthy") else "other"] += 1
            who: dict[str, Any] = dict(desc.get("Target") or {})
            targets.append(
                {
                    "id": who.get("Id"),
                    "port": who.get("Port"),
                    "availability_zone": who.get("AvailabilityZone"),
                    "state": state,
                    "reason": health.get("Reason"),
                    "description": health.get("Description"),
                }
            )
        return {
            "target_group": target.name,
            "arn": request["TargetGroupArn"],
            **counts,
            "total": len(targets),
            "by_state": by_state,
            "all_healthy": bool(targets) and counts["healthy"] == len(targets),
            "targets": targets[:MAX_TARGETS],
            "truncated": len(targets) > MAX_TARGETS,
        }

    # instances

    def _instances_params(self, target: Target) -> dict[str, Any]:
        entry = entry_of(self.inventory, target, "Instances", InstancesEntry)
        filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in sorted(entry.tags.items())]
        return {"Filters": filters, "MaxResults": PAGE_SIZE}

    async def plan_instances(self, target: Target, params: NoParams) -> tuple[ApiRequest, ...]:
        """The first page; the next ones add the NextToken of the one before."""
        return (aws_request("ec2", "DescribeInstances", self._instances_params(target)),)

    async def instances(self, target: Target, params: NoParams, token: int) -> Outcome:
        request = self._instances_params(target)
        found: list[dict[str, Any]] = []
        more = False
        async with self.clients.ec2() as ec2:
            paged = dict(request)
            while True:
                page = await ec2.describe_instances(**paged)
                for reservation in page.get("Reservations", []):
                    found.extend(_instance(i) for i in reservation.get("Instances", []))
                next_token = page.get("NextToken")
                if not next_token or len(found) >= MAX_INSTANCES:
                    more = bool(next_token) or len(found) > MAX_INSTANCES
                    break
                paged["NextToken"] = next_token
        by_state: dict[str, int] = {}
        for inst in found[:MAX_INSTANCES]:
            by_state[inst["state"]] = by_state.get(inst["state"], 0) + 1
        return {
            "instances_of": target.name,
            "tags": {f["Name"].removeprefix("tag:"): f["Values"][0] for f in request["Filters"]},
            "count": min(len(found), MAX_INSTANCES),
            "by_state": by_state,
            "instances": found[:MAX_INSTANCES],
            "truncated": more,
        }

    # rds_describe

    async def plan_rds(self, target: Target, params: NoParams) -> tuple[ApiRequest, ...]:
        ident = rds_identifier(self.inventory, target)
        return (aws_request("rds", "DescribeDBInstances", {"DBInstanceIdentifier": ident}),)

    async def rds_describe(self, target: Target, params: NoParams, token: int) -> Outcome:
        ident = rds_identifier(self.inventory, target)
        async with self.clients.rds() as rds:
            found = await rds.describe_db_instances(DBInstanceIdentifier=ident)
        return db_summary(found["DBInstances"][0])

    # elasticache_describe

    def _group_id(self, target: Target) -> str:
        return entry_of(self.inventory, target, "CacheGroup", CacheEntry).replication_group_id

    async def plan_cache(self, target: Target, params: NoParams) -> tuple[ApiRequest, ...]:
        request = {"ReplicationGroupId": self._group_id(target)}
        return (aws_request("elasticache", "DescribeReplicationGroups", request),)

    async def elasticache_describe(self, target: Target, params: NoParams, token: int) -> Outcome:
        group_id = self._group_id(target)
        async with self.clients.elasticache() as cache:
            found = await cache.describe_replication_groups(ReplicationGroupId=group_id)
        return group_summary(found["ReplicationGroups"][0])


def _instance(inst: Any) -> dict[str, Any]:
    placement = inst.get("Placement") or {}
    return json_map(
        {
            "id": inst.get("InstanceId"),
            "state": (inst.get("State") or {}).get("Name") or "unknown",
            "state_reason": (inst.get("StateReason") or {}).get("Message"),
            "type": inst.get("InstanceType"),
            "availability_zone": placement.get("AvailabilityZone"),
            "launch_time": inst.get("LaunchTime"),
            "private_ip": inst.get("PrivateIpAddress"),
            "name": next(
                (t.get("Value") for t in inst.get("Tags") or [] if t.get("Key") == "Name"), None
            ),
        }
    )
