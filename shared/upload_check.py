"""Before a job may use an upload: it exists, is within MAX_UPLOAD_MB, is media (sniffed), and its sha256 is known.

The check is recorded in PostgreSQL (`upload_checks`, keyed by the object's key, ETag and size: an overwrite
changes them), never in object metadata a client could write, so later jobs on the same bytes skip it. The
sha256 identifies the source bytes for de-duplication in the request fingerprint.
"""

from __future__ import annotations

import asyncpg

from shared.db import uploads
from shared.errors import Permanent, SourceUnreadable
from shared.media.probe import probe
from shared.settings import Settings
from shared.storage import ObjectInfo, Storage

MIB = 1024 * 1024
SNIFF_URL_TTL_SEC = 600  # lifetime of the signed internal URL the sniff reads through, s


class UploadRejected(Permanent):
    """An upload a job may not use (too large, not media)."""

    code = "upload_rejected"


async def verify_upload(storage: Storage, db: asyncpg.Pool, key: str, settings: Settings) -> ObjectInfo:
    """The upload's info with its sha256 in metadata; raises a Permanent error with a stable code otherwise."""
    info = await storage.head(key)
    if info is None:
        raise SourceUnreadable(f"no upload at key {key!r}; upload the file first", code="upload_not_found")
    if info.size > settings.max_upload_mb * MIB:
        raise UploadRejected(
            f"the upload is {info.size} bytes; uploads are limited to {settings.max_upload_mb} MiB",
            code="upload_too_large",
        )
    if info.size == 0:
        raise SourceUnreadable("the upload is empty (0 bytes); upload the media file again")
    digest = await uploads.checked_sha256(db, key, info.etag, info.size)
    if digest is None:
        try:
            await probe(await storage.internal_url(key, SNIFF_URL_TTL_SEC))
        except SourceUnreadable as exc:
            raise SourceUnreadable(  # the code the API always gave for unreadable media
                f"the uploaded file is not audio or video clipjet can read ({exc.message}); upload a media file"
            ) from exc
        digest = await storage.sha256_object(key)
        await uploads.record_check(db, key, info.etag, info.size, digest)
    return ObjectInfo(info.key, info.size, {**info.metadata, "sha256": digest}, info.etag)
