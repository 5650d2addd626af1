"""``aws.elasticache_emergency`` (CacheGroup; mutating, meant for mode ``approve``), registered
by ``aws_catalogue``: CreateReplicationGroup of the entry's ``emergency`` group (its id, engine,
node type and number of cache clusters; automatic failover when it has more than one). A
cache entry without ``emergency`` is refused.

Placement: the new group is put where the entry's group is, so the application can reach
it: the cache subnet group and VPC security groups of the group's first member cluster
(DescribeCacheClusters), and its transit and at-rest encryption when on. The group's AUTH
token is a secret and is not copied. When the entry's group or its member cannot be found
(gone in the incident), the emergency group is created without them (the account's default
placement) and the result says so. Tags name the group it stands in for and the action.

Idempotent by the group id: ``execute`` reads the emergency group first, and one that exists
(made by an earlier attempt, or already there) is a success with ``created: false``; a
``ReplicationGroupAlreadyExists`` answer (made meanwhile) is the same; one being deleted is
retriable (created once gone). ``plan`` is the
CreateReplicationGroup request, or nothing when the group exists. ``check``:
DescribeReplicationGroups of the emergency id finds it (not being deleted).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import ClientError

from actions.aws_client import (
    AwsClients,
    NoParams,
    action_id,
    aws_request,
    entry_of,
)
from actions.aws_errors import AwsRefused, AwsUnavailable, error_code
from actions.aws_reads import group_summary
from actions.catalogue import Outcome
from actions.inventory_services import CacheEntry, EmergencyCache, ServicesInventory
from schemas.actions import ApiRequest, Target

if TYPE_CHECKING:
    from types_aiobotocore_elasticache.client import ElastiCacheClient

EMERGENCY_FOR_TAG: Final = "sevpipe:emergency-for"
ACTION_TAG: Final = "sevpipe:action"


def _absent(exc: ClientError, prefix: str) -> bool:
    return error_code(exc).startswith(prefix)


class EmergencyCacheGroup:
    """elasticache_emergency, on clients from CLIENTS, targets from INVENTORY."""

    def __init__(self, clients: AwsClients, inventory: ServicesInventory) -> None:
        self.clients = clients
        self.inventory = inventory

    def _entry(self, target: Target) -> tuple[CacheEntry, EmergencyCache]:
        entry = entry_of(self.inventory, target, "CacheGroup", CacheEntry)
        if entry.emergency is None:
            raise AwsRefused(
                f"cache group {target.name} has no emergency group in the inventory: refused"
            )
        return entry, entry.emergency

    async def _group(self, cache: ElastiCacheClient, group_id: str) -> dict[str, Any] | None:
        try:
            found = await cache.describe_replication_groups(ReplicationGroupId=group_id)
        except ClientError as exc:
            if _absent(exc, "ReplicationGroupNotFound"):
                return None
            raise
        return dict(found["ReplicationGroups"][0])

    async def _placement(self, cache: ElastiCacheClient, group_id: str) -> dict[str, Any]:
        """Where the entry's group is (see the module doc); empty when it cannot be found."""
        group = await self._group(cache, group_id)
        if group is None:
            return {}
        placement: dict[str, Any] = {}
        for flag in ("TransitEncryptionEnabled", "AtRestEncryptionEnabled"):
            if group.get(flag):
                placement[flag] = True
        members = group.get("MemberClusters") or []
        if not members:
            return placement
        try:
            found = await cache.describe_cache_clusters(CacheClusterId=members[0])
        except ClientError as exc:
            if _absent(exc, "CacheClusterNotFound"):
                return placement
            raise
        member = found["CacheClusters"][0]
        if member.get("CacheSubnetGroupName"):
            placement["CacheSubnetGroupName"] = member["CacheSubnetGroupName"]
        groups = [g["SecurityGroupId"] for g in member.get("SecurityGroups") or []]
        if groups:
            placement["SecurityGroupIds"] = groups
        return placement

    async def _create_request(
        self, cache: ElastiCacheClient, entry: CacheEntry, emergency: EmergencyCache
    ) -> dict[str, Any]:
        tags = [{"Key": EMERGENCY_FOR_TAG, "Value": entry.replication_group_id}]
        if (ident := action_id()) is not None:
            tags.append({"Key": ACTION_TAG, "Value": ident})
        return {
            "ReplicationGroupId": emergency.replication_group_id,
            "ReplicationGroupDescription": (
                f"sevpipe emergency group for {entry.replication_group_id}"
            ),
            "Engine": emergency.engine,
            "CacheNodeType": emergency.node_type,
            "NumCacheClusters": emergency.num_cache_clusters,
            "AutomaticFailoverEnabled": emergency.num_cache_clusters > 1,
            **await self._placement(cache, entry.replication_group_id),
            "Tags": tags,
        }

    async def plan(self, target: Target, params: NoParams) -> tuple[ApiRequest, ...]:
        entry, emergency = self._entry(target)
        async with self.clients.elasticache() as cache:
            if await self._group(cache, emergency.replication_group_id) is not None:
                return ()
            request = await self._create_request(cache, entry, emergency)
        return (aws_request("elasticache", "CreateReplicationGroup", request),)

    async def create(self, target: Target, params: NoParams, token: int) -> Outcome:
        entry, emergency = self._entry(target)
        group_id = emergency.replication_group_id
        async with self.clients.elasticache(once=True) as cache:
            existing = await self._group(cache, group_id)
            if existing is not None and existing.get("Status") == "deleting":
                raise AwsUnavailable(f"elasticache {group_id} is being deleted: created once gone")
            if existing is not None:
                return _existing(existing, entry)
            request = await self._create_request(cache, entry, emergency)
            try:
                done = await cache.create_replication_group(**request)
            except ClientError as exc:
                if not _absent(exc, "ReplicationGroupAlreadyExists"):
                    raise
                existing = await self._group(cache, group_id)
                if existing is None:
                    raise
                return _existing(existing, entry)
        placed = ("CacheSubnetGroupName", "SecurityGroupIds")
        return {
            **group_summary(done["ReplicationGroup"]),
            "created": True,
            "emergency_for": entry.replication_group_id,
            "placement": (
                "the group's subnet group and security groups"
                if any(k in request for k in placed)
                else "the account's default: the group's placement could not be read"
            ),
            "request": aws_request("elasticache", "CreateReplicationGroup", request).model_dump(
                mode="json"
            ),
        }

    async def created(self, target: Target, params: NoParams) -> Outcome | None:
        entry, emergency = self._entry(target)
        async with self.clients.elasticache() as cache:
            group = await self._group(cache, emergency.replication_group_id)
        if group is None or group.get("Status") == "deleting":
            return None
        return {**group_summary(group), "emergency_for": entry.replication_group_id}


def _existing(group: Mapping[str, Any], entry: CacheEntry) -> dict[str, Any]:
    return {
        **group_summary(group),
        "created": False,
        "emergency_for": entry.replication_group_id,
        "reason": "the emergency group exists already",
    }
