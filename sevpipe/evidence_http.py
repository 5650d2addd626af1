"""Evidence bundles (``evidence.collect``) on their incident, over HTTP:

- ``GET /api/v1/incidents/{id}/evidence`` (viewer): the incident's bundles, oldest first:
  name, size, sha256, created_at, action_id, and the path to download it;
- ``GET /api/v1/incidents/{id}/evidence/{name}`` (viewer): the bundle's bytes
  (``application/gzip``, an attachment named ``<name>.tar.gz``; ``.tar.gz`` may end the name
  asked for).

An incident the store does not hold, or a bundle the evidence store does not, is a 404. A
name that is not a bundle's (``../x``, anything but letters, digits, ``._-``) is a 400 and
never reaches the store, so nothing outside the incident's bundles is ever read.
``evidence_store_of`` is the store settings choose (the actions stage writes to the same).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from aiohttp import web

from actions.aws_config import AwsConfig
from actions.evidence_s3 import S3Store
from actions.evidence_store import (
    SUFFIX,
    DirectoryStore,
    EvidenceStore,
    EvidenceStoreError,
    InvalidName,
    checked,
)
from classifier.api import Authorize, caller
from classifier.api import error_response as _error
from classifier.api import json_response as _json
from sevpipe.settings import Settings
from store.base import IncidentStore, StoreError

log = logging.getLogger(__name__)


def evidence_store_of(settings: Settings) -> EvidenceStore:
    """S3 when ``evidence_bucket`` is set (through ``aws``, or AWS's defaults without it),
    else the directory ``evidence_dir`` (default ``<data_dir>/evidence``)."""
    if settings.evidence_bucket:
        return S3Store(settings.evidence_bucket, settings.aws or AwsConfig())
    return DirectoryStore(settings.evidence_dir or settings.data_dir / "evidence")


def evidence_routes(
    settings: Settings, incidents: IncidentStore, authorize: Authorize
) -> list[web.RouteDef]:
    """The evidence API's routes, on the store settings choose."""
    return EvidenceApi(incidents, evidence_store_of(settings), authorize).routes()


class EvidenceApi:
    def __init__(
        self, incidents: IncidentStore, evidence: EvidenceStore, authorize: Authorize
    ) -> None:
        self.incidents = incidents
        self.evidence = evidence
        self.authorize = authorize

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/incidents/{id}/evidence", self.list),
            web.get("/api/v1/incidents/{id}/evidence/{name}", self.download),
        ]

    async def _incident(self, request: web.Request) -> str | web.Response:
        """The incident's id, once the caller may view it and the store holds it."""
        if isinstance(who := caller(self.authorize, request, "viewer"), web.Response):
            return who
        incident_id = request.match_info["id"]
        try:
            if await self.incidents.get_incident(incident_id) is None:
                return _error(404, f"no incident {incident_id}")
        except StoreError as exc:
            return _error(503, f"store unavailable: {exc}")
        return incident_id

    async def _bundle(self, request: web.Request) -> tuple[str, str] | web.Response:
        """(incident id, bundle name) asked for: a name checked before anything is read."""
        if isinstance(who := caller(self.authorize, request, "viewer"), web.Response):
            return who
        try:
            name = checked(request.match_info["name"].removesuffix(SUFFIX), "bundle name")
        except InvalidName as exc:
            return _error(400, str(exc), field="name")
        incident_id = await self._incident(request)
        return incident_id if isinstance(incident_id, web.Response) else (incident_id, name)

    async def list(self, request: web.Request) -> web.Response:
        incident_id = await self._incident(request)
        if isinstance(incident_id, web.Response):
            return incident_id
        try:
            bundles = await self.evidence.list(incident_id)
        except (InvalidName, EvidenceStoreError) as exc:
            return _store_error(exc)
        base = f"/api/v1/incidents/{incident_id}/evidence"
        return _json(
            200,
            {
                "incident_id": incident_id,
                "bundles": [{**b.to_json(), "download": f"{base}/{b.name}"} for b in bundles],
            },
        )

    async def download(self, request: web.Request) -> web.StreamResponse:
        asked = await self._bundle(request)
        if isinstance(asked, web.Response):
            return asked
        incident_id, name = asked
        try:
            data = await self.evidence.get(incident_id, name)
        except (InvalidName, EvidenceStoreError) as exc:
            return _store_error(exc)
        if data is None:
            return _error(404, f"incident {incident_id} has no evidence bundle {name}")
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        return web.Response(
            body=data,
            content_type="application/gzip",
            headers={
                "Content-Disposition": f'attachment; filename="{name}{SUFFIX}"',
                "ETag": f'"{digest}"',
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )


def _store_error(exc: InvalidName | EvidenceStoreError) -> web.Response:
    if isinstance(exc, InvalidName):
        return _error(400, str(exc))
    log.warning("evidence store: %s", exc)
    return _error(503, f"evidence store unavailable: {exc}")
