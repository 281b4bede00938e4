"""`/api/uploads`: signed URLs straight into object storage (file bytes never pass the gateway).

Up to UPLOAD_SINGLE_PUT_MAX_MB a slot is one signed PUT; above, a multipart upload with one signed URL per
part, which a client can resume (`GET /api/uploads/status` lists the stored parts) and then completes.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter

from shared.contracts import UploadDone, UploadPart, UploadRef, UploadSlot, UploadSlotRequest, UploadStatus
from shared.errors import BadRequest, NotFound
from shared.ids import uuid7
from shared.settings import Settings

from .auth import Caller, authenticate
from .openapi import SECURITY, error_responses
from .state import Gateway

UPLOAD_PREFIX = "uploads/"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME_CHARS = 100
MIB = 1024 * 1024
MAX_PARTS = 10_000  # S3's limit on parts per upload


def upload_key(filename: str, owner: str | None) -> str:
    """`uploads/<owner key id>/<uuid7>/<name>` (without auth `uploads/<uuid7>/<name>`): the key names its owner."""
    name = _UNSAFE.sub("_", filename).strip("._")[:MAX_NAME_CHARS] or "source"
    return f"{UPLOAD_PREFIX}{owner}/{uuid7()}/{name}" if owner else f"{UPLOAD_PREFIX}{uuid7()}/{name}"


def owns_upload(caller: Caller, key: str) -> bool:
    """Whether `key` is an upload this caller may use (its own; any upload for an admin or without auth)."""
    if not key.startswith(UPLOAD_PREFIX):
        return False
    return caller.owner is None or caller.admin or key.startswith(f"{UPLOAD_PREFIX}{caller.owner}/")


def part_size_for(size: int, settings: Settings) -> int:
    """UPLOAD_PART_MB, grown in whole MiB when the file would need more than 10,000 parts."""
    return max(settings.upload_part_mb * MIB, math.ceil(size / MAX_PARTS / MIB) * MIB)


def _check_size(size: int | None, settings: Settings) -> None:
    if size is not None and size > settings.max_upload_mb * MIB:
        raise BadRequest(
            f"the file is {size} bytes; uploads are limited to {settings.max_upload_mb} MiB",
            code="upload_too_large", field="sizeBytes",
        )


def check_upload_size(size: int, settings: Settings) -> None:
    """A stored upload over MAX_UPLOAD_MB (a single PUT carries no declared size) is not used."""
    _check_size(size, settings)


def _own_upload(caller: Caller, key: str) -> None:
    """Another key's upload is answered exactly like one that does not exist."""
    if not owns_upload(caller, key):
        raise NotFound(f"no upload at key {key!r}", code="upload_not_found", field="key")


class UploadController(Controller):
    path = "/api/uploads"
    tags = ["uploads"]
    before_request = authenticate
    security = SECURITY

    @post("/", operation_id="createUploadSlot", status_code=201,
          responses=error_responses(400, 401, 413, 415, 422, 429, 503))
    async def create_slot(
        self, gw: NamedDependency[Gateway], caller: NamedDependency[Caller],
        data: JSONBody[UploadSlotRequest | None] = None,
    ) -> UploadSlot:
        """An upload slot: a signed PUT URL, or for a large `sizeBytes` one signed URL per part."""
        request = data or UploadSlotRequest()
        settings, storage = gw.res.settings, gw.res.storage
        _check_size(request.size_bytes, settings)
        key, ttl = upload_key(request.filename, caller.owner), settings.signed_url_ttl_sec
        headers = {"Content-Type": request.content_type}
        size = request.size_bytes
        if size is None or size <= settings.upload_single_put_max_mb * MIB:
            url = await storage.signed_put_url(key, ttl, request.content_type)
            return UploadSlot(key=key, url=url, method="PUT", headers=headers, expires_in_sec=ttl)
        part_size = part_size_for(size, settings)
        async with gw.breakers.s3:
            upload_id = await storage.start_multipart(key, request.content_type)
        parts = [
            UploadPart(part_number=n, url=await storage.signed_part_url(key, upload_id, n, ttl))
            for n in range(1, math.ceil(size / part_size) + 1)
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
        _own_upload(caller, key)
        async with gw.breakers.s3:
            stored = await gw.res.storage.stored_parts(key, upload_id)
        parts = [UploadPart(part_number=n, etag=etag.strip('"'), size=size) for n, etag, size in stored]
        return UploadStatus(key=key, upload_id=upload_id, parts=parts)

    @post("/complete", operation_id="completeUpload", status_code=200,
          responses=error_responses(400, 401, 404, 413, 415, 422, 429, 503))
    async def complete(
        self, gw: NamedDependency[Gateway], caller: NamedDependency[Caller], data: JSONBody[UploadRef]
    ) -> UploadDone:
        """Join a multipart upload's stored parts into the file; then name `key` in a job."""
        _own_upload(caller, data.key)
        storage, settings = gw.res.storage, gw.res.settings
        async with gw.breakers.s3:
            await storage.complete_multipart(data.key, data.upload_id)
            info = await storage.head(data.key)
        if info is None:
            raise BadRequest(f"the upload at {data.key!r} did not complete", code="upload_not_found")
        if info.size > settings.max_upload_mb * MIB:
            await storage.delete(data.key)
            _check_size(info.size, settings)
        return UploadDone(key=data.key, size=info.size)
