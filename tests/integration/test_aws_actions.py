"""The catalogue's AWS actions against a real moto server (``moto_server``, a subprocess): each
plan is the request its execute sends (recorded at the client), execute acts, check finds a
done action and not an undone one, and what reached the server is read back from moto's own
recording where moto differs from AWS (TESTING.md):

- CloudFront does not deduplicate CallerReference in moto: a retried or crashed-and-checked
  invalidation is still ONE invalidation (ListInvalidations and the CreateInvalidation
  requests the server received);
- RDS reboots leave no event and no ``rebooting`` status in moto: the reboot's check is seen
  to look (DescribeEvents since the action began, only under its own mark); its decision on
  events and status is unit-tested (tests/unit/test_aws_client.py);
- EC2 DescribeInstances ignores MaxResults in moto: the cap is tested here, the paging in
  the unit tests;
- AccessDenied comes from a second moto server with IAM enforced (``/moto-api/reset-auth``),
  and reaches it once: not retried; throttling, 503 and read timeouts come from a proxy in
  front of moto and are retried by botocore up to ``max_attempts``, then retriable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aws_support import Fault, MotoServer, create_distribution, fault_proxy, start_moto
from services import unique_name

from actions import aws_reads
from actions.aws_catalogue import aws_catalogue
from actions.aws_client import AwsClients
from actions.aws_config import AwsConfig
from actions.aws_errors import AwsDenied, AwsRefused, AwsUnavailable
from actions.aws_rds import REBOOT_TAG
from actions.catalogue import ACTION_ID, ActionSpec, Catalogue
from actions.inventory import Inventory
from runtime.effects import perform
from schemas.actions import ApiRequest, Target
from schemas.envelope import new_event_id
from store.effects_embedded import EmbeddedEffectsLedger

MUTATIONS = ("Create", "Start", "Reboot", "AddTags", "Stop", "Modify", "Delete")


@contextlib.contextmanager
def acting(action_id: str) -> Iterator[str]:
    """Run as the stage runs an action: its id in ACTION_ID."""
    token = ACTION_ID.set(action_id)
    try:
        yield action_id
    finally:
        ACTION_ID.reset(token)


class Setup:
    """The actions' catalogue on one server, every request its clients make recorded."""

    def __init__(self, config: AwsConfig, inventory: dict[str, Any]) -> None:
        self.sent: list[ApiRequest] = []
        self.inventory = Inventory.model_validate({"aws": inventory})
        self.catalogue: Catalogue = aws_catalogue(config, self.inventory, recorder=self.sent.append)
        self.admin = AwsClients(config)

    def spec(self, name: str) -> ActionSpec[Any]:
        return self.catalogue.get(name)

    def mutations(self) -> list[ApiRequest]:
        return [r for r in self.sent if r.method.startswith(MUTATIONS)]


def params_of(spec: ActionSpec[Any], **values: Any) -> Any:
    return spec.params.model_validate(values)


async def create_db(admin: AwsClients, ident: str, *, multi_az: bool = True) -> str:
    async with admin.rds() as rds:
        made = await rds.create_db_instance(
            DBInstanceIdentifier=ident,
            DBInstanceClass="db.t3.micro",
            Engine="postgres",
            MasterUsername="origin",
            MasterUserPassword="not-a-secret-1",
            AllocatedStorage=20,
            MultiAZ=multi_az,
        )
    return made["DBInstance"]["DBInstanceArn"]


async def test_catalogue_names_kinds_and_risks() -> None:
    config = AwsConfig(endpoint_url="http://127.0.0.1:9", access_key_id="k", secret_access_key="s")
    cat = aws_catalogue(config, Inventory())  # makes no request at registration
    kinds = {name: (cat.get(name).target_kind, cat.get(name).risk) for name in cat.names()}
    assert kinds == {
        "aws.target_health": ("TargetGroup", "read_only"),
        "aws.instances": ("Instances", "read_only"),
        "aws.rds_describe": ("RdsInstance", "read_only"),
        "aws.rds_start": ("RdsInstance", "mutating"),
        "aws.rds_reboot": ("RdsInstance", "destructive"),
        "aws.elasticache_describe": ("CacheGroup", "read_only"),
        "aws.elasticache_emergency": ("CacheGroup", "mutating"),
        "aws.cloudfront_invalidate": ("Distribution", "mutating"),
        "aws.cache_memory": ("CacheGroup", "read_only"),
        "aws.rds_connections": ("RdsInstance", "read_only"),
    }
    target = Target(kind="RdsInstance", name="absent")
    with pytest.raises(AwsRefused, match="not in the inventory") as refused:
        await cat.get("aws.rds_describe").plan(target, params_of(cat.get("aws.rds_describe")))
    assert refused.value.retriable is False


async def test_target_health_counts_and_reasons(moto_server: MotoServer) -> None:
    admin = AwsClients(moto_server.config())
    async with admin.ec2() as ec2, admin.elbv2() as elb:
        vpc = (await ec2.create_vpc(CidrBlock="10.0.0.0/16"))["Vpc"]["VpcId"]
        run = await ec2.run_instances(ImageId="ami-12c6146b", MinCount=2, MaxCount=2)
        ids = sorted(i["InstanceId"] for i in run["Instances"])
        group = await elb.create_target_group(
            Name=unique_name("tg")[:32], Protocol="HTTP", Port=80, VpcId=vpc
        )
        arn = group["TargetGroups"][0]["TargetGroupArn"]
        await elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": i} for i in ids])
        await ec2.stop_instances(InstanceIds=ids[:1])
    setup = Setup(moto_server.config(), {"target_groups": {"origin-web": {"arn": arn}}})
    spec = setup.spec("aws.target_health")
    target, params = Target(kind="TargetGroup", name="origin-web"), params_of(spec)

    planned = await spec.plan(target, params)
    assert planned == (
        ApiRequest(
            method="DescribeTargetHealth",
            path="elbv2:DescribeTargetHealth",
            body={"TargetGroupArn": arn},
        ),
    )
    outcome = await spec.execute(target, params, 1)
    assert setup.sent == list(planned)
    assert (outcome["healthy"], outcome["unhealthy"], outcome["other"]) == (1, 0, 1)
    assert outcome["all_healthy"] is False
    assert outcome["by_state"] == {"healthy": 1, "unused": 1}
    stopped = next(t for t in outcome["targets"] if t["id"] == ids[0])
    assert (stopped["state"], stopped["reason"]) == ("unused", "Target.InvalidState")
    assert await spec.check(target, params) is None  # a read: runs again after a crash
    json.dumps(outcome)


async def test_instances_by_tag_capped(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = unique_name("origin")
    admin = AwsClients(moto_server.config())

    def tagged(env: str) -> list[Any]:
        tags = [{"Key": "app", "Value": app}, {"Key": "env", "Value": env}]
        return [{"ResourceType": "instance", "Tags": tags}]

    async with admin.ec2() as ec2:
        await ec2.run_instances(
            ImageId="ami-12c6146b",
            MinCount=3,
            MaxCount=3,
            InstanceType="t3.small",
            TagSpecifications=tagged("prod"),
        )
        await ec2.run_instances(
            ImageId="ami-12c6146b",
            MinCount=1,
            MaxCount=1,
            TagSpecifications=tagged("staging"),
        )
    setup = Setup(
        moto_server.config(), {"instances": {"origin-web": {"tags": {"env": "prod", "app": app}}}}
    )
    spec = setup.spec("aws.instances")
    target, params = Target(kind="Instances", name="origin-web"), params_of(spec)
    planned = await spec.plan(target, params)
    assert planned[0].body == {
        "Filters": [
            {"Name": "tag:app", "Values": [app]},
            {"Name": "tag:env", "Values": ["prod"]},
        ],
        "MaxResults": aws_reads.PAGE_SIZE,
    }
    outcome = await spec.execute(target, params, 1)
    assert setup.sent == list(planned)
    assert outcome["count"] == 3
    assert outcome["by_state"] == {"running": 3}
    assert outcome["truncated"] is False
    assert {i["type"] for i in outcome["instances"]} == {"t3.small"}
    assert all(i["availability_zone"] and i["launch_time"] for i in outcome["instances"])

    monkeypatch.setattr(aws_reads, "MAX_INSTANCES", 2)
    capped = await spec.execute(target, params, 1)
    assert (capped["count"], len(capped["instances"]), capped["truncated"]) == (2, 2, True)


async def test_rds_describe_and_start(moto_server: MotoServer) -> None:
    ident = unique_name("origin-db")
    setup = Setup(moto_server.config(), {"rds": {"origin-db": {"identifier": ident}}})
    await create_db(setup.admin, ident)
    target = Target(kind="RdsInstance", name="origin-db")
    describe = setup.spec("aws.rds_describe")
    shown = await describe.execute(target, params_of(describe), 1)
    assert (shown["identifier"], shown["status"], shown["multi_az"]) == (ident, "available", True)
    assert shown["class"] == "db.t3.micro"
    assert shown["endpoint"]["port"] == 5432

    start = setup.spec("aws.rds_start")
    params = params_of(start)
    assert await start.plan(target, params) == ()  # available: nothing would be sent
    async with setup.admin.rds() as rds:
        await rds.stop_db_instance(DBInstanceIdentifier=ident)
    assert await start.check(target, params) is None  # stopped: not done
    planned = await start.plan(target, params)
    assert planned == (
        ApiRequest(
            method="StartDBInstance",
            path="rds:StartDBInstance",
            body={"DBInstanceIdentifier": ident},
        ),
    )
    moto_server.reset_recording()
    setup.sent.clear()
    outcome = await start.execute(target, params, 1)
    assert setup.mutations() == list(planned)
    assert outcome["started"] is True
    assert outcome["previous_status"] == "stopped"
    assert await start.check(target, params) == {"identifier": ident, "status": "available"}

    again = await start.execute(target, params, 2)  # a retry: not stopped, nothing sent
    assert again["started"] is False
    assert "not stopped" in again["reason"]
    assert moto_server.operations("rds").count("StartDBInstance") == 1


async def test_rds_reboot_marks_then_reboots_once(moto_server: MotoServer) -> None:
    ident = unique_name("origin-db")
    inventory = {
        "rds": {
            "single": {"identifier": ident},
            "multi": {"identifier": ident, "failover": True},
        }
    }
    setup = Setup(moto_server.config(), inventory)
    arn = await create_db(setup.admin, ident)
    spec = setup.spec("aws.rds_reboot")
    single, multi = (
        Target(kind="RdsInstance", name="single"),
        Target(kind="RdsInstance", name="multi"),
    )
    force = params_of(spec, force_failover=True)

    moto_server.reset_recording()
    with pytest.raises(AwsRefused, match="failover: true") as refused:
        await spec.execute(single, force, 1)
    assert refused.value.retriable is False
    with pytest.raises(AwsRefused, match="failover: true"):
        await spec.plan(single, force)
    assert "RebootDBInstance" not in moto_server.operations("rds")

    with acting(new_event_id()) as action:
        assert await spec.check(multi, force) is None  # no mark of this action: never sent
        planned = await spec.plan(multi, force)
        assert [(r.method, r.body) for r in planned] == [
            (
                "AddTagsToResource",
                {"ResourceName": arn, "Tags": [{"Key": REBOOT_TAG, "Value": action}]},
            ),
            ("RebootDBInstance", {"DBInstanceIdentifier": ident, "ForceFailover": True}),
        ]
        setup.sent.clear()
        moto_server.reset_recording()
        outcome = await spec.execute(multi, force, 1)
        assert setup.mutations() == list(planned)
        assert outcome["rebooted"] is True
        assert outcome["mark"] == action
        received = moto_server.received("rds")
        reboots = [r for r in received if r.operation == "RebootDBInstance"]
        assert len(reboots) == 1
        assert reboots[0].params["ForceFailover"] == ["true"]
        assert [r.operation for r in received].index("AddTagsToResource") < received.index(
            reboots[0]
        )
        async with setup.admin.rds() as rds:
            tags = (await rds.list_tags_for_resource(ResourceName=arn))["TagList"]
        assert {"Key": REBOOT_TAG, "Value": action} in tags

        # moto: no reboot event and no "rebooting" status, so the check, under this action's
        # mark, asks RDS for the instance's events since the action began, and finds none.
        moto_server.reset_recording()
        assert await spec.check(multi, force) is None
        events = [r for r in moto_server.received("rds") if r.operation == "DescribeEvents"]
        assert len(events) == 1
        assert events[0].params["SourceIdentifier"] == [ident]
        assert events[0].params["SourceType"] == ["db-instance"]
        since = datetime.fromisoformat(events[0].params["StartTime"][0].replace("Z", "+00:00"))
        assert abs(since - datetime.now(UTC)) < timedelta(minutes=2)

    with acting(new_event_id()):  # another action: the mark is not its own, nothing to look at
        moto_server.reset_recording()
        assert await spec.check(multi, force) is None
        assert "DescribeEvents" not in moto_server.operations("rds")

    async with setup.admin.rds() as rds:
        await rds.stop_db_instance(DBInstanceIdentifier=ident)
    with acting(new_event_id()), pytest.raises(AwsRefused, match="stopped, not available"):
        await spec.execute(multi, params_of(spec), 1)


async def test_elasticache_describe_and_emergency_group(moto_server: MotoServer) -> None:
    primary, emergency = unique_name("cache"), unique_name("cache-emergency")
    subnets = unique_name("subnets")
    inventory = {
        "elasticache": {
            "origin-cache": {
                "replication_group_id": primary,
                "emergency": {
                    "replication_group_id": emergency,
                    "node_type": "cache.r6g.large",
                    "num_cache_clusters": 2,
                },
            },
            "plain": {"replication_group_id": primary},
        }
    }
    setup = Setup(moto_server.config(), inventory)
    async with setup.admin.elasticache() as cache:
        group = await cache.create_replication_group(
            ReplicationGroupId=primary,
            ReplicationGroupDescription="origin",
            Engine="redis",
            CacheNodeType="cache.t3.micro",
            NumCacheClusters=1,
            TransitEncryptionEnabled=True,
        )
        member = group["ReplicationGroup"]["MemberClusters"][0]
        # moto keeps a group's members apart from its cache clusters: make the member's
        # cluster, with its subnet group, as AWS has it.
        await cache.create_cache_subnet_group(
            CacheSubnetGroupName=subnets, CacheSubnetGroupDescription="origin", SubnetIds=[]
        )
        await cache.create_cache_cluster(
            CacheClusterId=member,
            Engine="redis",
            CacheNodeType="cache.t3.micro",
            NumCacheNodes=1,
            CacheSubnetGroupName=subnets,
        )
    target, plain = (
        Target(kind="CacheGroup", name="origin-cache"),
        Target(kind="CacheGroup", name="plain"),
    )

    describe = setup.spec("aws.elasticache_describe")
    shown = await describe.execute(target, params_of(describe), 1)
    assert (shown["replication_group_id"], shown["status"]) == (primary, "available")
    assert shown["member_clusters"] == [member]
    assert shown["node_groups"][0]["members"][0]["role"] == "primary"

    spec = setup.spec("aws.elasticache_emergency")
    params = params_of(spec)
    with pytest.raises(AwsRefused, match="no emergency group") as refused:
        await spec.execute(plain, params, 1)
    assert refused.value.retriable is False

    with acting(new_event_id()) as action:
        assert await spec.check(target, params) is None
        planned = await spec.plan(target, params)
        assert len(planned) == 1
        assert planned[0].method == "CreateReplicationGroup"
        assert planned[0].body == {
            "ReplicationGroupId": emergency,
            "ReplicationGroupDescription": f"sevpipe emergency group for {primary}",
            "Engine": "redis",
            "CacheNodeType": "cache.r6g.large",
            "NumCacheClusters": 2,
            "AutomaticFailoverEnabled": True,
            "TransitEncryptionEnabled": True,
            "CacheSubnetGroupName": subnets,
            "Tags": [
                {"Key": "sevpipe:emergency-for", "Value": primary},
                {"Key": "sevpipe:action", "Value": action},
            ],
        }
        setup.sent.clear()
        moto_server.reset_recording()
        outcome = await spec.execute(target, params, 1)
        assert setup.mutations() == list(planned)
        assert outcome["created"] is True
        assert outcome["replication_group_id"] == emergency
        assert "subnet group" in outcome["placement"]

        again = await spec.execute(target, params, 2)  # a retry: it exists, a success
        assert again["created"] is False
        assert moto_server.operations("elasticache").count("CreateReplicationGroup") == 1
        found = await spec.check(target, params)
        assert found is not None
        assert found["replication_group_id"] == emergency
        assert await spec.plan(target, params) == ()  # nothing left to send


async def test_cloudfront_invalidation_is_one_per_action(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    admin = AwsClients(moto_server.config())
    dist_id = await create_distribution(admin, "origin")
    setup = Setup(
        moto_server.config(),
        {
            "cloudfront": {
                "origin-cdn": {
                    "distribution_id": dist_id,
                    "paths": ["/static/*", "/index.html"],
                    "max_paths": 3,
                }
            }
        },
    )
    spec = setup.spec("aws.cloudfront_invalidate")
    target = Target(kind="Distribution", name="origin-cdn")
    params = params_of(spec, paths=["/static/*", "/index.html", "/static/*"])

    async def invalidations() -> int:
        async with admin.cloudfront() as cf:
            listed = await cf.list_invalidations(DistributionId=dist_id)
        return int(listed["InvalidationList"]["Quantity"])

    with pytest.raises(AwsRefused, match="only under the actions stage"):
        await spec.plan(target, params)
    with acting(new_event_id()):
        with pytest.raises(AwsRefused, match="outside the paths"):
            await spec.execute(target, params_of(spec, paths=["/admin/*"]), 1)
        with pytest.raises(AwsRefused, match="at most 3"):
            await spec.plan(
                target,
                params_of(spec, paths=["/index.html", "/static/a", "/static/b", "/static/c"]),
            )
    assert await invalidations() == 0

    moto_server.reset_recording()
    with acting(new_event_id()) as action:
        assert await spec.check(target, params) is None
        planned = await spec.plan(target, params)
        (request,) = planned
        batch = request.body["InvalidationBatch"]
        assert batch["Paths"] == {"Quantity": 2, "Items": ["/index.html", "/static/*"]}
        assert batch["CallerReference"].startswith(f"sevpipe-{action}-")
        # The same paths in another order are the same invalidation.
        reordered = params_of(spec, paths=["/index.html", "/static/*"])
        assert await spec.plan(target, reordered) == planned

        setup.sent.clear()
        first = await spec.execute(target, params, 1)
        assert setup.mutations() == list(planned)
        assert first["created"] is True
        assert first["paths"] == ["/index.html", "/static/*"]
        # Executed again (a retry that did not check first): the same invalidation.
        second = await spec.execute(target, params, 2)
        assert second["created"] is False
        assert second["invalidation_id"] == first["invalidation_id"]
        found = await spec.check(target, params)
        assert found is not None
        assert found["invalidation_id"] == first["invalidation_id"]
    assert await invalidations() == 1
    assert moto_server.operations("cloudfront").count("CreateInvalidation") == 1

    # Another action, whose holder dies after CreateInvalidation and before recording it:
    # the next holder's claim is Unknown, so it checks, finds it, and sends nothing.
    with acting(new_event_id()):
        assert await spec.check(target, params) is None  # not the first action's invalidation
        async with EmbeddedEffectsLedger(tmp_path / "effects.db") as ledger:
            await ledger.claim("invalidate", holder="dies", lease=0.2)
            created = await spec.execute(target, params, 1)
            await asyncio.sleep(0.3)
            result = await perform(
                ledger,
                "invalidate",
                holder="next",
                lease=60,
                do=lambda token: spec.execute(target, params, token),
                check=lambda: spec.check(target, params),
            )
    assert result.source == "checked"
    assert result.outcome["invalidation_id"] == created["invalidation_id"]
    assert await invalidations() == 2
    assert moto_server.operations("cloudfront").count("CreateInvalidation") == 2


async def test_cache_memory_and_rds_connections(moto_server: MotoServer) -> None:
    group, ident = unique_name("cache"), unique_name("origin-db")
    now = datetime.now(UTC)
    setup = Setup(
        moto_server.config(),
        {
            "elasticache": {"origin-cache": {"replication_group_id": group}},
            "rds": {"origin-db": {"identifier": ident}},
        },
    )
    setup.catalogue = aws_catalogue(
        moto_server.config(), setup.inventory, recorder=setup.sent.append, clock=lambda: now
    )
    async with setup.admin.elasticache() as cache, setup.admin.cloudwatch() as cw:
        made = await cache.create_replication_group(
            ReplicationGroupId=group,
            ReplicationGroupDescription="origin",
            Engine="redis",
            CacheNodeType="cache.t3.micro",
            NumCacheClusters=1,
        )
        member = made["ReplicationGroup"]["MemberClusters"][0]
        for minutes, used in ((50, 1000.0), (20, 3000.0), (2, 2000.0)):
            await cw.put_metric_data(
                Namespace="AWS/ElastiCache",
                MetricData=[
                    {
                        "MetricName": "BytesUsedForCache",
                        "Dimensions": [{"Name": "CacheClusterId", "Value": member}],
                        "Timestamp": now - timedelta(minutes=minutes),
                        "Value": used,
                        "Unit": "Bytes",
                    }
                ],
            )
        await cw.put_metric_data(
            Namespace="AWS/RDS",
            MetricData=[
                {
                    "MetricName": "DatabaseConnections",
                    "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": ident}],
                    "Timestamp": now - timedelta(minutes=1),
                    "Value": 42.0,
                    "Unit": "Count",
                }
            ],
        )
    target = Target(kind="CacheGroup", name="origin-cache")
    memory = setup.spec("aws.cache_memory")
    planned = await memory.plan(target, params_of(memory))
    assert [r.method for r in planned] == ["DescribeReplicationGroups", "GetMetricStatistics"]
    query = planned[1].body
    assert query["Namespace"] == "AWS/ElastiCache"
    assert query["Dimensions"] == [{"Name": "CacheClusterId", "Value": member}]
    assert (query["Period"], query["Statistics"]) == (300, ["Average", "Maximum"])
    start, end = (
        datetime.fromisoformat(query["StartTime"]),
        datetime.fromisoformat(query["EndTime"]),
    )
    assert end - start == timedelta(hours=1)
    assert timedelta(0) < end - now <= timedelta(minutes=5)
    setup.sent.clear()
    outcome = await memory.execute(target, params_of(memory), 1)
    assert setup.sent == list(planned)
    (cluster,) = outcome["clusters"]
    assert cluster["cluster"] == member
    assert [p["maximum"] for p in cluster["datapoints"]] == [1000.0, 3000.0, 2000.0]
    assert (cluster["latest_average"], outcome["maximum_bytes"]) == (2000.0, 3000.0)

    connections = setup.spec("aws.rds_connections")
    rds_target = Target(kind="RdsInstance", name="origin-db")
    planned = await connections.plan(rds_target, params_of(connections))
    assert planned[0].body["Dimensions"] == [{"Name": "DBInstanceIdentifier", "Value": ident}]
    setup.sent.clear()
    shown = await connections.execute(rds_target, params_of(connections), 1)
    assert setup.sent == list(planned)
    assert (shown["latest_average"], shown["maximum"], shown["metric"]) == (
        42.0,
        42.0,
        "DatabaseConnections",
    )
    assert await connections.check(rds_target, params_of(connections)) is None


async def test_access_denied_is_a_failure_sent_once(tmp_path: Path) -> None:
    """IAM enforced (a server of its own: it is server-wide): a user that may only describe
    is refused AddTagsToResource; AWS's AccessDenied reaches the server once, is reported
    with its code and message, is recorded as the action's failed outcome, not retried."""
    with start_moto(tmp_path / "moto") as server:
        admin = AwsClients(server.config())
        ident = unique_name("origin-db")
        await create_db(admin, ident)
        async with admin._open("iam", lambda kw: admin.session.create_client("iam", **kw)) as iam:
            await iam.create_user(UserName="sevpipe")
            key = (await iam.create_access_key(UserName="sevpipe"))["AccessKey"]
            policy = {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": ["rds:DescribeDBInstances"], "Resource": "*"}
                ],
            }
            await iam.put_user_policy(
                UserName="sevpipe", PolicyName="describe", PolicyDocument=json.dumps(policy)
            )
        server.enforce_iam()
        config = server.config(
            access_key_id=key["AccessKeyId"],
            secret_access_key=key["SecretAccessKey"],
            max_attempts=5,
        )
        setup = Setup(config, {"rds": {"origin-db": {"identifier": ident}}})
        target = Target(kind="RdsInstance", name="origin-db")
        describe = setup.spec("aws.rds_describe")
        assert (await describe.execute(target, params_of(describe), 1))["identifier"] == ident

        spec = setup.spec("aws.rds_reboot")
        server.reset_recording()
        with acting(new_event_id()):
            with pytest.raises(AwsDenied) as denied:
                await spec.execute(target, params_of(spec), 1)
            assert denied.value.retriable is False
            assert denied.value.code == "AccessDenied"
            assert "rds AddTagsToResource: AccessDenied" in str(denied.value)
            assert "not authorized to perform: rds:AddTagsToResource" in str(denied.value)
            assert server.operations("rds").count("AddTagsToResource") == 1  # not retried
            assert "RebootDBInstance" not in server.operations("rds")

            async with EmbeddedEffectsLedger(tmp_path / "effects.db") as ledger:
                result = await perform(
                    ledger,
                    "reboot-denied",
                    holder="test",
                    lease=60,
                    do=lambda token: spec.execute(target, params_of(spec), token),
                    check=lambda: spec.check(target, params_of(spec)),
                )
        assert result.status == "failed"
        assert result.outcome["type"] == "AwsDenied"
        assert "AccessDenied" in result.outcome["error"]


async def test_throttling_5xx_and_timeouts_retried_then_retriable(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    ident = unique_name("origin-db")
    await create_db(AwsClients(moto_server.config()), ident)
    inventory = {"rds": {"origin-db": {"identifier": ident}}}
    target = Target(kind="RdsInstance", name="origin-db")
    async with fault_proxy(moto_server.url) as proxy:
        spec = Setup(moto_server.config(endpoint_url=proxy.url), inventory).spec("aws.rds_describe")
        params = params_of(spec)

        # Throttled twice: botocore retries (standard mode, 3 attempts) and succeeds.
        proxy.faults = [Fault(400, "Throttling"), Fault(400, "Throttling")]
        assert (await spec.execute(target, params, 1))["identifier"] == ident
        assert proxy.seen == ["DescribeDBInstances"] * 3

        # Throttled on every attempt: retriable for the stage, after exactly max_attempts.
        proxy.seen.clear()
        proxy.faults = [Fault(400, "Throttling")] * 3
        with pytest.raises(AwsUnavailable) as throttled:
            await spec.execute(target, params, 1)
        assert throttled.value.retriable is True
        assert throttled.value.code == "Throttling"
        assert len(proxy.seen) == 3

        # Through the effects ledger: the claim is given back, not recorded as failed.
        proxy.faults = [Fault(503, "ServiceUnavailable")] * 3
        async with EmbeddedEffectsLedger(tmp_path / "effects.db") as ledger:
            with pytest.raises(AwsUnavailable):
                await perform(
                    ledger,
                    "describe-unavailable",
                    holder="test",
                    lease=60,
                    do=lambda token: spec.execute(target, params, token),
                    check=lambda: spec.check(target, params),
                )
            record = await ledger.get("describe-unavailable")
        assert record is not None
        assert record.state == "released"

        # A read timeout on each of 2 attempts: retriable.
        slow = Setup(
            moto_server.config(endpoint_url=proxy.url, timeout=0.5, max_attempts=2), inventory
        ).spec("aws.rds_describe")
        proxy.seen.clear()
        proxy.faults = [Fault(delay=2.0), Fault(delay=2.0)]
        with pytest.raises(AwsUnavailable, match="ReadTimeoutError") as timed_out:
            await slow.execute(target, params, 1)
        assert timed_out.value.retriable is True
        assert len(proxy.seen) == 2


async def test_a_mutation_whose_answer_times_out_is_not_sent_again_by_botocore(
    moto_server: MotoServer,
) -> None:
    """botocore's standard mode re-sends a request after a read timeout; for a mutation that
    is a second StartDBInstance (a second invalidation where the API does not deduplicate).
    Mutations go out once per attempt of the stage, whose next attempt checks first."""
    ident = unique_name("origin-db")
    inventory = {"rds": {"origin-db": {"identifier": ident}}}
    admin = AwsClients(moto_server.config())
    await create_db(admin, ident)
    async with admin.rds() as rds:
        await rds.stop_db_instance(DBInstanceIdentifier=ident)
    target = Target(kind="RdsInstance", name="origin-db")
    async with fault_proxy(moto_server.url) as proxy:
        config = moto_server.config(endpoint_url=proxy.url, timeout=0.5, max_attempts=3)
        start = Setup(config, inventory).spec("aws.rds_start")
        params = params_of(start)
        proxy.hold["StartDBInstance"] = 2.0  # moto starts it; the answer comes too late
        with pytest.raises(AwsUnavailable, match="ReadTimeoutError"):
            await start.execute(target, params, 1)
        assert proxy.seen.count("StartDBInstance") == 1  # not 3
        assert await start.check(target, params) is not None  # the retry finds it started
