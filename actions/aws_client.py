"""The AWS actions' shared ground: clients made from :class:`AwsConfig`, the requests
recorded, the inventory entry of a target, and the action's time.

Clients (``AwsClients``): one aiobotocore session; each ``async with clients.rds() as rds:``
opens a client for that block and closes it after (an action's few calls share it). Every
client has the configured region, endpoint and credentials (an access key, or the default
chain), connect and read timeouts of ``timeout``, and botocore's ``standard`` retry mode
with ``max_attempts``: throttling, 5xx, timeouts and dropped connections are retried with
backoff by botocore itself before an error reaches the action.

Errors that escape a block are mapped by :func:`actions.aws_errors.map_error`: retriable
(throttling, 5xx, timeouts, connection errors) or the action's failed outcome (access
denied, not found, validation), with the AWS error code and message.

Requests: every call a client makes is recorded, if a ``recorder`` is given, as an
``ApiRequest`` (method = the operation, path = ``service:Operation``, body = the parameters,
times as ISO 8601), from botocore's ``before-parameter-build`` event: each call once, however
many attempts botocore made. ``aws_request`` builds the same value, so a plan is comparable
with what was sent.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from pydantic import BaseModel, ConfigDict

from actions.aws_config import AwsConfig
from actions.aws_errors import AwsError, AwsRefused, map_error
from actions.catalogue import ACTION_ID, Outcome
from actions.inventory_services import ServicesInventory
from schemas.actions import ApiRequest, Target

if TYPE_CHECKING:
    from types_aiobotocore_cloudfront.client import CloudFrontClient
    from types_aiobotocore_cloudwatch.client import CloudWatchClient
    from types_aiobotocore_ec2.client import EC2Client
    from types_aiobotocore_elasticache.client import ElastiCacheClient
    from types_aiobotocore_elbv2.client import ElasticLoadBalancingv2Client
    from types_aiobotocore_rds.client import RDSClient

C = TypeVar("C")
E = TypeVar("E", bound=BaseModel)

Recorder = Callable[[ApiRequest], None]
Clock = Callable[[], datetime]

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def jsonable(value: Any) -> Any:
    """``value`` with times as ISO 8601 strings (tuples as lists): what events carry."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def json_map(value: Mapping[str, Any]) -> dict[str, Any]:
    """``jsonable`` of a mapping, typed as one."""
    return {str(k): jsonable(v) for k, v in value.items()}


def aws_request(service: str, operation: str, params: Mapping[str, Any]) -> ApiRequest:
    """One call as plans show it and the recorder records it."""
    return ApiRequest(method=operation, path=f"{service}:{operation}", body=json_map(params))


def action_id() -> str | None:
    return ACTION_ID.get()


def action_time() -> datetime | None:
    """When the action's incident began: the time prefix (ULID) of the action id, which the
    stage derives from the incident's id, itself derived from its first alert's event. Every
    effect of the action comes later; None outside the stage or for an id without one."""
    ident = ACTION_ID.get()
    if ident is None or len(ident) < 10:
        return None
    millis = 0
    for char in ident[:10].upper():
        digit = _CROCKFORD.find(char)
        if digit < 0:
            return None
        millis = millis * 32 + digit
    try:
        return datetime.fromtimestamp(millis / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def utc_now() -> datetime:
    return datetime.now(UTC)


def window(clock: Clock, span: timedelta, period: timedelta) -> tuple[datetime, datetime]:
    """``span`` up to the end of the current ``period`` bucket: the same for every call
    within one bucket, so a plan is the request sent."""
    now = clock().astimezone(UTC)
    step = int(period.total_seconds())
    end = datetime.fromtimestamp((int(now.timestamp()) // step + 1) * step, UTC)
    return end - span, end


def entry_of(inventory: ServicesInventory, target: Target, kind: str, model: type[E]) -> E:
    """The inventory entry of a ``kind`` target, or why the action refuses it."""
    if target.kind != kind or not target.name:
        raise AwsRefused(f"target {target.key()} is not a named {kind}")
    found = inventory.entry(kind, target.name)
    if not isinstance(found, model):
        raise AwsRefused(f"{kind} {target.name} is not in the inventory's aws section")
    return found


async def no_check(target: Target, params: BaseModel) -> Outcome | None:
    """A read has no effect to find: after a crash it simply runs again."""
    return None


class AwsClients:
    """aiobotocore clients made from one AwsConfig; see the module doc."""

    def __init__(
        self,
        config: AwsConfig,
        *,
        recorder: Recorder | None = None,
        session: AioSession | None = None,
    ) -> None:
        self.config = config
        self.recorder = recorder
        self.session = session or get_session()
        self.botocore_config = AioConfig(
            connect_timeout=config.timeout,
            read_timeout=config.timeout,
            # total_max_attempts counts the first attempt; botocore's max_attempts would not
            retries={"mode": "standard", "total_max_attempts": config.max_attempts},
            user_agent_extra="sevpipe",
        )

    async def _kwargs(self, *, once: bool = False) -> dict[str, Any]:
        config = self.botocore_config
        if once:
            # A mutation is sent once per attempt of the stage, never again by botocore after a
            # read timeout: the stage's next attempt checks before it sends (see perform).
            config = config.merge(AioConfig(retries={"mode": "standard", "total_max_attempts": 1}))
        kwargs: dict[str, Any] = {
            "region_name": self.config.region,
            "endpoint_url": self.config.endpoint_url,
            "config": config,
        }
        if self.config.access_key_id:
            secret = await asyncio.to_thread(self.config.secret)
            if not secret:
                raise AwsError("aws.access_key_id is set without a secret access key")
            kwargs["aws_access_key_id"] = self.config.access_key_id
            kwargs["aws_secret_access_key"] = secret
        return kwargs

    def _watch(self, client: Any, service: str) -> None:
        recorder = self.recorder
        if recorder is None:
            return

        def record(params: Mapping[str, Any], model: Any, **_: Any) -> None:
            recorder(aws_request(service, model.name, copy.deepcopy(dict(params))))

        client.meta.events.register("before-parameter-build", record)

    def _open(
        self,
        service: str,
        make: Callable[[dict[str, Any]], AbstractAsyncContextManager[C]],
        *,
        once: bool = False,
    ) -> AbstractAsyncContextManager[C]:
        @asynccontextmanager
        async def opened() -> AsyncIterator[C]:
            try:
                async with make(await self._kwargs(once=once)) as client:
                    self._watch(client, service)
                    yield client
            except Exception as exc:
                mapped = map_error(exc, service)
                if mapped is None or mapped is exc:
                    raise
                raise mapped from exc

        return opened()

    def elbv2(self) -> AbstractAsyncContextManager[ElasticLoadBalancingv2Client]:
        return self._open("elbv2", lambda kw: self.session.create_client("elbv2", **kw))

    def ec2(self) -> AbstractAsyncContextManager[EC2Client]:
        return self._open("ec2", lambda kw: self.session.create_client("ec2", **kw))

    def rds(self, *, once: bool = False) -> AbstractAsyncContextManager[RDSClient]:
        """``once``: for a mutation (no retry by botocore itself)."""
        return self._open("rds", lambda kw: self.session.create_client("rds", **kw), once=once)

    def elasticache(self, *, once: bool = False) -> AbstractAsyncContextManager[ElastiCacheClient]:
        """``once``: for a mutation (no retry by botocore itself)."""
        return self._open(
            "elasticache", lambda kw: self.session.create_client("elasticache", **kw), once=once
        )

    def cloudfront(self, *, once: bool = False) -> AbstractAsyncContextManager[CloudFrontClient]:
        """``once``: for a mutation (no retry by botocore itself)."""
        return self._open(
            "cloudfront", lambda kw: self.session.create_client("cloudfront", **kw), once=once
        )

    def cloudwatch(self) -> AbstractAsyncContextManager[CloudWatchClient]:
        return self._open("cloudwatch", lambda kw: self.session.create_client("cloudwatch", **kw))
