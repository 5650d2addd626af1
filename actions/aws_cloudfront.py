"""``aws.cloudfront_invalidate`` (Distribution; ``paths``), registered by ``aws_catalogue``.

CreateInvalidation of the entry's distribution, for paths that each match one of the entry's
``paths`` patterns (fnmatch: ``/static/*`` allows ``/static/app.js`` and ``/static/*``), at
most ``max_paths`` of them; anything else is refused before a request is made. The paths are
sent sorted and without repeats.

Idempotent by CallerReference: it is ``sevpipe-<action id>-<digest of the sorted paths>``
(``catalogue.ACTION_ID``), so every attempt of one action sends the same one, and CloudFront
answers a repeat of the same CallerReference and paths with the invalidation it created the
first time instead of a second one. The action therefore runs only under the stage (without
an action id it is refused). ``execute`` also looks first, as ``check`` does, and returns the
invalidation it finds (``created: false``), so a retry makes no second request even where
the API does not deduplicate (moto does not); and botocore itself never re-sends the create
after a read timeout (a mutation's client makes one attempt: ``AwsClients(once=True)``).

``check``: ListInvalidations of the distribution, page by page, then GetInvalidation of each
one created since the action's incident began (the time in the action id, a minute of skew
allowed) until one has this CallerReference; at most
``MAX_PAGES`` pages and ``MAX_GETS`` invalidations are read. Past those limits it answers
None, and the retried CreateInvalidation gets the existing invalidation back from CloudFront.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from actions.aws_client import (
    AwsClients,
    action_id,
    action_time,
    aws_request,
    entry_of,
    json_map,
)
from actions.aws_errors import AwsRefused
from actions.catalogue import Outcome
from actions.inventory_services import DistributionEntry, ServicesInventory
from schemas.actions import ApiRequest, Target

if TYPE_CHECKING:
    from types_aiobotocore_cloudfront.client import CloudFrontClient

PAGE_SIZE: Final = 100
MAX_PAGES: Final = 10
MAX_GETS: Final = 100
SKEW: Final = timedelta(minutes=1)

Path = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]


class InvalidationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[Path] = Field(min_length=1, description="paths to invalidate, e.g. /static/*")


def allowed_paths(entry: DistributionEntry, params: InvalidationParams) -> list[str]:
    """The paths to send (sorted, no repeats), or why they are refused."""
    paths = sorted(set(params.paths))
    if len(paths) > entry.max_paths:
        raise AwsRefused(
            f"{len(paths)} paths: distribution {entry.distribution_id} allows at most "
            f"{entry.max_paths} in one invalidation"
        )
    for path in paths:
        if not path.startswith("/") or "/../" in f"{path}/":
            raise AwsRefused(f"path {path!r} is not an absolute path")
        if not any(fnmatch.fnmatchcase(path, pattern) for pattern in entry.paths):
            raise AwsRefused(
                f"path {path} is outside the paths the inventory allows for distribution "
                f"{entry.distribution_id}: {', '.join(entry.paths)}"
            )
    return paths


def caller_reference(paths: list[str]) -> str:
    """The same for every attempt of this action with these paths (see the module doc)."""
    ident = action_id()
    if ident is None:
        raise AwsRefused(
            "aws.cloudfront_invalidate runs only under the actions stage: its CallerReference "
            "is made from the action id"
        )
    digest = hashlib.sha256("\n".join([ident, *paths]).encode()).hexdigest()[:16]
    return f"sevpipe-{ident}-{digest}"


def _outcome(dist: str, inv: Mapping[str, Any], *, created: bool) -> dict[str, Any]:
    batch = inv.get("InvalidationBatch") or {}
    return json_map(
        {
            "distribution_id": dist,
            "invalidation_id": inv.get("Id"),
            "status": inv.get("Status"),
            "create_time": inv.get("CreateTime"),
            "paths": (batch.get("Paths") or {}).get("Items") or [],
            "caller_reference": batch.get("CallerReference"),
            "created": created,
        }
    )


class CloudFront:
    """cloudfront_invalidate, on clients from CLIENTS, targets from INVENTORY."""

    def __init__(self, clients: AwsClients, inventory: ServicesInventory) -> None:
        self.clients = clients
        self.inventory = inventory

    def _request(self, target: Target, params: InvalidationParams) -> tuple[str, dict[str, Any]]:
        entry = entry_of(self.inventory, target, "Distribution", DistributionEntry)
        paths = allowed_paths(entry, params)
        batch = {
            "Paths": {"Quantity": len(paths), "Items": paths},
            "CallerReference": caller_reference(paths),
        }
        return entry.distribution_id, {
            "DistributionId": entry.distribution_id,
            "InvalidationBatch": batch,
        }

    async def plan(self, target: Target, params: InvalidationParams) -> tuple[ApiRequest, ...]:
        _, request = self._request(target, params)
        return (aws_request("cloudfront", "CreateInvalidation", request),)

    async def _find(self, cf: CloudFrontClient, dist: str, ref: str) -> dict[str, Any] | None:
        began = action_time()
        since: datetime | None = began - SKEW if began is not None else None
        listing: dict[str, Any] = {"DistributionId": dist, "MaxItems": str(PAGE_SIZE)}
        gets = 0
        for _ in range(MAX_PAGES):
            page = (await cf.list_invalidations(**listing))["InvalidationList"]
            for summary in page.get("Items") or []:
                if since is not None and summary["CreateTime"] < since:
                    continue
                if gets >= MAX_GETS:
                    return None
                gets += 1
                inv = (await cf.get_invalidation(DistributionId=dist, Id=summary["Id"]))[
                    "Invalidation"
                ]
                if inv["InvalidationBatch"]["CallerReference"] == ref:
                    return dict(inv)
            if not page.get("IsTruncated") or not page.get("NextMarker"):
                return None
            listing["Marker"] = page["NextMarker"]
        return None

    async def invalidate(self, target: Target, params: InvalidationParams, token: int) -> Outcome:
        dist, request = self._request(target, params)
        ref = request["InvalidationBatch"]["CallerReference"]
        async with self.clients.cloudfront(once=True) as cf:
            found = await self._find(cf, dist, ref)
            if found is not None:
                return _outcome(dist, found, created=False)
            done = await cf.create_invalidation(**request)
        return {
            **_outcome(dist, done["Invalidation"], created=True),
            "request": aws_request("cloudfront", "CreateInvalidation", request).model_dump(
                mode="json"
            ),
        }

    async def invalidated(self, target: Target, params: InvalidationParams) -> Outcome | None:
        dist, request = self._request(target, params)
        async with self.clients.cloudfront() as cf:
            found = await self._find(cf, dist, request["InvalidationBatch"]["CallerReference"])
        return None if found is None else _outcome(dist, found, created=False)
