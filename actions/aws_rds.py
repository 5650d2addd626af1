"""The RDS mutations (registered by ``aws_catalogue``).

``aws.rds_start`` (RdsInstance): StartDBInstance, only of a stopped instance. Idempotent by
state: ``execute`` reads the status first, and an instance that is not stopped is a success
that says so (``started: false``); one still ``stopping`` is retriable (started once it has
stopped). ``plan`` is the StartDBInstance request when the instance is stopped or stopping,
else nothing. ``check``: the status is ``available`` or ``starting``.

``aws.rds_reboot`` (RdsInstance, destructive; ``force_failover``): RebootDBInstance, at most
once per action. ``force_failover`` is refused unless the inventory entry says
``failover: true`` (and AWS refuses it for an instance that is not Multi-AZ; so do we,
first). Only an ``available`` instance is rebooted.

What can be known after a crash: RDS keeps no caller or request id on a reboot; CloudTrail
has the call, but minutes late. What it has at once is the status (``rebooting`` from the
moment RebootDBInstance is accepted) and, later, its events (DescribeEvents: "DB instance
restarted", "DB instance shutdown", the Multi-AZ "failover" events), which say neither who
nor why. So ``execute`` marks the instance before rebooting it, with the tag
``sevpipe:reboot`` = the action id (AddTagsToResource; needs ``rds:AddTagsToResource``); the
plan is both requests, tag then reboot. ``check`` finds the reboot done when the mark is this
action's and either the instance is ``rebooting`` now or an event of a restart, shutdown or
failover is dated after the action's incident began (the time in the action id; a minute of
clock skew allowed). Without this action's mark the reboot was never sent: None, and the
stage reboots. With the mark and no sign of a reboot: None as well (the attempt died between
the two requests). ``execute`` checks the same way before acting, so a second call for the
same action does not reboot twice.

Limits: an unrelated reboot after the incident began, made while this action had tagged but
not yet rebooted, is taken for this one (the action then reports that reboot's event); a
later reboot action on the same instance replaces the mark. The tag stays, telling people
which action last rebooted the instance (infrastructure-as-code tools may report it as
drift). Outside the stage (no action id) the mark is ``sevpipe`` and events of the last hour
count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

from actions.aws_client import (
    AwsClients,
    Clock,
    NoParams,
    action_id,
    action_time,
    aws_request,
    entry_of,
    json_map,
    utc_now,
)
from actions.aws_errors import AwsRefused, AwsUnavailable, error_code
from actions.catalogue import Outcome
from actions.inventory_services import RdsEntry, ServicesInventory
from schemas.actions import ApiRequest, Target

if TYPE_CHECKING:
    from types_aiobotocore_rds.client import RDSClient

REBOOT_TAG: Final = "sevpipe:reboot"
STARTED_STATES: Final = ("available", "starting")
SKEW: Final = timedelta(minutes=1)
EVENTS_SPAN: Final = timedelta(days=14)
"""How far back RDS keeps events."""
REBOOT_WORDS: Final = ("restart", "reboot", "shutdown", "failover", "fail over")
MAX_EVENT_PAGES: Final = 5


class RebootParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force_failover: bool = False


def reboot_mark() -> str:
    return action_id() or "sevpipe"


def _tags(db: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in db.get("TagList") or [] if "Key" in t}


def marked(db: Mapping[str, Any], mark: str) -> bool:
    """The instance carries this action's reboot mark."""
    return _tags(db).get(REBOOT_TAG) == mark


def reboot_event(events: Sequence[Mapping[str, Any]], since: datetime) -> dict[str, Any] | None:
    """The first RDS event dated at or after ``since`` that tells of a restart, shutdown or
    failover of the instance, or None."""
    for event in events:
        when = event.get("Date")
        if not isinstance(when, datetime) or when < since:
            continue
        message = str(event.get("Message") or "").lower()
        categories = [str(c).lower() for c in event.get("EventCategories") or []]
        if "failover" in categories or any(w in message for w in REBOOT_WORDS):
            return json_map(
                {"date": when, "message": event.get("Message"), "categories": categories}
            )
    return None


class Rds:
    """rds_start and rds_reboot, on clients from CLIENTS, targets from INVENTORY."""

    def __init__(
        self, clients: AwsClients, inventory: ServicesInventory, clock: Clock = utc_now
    ) -> None:
        self.clients = clients
        self.inventory = inventory
        self.clock = clock

    def _entry(self, target: Target) -> tuple[RdsEntry, str]:
        entry = entry_of(self.inventory, target, "RdsInstance", RdsEntry)
        return entry, entry.identifier or target.name

    async def _describe(self, rds: RDSClient, ident: str) -> dict[str, Any]:
        found = await rds.describe_db_instances(DBInstanceIdentifier=ident)
        return dict(found["DBInstances"][0])

    # rds_start

    async def plan_start(self, target: Target, params: NoParams) -> tuple[ApiRequest, ...]:
        _, ident = self._entry(target)
        async with self.clients.rds() as rds:
            db = await self._describe(rds, ident)
        if db.get("DBInstanceStatus") not in ("stopped", "stopping"):
            return ()
        return (aws_request("rds", "StartDBInstance", {"DBInstanceIdentifier": ident}),)

    async def start(self, target: Target, params: NoParams, token: int) -> Outcome:
        _, ident = self._entry(target)
        async with self.clients.rds(once=True) as rds:
            db = await self._describe(rds, ident)
            status = db.get("DBInstanceStatus")
            if status == "stopping":
                raise AwsUnavailable(f"rds {ident} is stopping: it is started once stopped")
            if status != "stopped":
                return {
                    "identifier": ident,
                    "started": False,
                    "status": status,
                    "reason": f"not stopped (status {status}): nothing to start",
                }
            request = aws_request("rds", "StartDBInstance", {"DBInstanceIdentifier": ident})
            try:
                done = await rds.start_db_instance(DBInstanceIdentifier=ident)
            except ClientError as exc:
                if error_code(exc) != "InvalidDBInstanceState":
                    raise
                # Started (or stopped again) by someone else since it was read: the retry
                # checks, then reads the status afresh.
                raise AwsUnavailable(f"rds {ident} changed state meanwhile: {exc}") from exc
        return {
            "identifier": ident,
            "started": True,
            "previous_status": status,
            "status": done["DBInstance"].get("DBInstanceStatus"),
            "request": request.model_dump(mode="json"),
        }

    async def started(self, target: Target, params: NoParams) -> Outcome | None:
        _, ident = self._entry(target)
        async with self.clients.rds() as rds:
            db = await self._describe(rds, ident)
        status = db.get("DBInstanceStatus")
        return {"identifier": ident, "status": status} if status in STARTED_STATES else None

    # rds_reboot

    def _reboot_requests(self, ident: str, arn: str, params: RebootParams) -> list[ApiRequest]:
        tags = [{"Key": REBOOT_TAG, "Value": reboot_mark()}]
        reboot = {"DBInstanceIdentifier": ident, "ForceFailover": params.force_failover}
        return [
            aws_request("rds", "AddTagsToResource", {"ResourceName": arn, "Tags": tags}),
            aws_request("rds", "RebootDBInstance", reboot),
        ]

    def _refuse_failover(self, entry: RdsEntry, ident: str, params: RebootParams) -> None:
        if params.force_failover and not entry.failover:
            raise AwsRefused(
                f"rds {ident}: force_failover is refused: the inventory entry does not say "
                "failover: true"
            )

    async def plan_reboot(self, target: Target, params: RebootParams) -> tuple[ApiRequest, ...]:
        entry, ident = self._entry(target)
        self._refuse_failover(entry, ident, params)
        async with self.clients.rds() as rds:
            db = await self._describe(rds, ident)
        return tuple(self._reboot_requests(ident, db["DBInstanceArn"], params))

    async def _found(self, rds: RDSClient, db: Mapping[str, Any], ident: str) -> Outcome | None:
        """This action's reboot, if the instance shows it (see the module doc)."""
        if not marked(db, reboot_mark()):
            return None
        status = db.get("DBInstanceStatus")
        if status == "rebooting":
            return {"identifier": ident, "rebooted": True, "status": status, "evidence": status}
        now = self.clock()
        began = action_time()
        since = (began - SKEW) if began is not None else now - timedelta(hours=1)
        since = max(since, now - EVENTS_SPAN + SKEW)
        request: dict[str, Any] = {
            "SourceType": "db-instance",
            "SourceIdentifier": ident,
            "StartTime": since,
        }
        for _ in range(MAX_EVENT_PAGES):
            page = await rds.describe_events(**request)
            event = reboot_event(page.get("Events", []), since)
            if event is not None:
                return {"identifier": ident, "rebooted": True, "status": status, "evidence": event}
            if not page.get("Marker"):
                break
            request["Marker"] = page["Marker"]
        return None

    async def reboot(self, target: Target, params: RebootParams, token: int) -> Outcome:
        entry, ident = self._entry(target)
        self._refuse_failover(entry, ident, params)
        async with self.clients.rds(once=True) as rds:
            db = await self._describe(rds, ident)
            found = await self._found(rds, db, ident)
            if found is not None:
                return {**found, "by": "an earlier attempt of this action"}
            status = db.get("DBInstanceStatus")
            if status != "available":
                raise AwsRefused(f"rds {ident} is {status}, not available: not rebooted")
            if params.force_failover and not db.get("MultiAZ"):
                raise AwsRefused(
                    f"rds {ident} is not Multi-AZ: there is no standby to fail over to"
                )
            tag, reboot = self._reboot_requests(ident, db["DBInstanceArn"], params)
            await rds.add_tags_to_resource(**tag.body)
            done = await rds.reboot_db_instance(**reboot.body)
        after = done["DBInstance"]
        return {
            "identifier": ident,
            "rebooted": True,
            "force_failover": params.force_failover,
            "previous_status": status,
            "status": after.get("DBInstanceStatus"),
            "availability_zone": db.get("AvailabilityZone"),
            "mark": reboot_mark(),
            "requests": [tag.model_dump(mode="json"), reboot.model_dump(mode="json")],
        }

    async def rebooted(self, target: Target, params: RebootParams) -> Outcome | None:
        _, ident = self._entry(target)
        async with self.clients.rds() as rds:
            db = await self._describe(rds, ident)
            return await self._found(rds, db, ident)
