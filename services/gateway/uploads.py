"""`/api/uploads`: signed URLs straight into object storage (file bytes never pass the gateway).

Up to UPLOAD_SINGLE_PUT_MAX_MB a slot is one signed PUT; above, a multipart upload with one signed URL per
part, which a client can resume (`GET /api/uploads/status` lists the stored parts) and then completes.
"""

from __future__ import annotations

import math
from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter

from shared.db import keys
from shared.errors import BadRequest, NotFound
from shared.jobs.contracts import UploadDone, UploadPart, UploadRef, UploadSlot, UploadSlotRequest, UploadStatus
from shared.settings import Settings
from shared.storage.upload_keys import UPLOAD_PREFIX, upload_key

from .auth import Caller, authenticate, authenticated
from .body import strict_json
from .formats import require_content_type, require_upload_id, require_upload_key
from .openapi import SECURITY, error_responses
from .quotas import upload_quota_exceeded
from .state import Gateway

MIB = 1024 * 1024
MAX_PARTS = 10_000  # S3's limit on parts per upload
DECLARED_SIZE = "declared-size"  # multipart upload metadata: the sizeBytes the slot was given for, bytes


def owns_upload(caller: Caller, key: str) -> bool:
    """Whether `key` is an upload this caller may use (its own; any upload for an admin or without auth)."""
    if not key.startswith(UPLOAD_PREFIX):
        return False
    return caller.owner is None or caller.admin or key.startswith(f"{UPLOAD_PREFIX}{caller.owner}/")


def part_size_for(size: int, settings: Settings) -> int:
    """UPLOAD_PART_MB, grown in whole MiB when the file would need more than 10,000 parts."""
    return max(settings.upload_part_mb * MIB, math.ceil(size / MAX_PARTS / MIB) * MIB)


def part_lengths(size: int, part_size: int) -> list[tuple[int, int]]:
    """(part number, exact length) of each part: every part URL is signed for its length."""
    return [(n, min(part_size, size - offset)) for n, offset in enumerate(range(0, size, part_size), start=1)]


def put_headers(content_type: str) -> dict[str, str]:
    """The headers a single PUT must send as signed (besides the Content-Length of a slot with `sizeBytes`)."""
    return {"Content-Type": content_type, "If-None-Match": "*"}


def _check_size(size: int | None, settings: Settings) -> None:
    if size is not None and size > settings.max_upload_mb * MIB:
        raise BadRequest(
            f"the file is {size} bytes; uploads are limited to {settings.max_upload_mb} MiB",
            code="upload_too_large", field="sizeBytes",
        )


def check_upload_size(size: int, settings: Settings) -> None:
    """A stored upload over MAX_UPLOAD_MB (a single PUT carries no declared size) is not used."""
    _check_size(size, settings)


def _own_upload(caller: Caller, key: str, upload_id: str) -> None:
    """The key and upload id have their real forms (checked before object storage sees them); another key's upload
    is answered exactly like one that does not exist."""
    require_upload_key(key, "key")
    require_upload_id(upload_id, "uploadId")
    if not owns_upload(caller, key):
        raise NotFound(f"no upload at key {key!r}", code="upload_not_found", field="key")


UPLOAD_SLOTS_PATH = "/api/uploads"


class UploadController(Controller):
    path = UPLOAD_SLOTS_PATH
    tags = ["uploads"]
    before_request = authenticate
    security = SECURITY

    @post("/", operation_id="createUploadSlot", status_code=201,
          before_request=authenticated(strict_json(UploadSlotRequest)),
          responses=error_responses(400, 401, 413, 415, 422, 429, 503))
    async def create_slot(
        self, gw: NamedDependency[Gateway], caller: NamedDependency[Caller], data: JSONBody[UploadSlotRequest],
    ) -> UploadSlot:
        """An upload slot for `sizeBytes`: a signed PUT URL, or for a large file one signed URL per part."""
        request = data
        settings, storage = gw.res.settings, gw.res.storage
        require_content_type(request.content_type, "contentType")
        _check_size(request.size_bytes, settings)
        key, ttl = upload_key(request.filename, caller.owner), settings.signed_url_ttl_sec
        size = request.size_bytes
        if caller.owner is not None and caller.quotas is not None:
            async with gw.breakers.db:
                admitted = await keys.admit_upload(gw.res.db, caller.owner, key, size, caller.quotas)
            if not admitted:
                raise upload_quota_exceeded(caller.quotas)
        if size <= settings.upload_single_put_max_mb * MIB:
            url = await storage.signed_put_url(key, ttl, request.content_type, size)
            return UploadSlot(key=key, url=url, method="PUT", headers=put_headers(request.content_type),
                              expires_in_sec=ttl)
        part_size = part_size_for(size, settings)
        async with gw.breakers.s3:
            upload_id = await storage.start_multipart(key, request.content_type, {DECLARED_SIZE: str(size)})
        parts = [
            UploadPart(part_number=n, url=await storage.signed_part_url(key, upload_id, n, ttl, length))
            for n, length in part_lengths(size, part_size)
        ]
        return UploadSlot(
            key=key, method="PUT", headers={}, expires_in_sec=ttl, upload_id=upload_id, part_size=part_size,
            parts=parts,
        )

    @get("/status", operation_id="getUploadStatus", responses=error_responses(401, 404, 422, 429, 503))
    async def status(
        self, gw: NamedDependency[Gateway], caller: NamedDependency[Caller], key: Annotated[str, QueryParameter()],
        upload_id: Annotated[str, QueryParameter(name="uploadId")],
    ) -> UploadStatus:
        """The parts object storage already holds, with fresh URLs for resuming."""
        _own_upload(caller, key, upload_id)
        async with gw.breakers.s3:
            stored = await gw.res.storage.stored_parts(key, upload_id)
        parts = [UploadPart(part_number=n, etag=etag.strip('"'), size=size) for n, etag, size in stored]
        return UploadStatus(key=key, upload_id=upload_id, parts=parts)

    @post("/complete", operation_id="completeUpload", status_code=200,
          before_request=authenticated(strict_json(UploadRef)),
          responses=error_responses(400, 401, 404, 413, 415, 422, 429, 503))
    async def complete(
        self, gw: NamedDependency[Gateway], caller: NamedDependency[Caller], data: JSONBody[UploadRef]
    ) -> UploadDone:
        """Join a multipart upload's stored parts into the file; then name `key` in a job."""
        _own_upload(caller, data.key, data.upload_id)
        storage, settings = gw.res.storage, gw.res.settings
        async with gw.breakers.s3:
            await storage.complete_multipart(data.key, data.upload_id)
            info = await storage.head(data.key)
        if info is None:
            raise BadRequest(f"the upload at {data.key!r} did not complete", code="upload_not_found")
        if info.size > settings.max_upload_mb * MIB:
            await storage.delete(data.key)
            _check_size(info.size, settings)
        declared = info.metadata.get(DECLARED_SIZE)
        if declared is not None and int(declared) != info.size:
            await storage.delete(data.key)
            raise BadRequest(
                f"the uploaded parts hold {info.size} bytes, not the {declared} the slot was given for; get a new "
                f"slot and upload every part", code="upload_incomplete", field="key",
            )
        return UploadDone(key=data.key, size=info.size)
