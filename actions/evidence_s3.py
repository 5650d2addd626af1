"""Evidence bundles in S3 (settings ``evidence_bucket``, through the ``aws`` settings and
:mod:`actions.aws_client`): key ``evidence/<incident>/<name>.tar.gz``; the bundle's size,
sha256, created_at and action_id as object metadata (listing reads them with one HEAD per
bundle); the body's SHA-256 sent with the PUT, for S3 to verify. AWS errors are mapped by
:mod:`actions.aws_errors` and carried as :class:`EvidenceStoreError` with their
``retriable``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from botocore.exceptions import ClientError

from actions.aws_client import AwsClients, aws_request
from actions.aws_config import AwsConfig
from actions.aws_errors import AwsError, AwsNotFound
from actions.evidence_store import (
    MAX_LIST,
    SUFFIX,
    BundleInfo,
    EvidenceStoreError,
    checked,
    is_safe,
)
from schemas.actions import ApiRequest

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

KEY_PREFIX: Final = "evidence/"


class _S3Clients(AwsClients):
    def s3(self) -> AbstractAsyncContextManager[S3Client]:
        return self._open("s3", lambda kw: self.session.create_client("s3", **kw))


def _store_error(exc: AwsError) -> EvidenceStoreError:
    return EvidenceStoreError(str(exc), retriable=exc.retriable)


class S3Store:
    def __init__(self, bucket: str, aws: AwsConfig) -> None:
        self.bucket = bucket
        self.clients = _S3Clients(aws)

    def key(self, incident_id: str, name: str) -> str:
        incident, bundle = checked(incident_id, "incident id"), checked(name, "bundle name")
        return f"{KEY_PREFIX}{incident}/{bundle}{SUFFIX}"

    def write_request(self, incident_id: str, name: str) -> ApiRequest:
        params = {"Bucket": self.bucket, "Key": self.key(incident_id, name)}
        return aws_request("s3", "PutObject", params)

    async def put(
        self, incident_id: str, name: str, data: bytes, *, action_id: str, created_at: datetime
    ) -> BundleInfo:
        key = self.key(incident_id, name)
        digest = await asyncio.to_thread(hashlib.sha256, data)
        info = BundleInfo(name, len(data), digest.hexdigest(), created_at, action_id)
        try:
            async with self.clients.s3() as s3:
                await s3.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    ContentType="application/gzip",
                    ChecksumSHA256=base64.b64encode(digest.digest()).decode(),
                    Metadata=_metadata(info),
                )
        except AwsError as exc:
            raise _store_error(exc) from exc
        return info

    async def list(self, incident_id: str) -> list[BundleInfo]:
        prefix = f"{KEY_PREFIX}{checked(incident_id, 'incident id')}/"
        try:
            async with self.clients.s3() as s3:
                names: list[str] = []
                pages = s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix
                )
                async for page in pages:
                    for obj in page.get("Contents", []):
                        name = obj.get("Key", "").removeprefix(prefix)
                        if name.endswith(SUFFIX) and is_safe(name.removesuffix(SUFFIX)):
                            names.append(name.removesuffix(SUFFIX))
                    if len(names) >= MAX_LIST:
                        break
                gate = asyncio.Semaphore(8)

                async def head(name: str) -> BundleInfo | None:
                    async with gate:
                        return await self._head(s3, incident_id, name)

                found = await asyncio.gather(*(head(n) for n in names[:MAX_LIST]))
        except AwsError as exc:
            raise _store_error(exc) from exc
        listed = [i for i in found if i is not None]
        listed.sort(key=lambda i: (i.created_at, i.name))
        return listed

    async def _head(self, s3: S3Client, incident_id: str, name: str) -> BundleInfo | None:
        try:
            head = await s3.head_object(Bucket=self.bucket, Key=self.key(incident_id, name))
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None  # none, or deleted between the listing and now
            raise
        meta = head.get("Metadata", {})
        try:
            made = datetime.fromisoformat(meta["created-at"])
        except (KeyError, ValueError):
            made = head["LastModified"]
        size = int(head["ContentLength"])
        return BundleInfo(
            name, size, meta.get("sha256") or None, made, meta.get("action-id") or None
        )

    async def get(self, incident_id: str, name: str) -> bytes | None:
        key = self.key(incident_id, name)
        try:
            async with self.clients.s3() as s3:
                answer = await s3.get_object(Bucket=self.bucket, Key=key)
                async with answer["Body"] as body:
                    return await body.read()
        except AwsNotFound:
            return None
        except AwsError as exc:
            raise _store_error(exc) from exc

    async def info(self, incident_id: str, name: str) -> BundleInfo | None:
        try:
            async with self.clients.s3() as s3:
                return await self._head(s3, incident_id, name)
        except AwsNotFound:
            return None
        except AwsError as exc:
            raise _store_error(exc) from exc


def _metadata(info: BundleInfo) -> dict[str, str]:
    return {
        "sha256": info.sha256 or "",
        "created-at": info.created_at.astimezone(UTC).isoformat(),
        "action-id": info.action_id or "",
    }
