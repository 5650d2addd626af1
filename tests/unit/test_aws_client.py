"""The AWS actions' ground without a server: the error mapping, the client settings, the
recorder, the action's time, and the decisions the emulator cannot show (a reboot's events,
DescribeInstances pages). Against a real moto server: tests/integration/test_aws_actions.py."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from aiobotocore.stub import AioStubber
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from actions import aws_reads
from actions.aws_client import AwsClients, NoParams, action_time, aws_request, window
from actions.aws_cloudfront import InvalidationParams, allowed_paths, caller_reference
from actions.aws_config import AwsConfig
from actions.aws_errors import (
    AwsDenied,
    AwsError,
    AwsNotFound,
    AwsRefused,
    AwsUnavailable,
    map_error,
)
from actions.aws_rds import REBOOT_TAG, Rds, marked, reboot_event
from actions.catalogue import ACTION_ID
from actions.inventory import Inventory
from actions.inventory_services import DistributionEntry
from schemas.actions import ApiRequest, Target
from schemas.envelope import derived_event_id, new_event_id

CONFIG = AwsConfig(
    region="eu-west-1",
    endpoint_url="http://127.0.0.1:9",
    access_key_id="AKIDEXAMPLE",
    secret_access_key="secret",
    timeout=7,
    max_attempts=4,
)


@contextlib.contextmanager
def acting(action_id: str) -> Iterator[None]:
    token = ACTION_ID.set(action_id)
    try:
        yield
    finally:
        ACTION_ID.reset(token)


def client_error(code: str, status: int, operation: str = "RebootDBInstance") -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": f"{code} says no"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, operation)


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("Throttling", 400, AwsUnavailable),
        ("ThrottlingException", 400, AwsUnavailable),
        ("RequestLimitExceeded", 503, AwsUnavailable),
        ("TooManyRequestsException", 429, AwsUnavailable),
        ("InternalFailure", 500, AwsUnavailable),
        ("", 502, AwsUnavailable),
        ("ServiceUnavailable", 503, AwsUnavailable),
        ("AccessDenied", 403, AwsDenied),
        ("UnauthorizedOperation", 403, AwsDenied),
        ("", 403, AwsDenied),
        ("DBInstanceNotFound", 404, AwsNotFound),
        ("ReplicationGroupNotFoundFault", 404, AwsNotFound),
        ("NoSuchDistribution", 404, AwsNotFound),
        ("InvalidInstanceID.NotFound", 400, AwsNotFound),
        ("ValidationError", 400, AwsError),
        ("InvalidParameterCombination", 400, AwsError),
        ("InvalidDBInstanceState", 400, AwsError),
    ],
)
def test_client_errors_map_by_code_and_status(code: str, status: int, kind: type) -> None:
    mapped = map_error(client_error(code, status), "rds")
    assert mapped is not None
    assert type(mapped) is kind
    assert mapped.retriable is (kind is AwsUnavailable)
    assert mapped.code == (code or None)
    assert "rds RebootDBInstance" in str(mapped)
    if code:
        assert f"{code}: {code} says no" in str(mapped)


def test_transport_errors_are_retriable_configuration_errors_are_not() -> None:
    url = "https://rds.eu-west-1.amazonaws.com"
    for exc in (
        ReadTimeoutError(endpoint_url=url),
        ConnectTimeoutError(endpoint_url=url),
        EndpointConnectionError(endpoint_url=url),
        TimeoutError(),
    ):
        mapped = map_error(exc, "rds")
        assert isinstance(mapped, AwsUnavailable), exc
        assert mapped.retriable is True
    for config_exc in (NoCredentialsError(), ParamValidationError(report="DBInstanceIdentifier")):
        mapped = map_error(config_exc, "rds")
        assert type(mapped) is AwsError
        assert mapped.retriable is False
    refused = AwsRefused("no")
    assert map_error(refused, "rds") is refused
    assert map_error(ValueError("ours"), "rds") is None


def test_clients_carry_timeouts_and_standard_retries() -> None:
    config: Any = AwsClients(CONFIG).botocore_config
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert (config.connect_timeout, config.read_timeout) == (7, 7)


async def test_client_settings_recorder_and_mapping(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    config = CONFIG.model_copy(update={"secret_access_key": None, "secret_access_key_file": secret})
    sent: list[ApiRequest] = []
    clients = AwsClients(config, recorder=sent.append)

    async def describe_then_reboot() -> None:
        async with clients.rds() as rds:
            assert rds.meta.region_name == "eu-west-1"
            assert rds.meta.endpoint_url == "http://127.0.0.1:9"
            creds = await cast(Any, rds)._get_credentials().get_frozen_credentials()
            assert (creds.access_key, creds.secret_key) == ("AKIDEXAMPLE", "from-a-file")
            with AioStubber(rds) as stub:
                stub.add_response(
                    "describe_db_instances", {"DBInstances": []}, {"DBInstanceIdentifier": "db"}
                )
                stub.add_client_error("reboot_db_instance", "Throttling", "slow down", 400)
                await rds.describe_db_instances(DBInstanceIdentifier="db")
                await rds.reboot_db_instance(DBInstanceIdentifier="db", ForceFailover=False)

    with pytest.raises(AwsUnavailable, match="Throttling") as throttled:
        await describe_then_reboot()
    assert throttled.value.retriable is True
    assert sent == [
        aws_request("rds", "DescribeDBInstances", {"DBInstanceIdentifier": "db"}),
        ApiRequest(
            method="RebootDBInstance",
            path="rds:RebootDBInstance",
            body={"DBInstanceIdentifier": "db", "ForceFailover": False},
        ),
    ]

    keyless = AwsClients(CONFIG.model_copy(update={"secret_access_key": None}))
    with pytest.raises(AwsError, match="without a secret"):
        async with keyless.rds():
            pass


def test_action_time_is_the_incident_s_beginning() -> None:
    assert action_time() is None
    incident = new_event_id()
    with acting(derived_event_id(incident, "action", "restart", "RdsInstance//db")):
        began = action_time()
    assert began is not None
    assert abs(began - datetime.now(UTC)) < timedelta(seconds=5)
    with acting("not-a-ulid!"):
        assert action_time() is None


def test_window_is_the_same_within_a_bucket() -> None:
    at = datetime(2026, 3, 1, 12, 7, 30, tzinfo=UTC)
    start, end = window(lambda: at, timedelta(hours=1), timedelta(minutes=5))
    assert (start, end) == (
        at.replace(minute=10, second=0) - timedelta(hours=1),
        at.replace(minute=10, second=0),
    )
    later = window(lambda: at + timedelta(minutes=2), timedelta(hours=1), timedelta(minutes=5))
    assert later == (start, end)


def test_invalidation_paths_and_caller_reference() -> None:
    entry = DistributionEntry(distribution_id="E2", paths=("/static/*", "/index.html"), max_paths=2)

    def paths(*given: str) -> list[str]:
        return allowed_paths(entry, InvalidationParams(paths=list(given)))

    assert paths("/static/b.js", "/index.html", "/static/b.js") == ["/index.html", "/static/b.js"]
    assert paths("/static/*") == ["/static/*"]
    for bad, why in (
        (["/*"], "outside"),
        (["/admin/x"], "outside"),
        (["static/x"], "absolute"),
        (["/static/../admin"], "absolute"),
        (["/index.html", "/static/a", "/static/b"], "at most 2"),
    ):
        with pytest.raises(AwsRefused, match=why):
            paths(*bad)
    with pytest.raises(AwsRefused, match="only under the actions stage"):
        caller_reference(["/index.html"])
    first, second = new_event_id(), new_event_id()
    with acting(first):
        ref = caller_reference(["/index.html", "/static/*"])
        assert ref.startswith(f"sevpipe-{first}-")
        assert caller_reference(["/index.html", "/static/*"]) == ref
        assert caller_reference(["/index.html"]) != ref
    with acting(second):
        assert caller_reference(["/index.html", "/static/*"]) != ref


# A reboot's check (moto shows no reboot events and no "rebooting" status)


class FakeRds:
    """describe_events pages as RDS gives them; every call kept."""

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.calls: list[dict[str, Any]] = []

    async def describe_events(self, **params: Any) -> dict[str, Any]:
        self.calls.append(params)
        return self.pages[len(self.calls) - 1]


def event(message: str, at: datetime, *categories: str) -> dict[str, Any]:
    return {"Message": message, "Date": at, "EventCategories": list(categories)}


def instance(status: str, mark: str | None) -> dict[str, Any]:
    tags = [{"Key": "team", "Value": "origin"}]
    if mark is not None:
        tags.append({"Key": REBOOT_TAG, "Value": mark})
    return {"DBInstanceStatus": status, "TagList": tags}


def test_reboot_events_after_the_action_began() -> None:
    since = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    before, after = since - timedelta(minutes=5), since + timedelta(minutes=3)
    assert reboot_event([event("DB instance restarted", before, "availability")], since) is None
    assert reboot_event([event("Backing up DB instance", after, "backup")], since) is None
    found = reboot_event([event("DB instance restarted", after, "availability")], since)
    assert found == {
        "date": after.isoformat(),
        "message": "DB instance restarted",
        "categories": ["availability"],
    }
    failover = [event("Multi-AZ instance failover started.", after, "failover")]
    assert reboot_event(failover, since) is not None
    assert marked(instance("available", "A1"), "A1")
    assert not marked(instance("available", "B2"), "A1")
    assert not marked(instance("available", None), "A1")


async def test_reboot_check_decides_on_mark_status_and_events() -> None:
    rds = Rds(cast(Any, None), Inventory())
    incident = new_event_id()
    action = derived_event_id(incident, "action", "reboot", "RdsInstance//db")
    began = action_time_of(action)
    later = began + timedelta(minutes=2)
    with acting(action):
        # Not this action's mark: it never got as far as the reboot; RDS is not even asked.
        fake = FakeRds([])
        assert await rds._found(cast(Any, fake), instance("available", "other"), "db") is None
        assert fake.calls == []
        # Rebooting now, under its mark: done.
        found = await rds._found(cast(Any, fake), instance("rebooting", action), "db")
        assert found is not None
        assert found["evidence"] == "rebooting"
        # Available again: a restart event after the action began, on the second page.
        fake = FakeRds(
            [
                {"Events": [event("Backing up DB instance", later, "backup")], "Marker": "m1"},
                {"Events": [event("DB instance restarted", later, "availability")]},
            ]
        )
        found = await rds._found(cast(Any, fake), instance("available", action), "db")
        assert found is not None
        assert found["evidence"]["message"] == "DB instance restarted"
        assert fake.calls[0]["SourceIdentifier"] == "db"
        assert fake.calls[0]["StartTime"] == began - timedelta(minutes=1)
        assert fake.calls[1]["Marker"] == "m1"
        # Marked, but no sign of a reboot: the attempt died between tag and reboot.
        fake = FakeRds([{"Events": [event("DB instance restarted", began - timedelta(hours=1))]}])
        assert await rds._found(cast(Any, fake), instance("available", action), "db") is None


def action_time_of(action: str) -> datetime:
    with acting(action):
        began = action_time()
    assert began is not None
    return began


# DescribeInstances pages (moto ignores MaxResults)


class FakeEc2:
    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.calls: list[dict[str, Any]] = []

    async def describe_instances(self, **params: Any) -> dict[str, Any]:
        self.calls.append(params)
        return self.pages[len(self.calls) - 1]


class FakeClients:
    def __init__(self, ec2: FakeEc2) -> None:
        self._ec2 = ec2

    @contextlib.asynccontextmanager
    async def ec2(self) -> AsyncIterator[FakeEc2]:
        yield self._ec2


def page(ids: list[str], token: str | None) -> dict[str, Any]:
    instances = [{"InstanceId": i, "State": {"Name": "running"}} for i in ids]
    return {"Reservations": [{"Instances": instances}], **({"NextToken": token} if token else {})}


async def test_instances_follow_pages_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = Inventory.model_validate({"aws": {"instances": {"web": {"tags": {"app": "o"}}}}})
    target = Target(kind="Instances", name="web")
    fake = FakeEc2([page(["i-1", "i-2"], "t1"), page(["i-3"], None)])
    reads = aws_reads.AwsReads(cast(Any, FakeClients(fake)), inventory)
    outcome = await reads.instances(target, NoParams(), 1)
    assert [i["id"] for i in outcome["instances"]] == ["i-1", "i-2", "i-3"]
    assert outcome["truncated"] is False
    assert "NextToken" not in fake.calls[0]
    assert fake.calls[1]["NextToken"] == "t1"

    monkeypatch.setattr(aws_reads, "MAX_INSTANCES", 2)
    fake = FakeEc2([page(["i-1", "i-2"], "t1"), page(["i-3"], None)])
    reads = aws_reads.AwsReads(cast(Any, FakeClients(fake)), inventory)
    outcome = await reads.instances(target, NoParams(), 1)
    assert (outcome["count"], outcome["truncated"], len(fake.calls)) == (2, True, 1)
