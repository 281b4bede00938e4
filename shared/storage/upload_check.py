"""Before a job may use an upload: it exists, is within MAX_UPLOAD_MB, is media (sniffed), and its sha256 is known;
and the job reads only the bytes that were checked.

The first job on an upload copies it server-side, pinned to the ETag its HEAD showed
(`x-amz-copy-source-if-match`), to `sources/<hash of the key>/<ETag>` (written once); the sniff and the sha256
read that copy, and every later stage (trimmer, encoder, transcriber) and later job reads it too, so a second
PUT to the slot can change nothing a job cuts. The first check of a key is
recorded in PostgreSQL (`upload_checks`: key, ETag, size, sha256), never in object metadata a client could write:
a later job finding the same bytes skips the sniff and hash; one finding other bytes at a used key is refused
(`upload_changed`). The sha256 identifies the source bytes for de-duplication in the request fingerprint.
"""

from __future__ import annotations

import asyncio

import asyncpg

from shared.db import uploads
from shared.errors import Permanent, SourceUnreadable
from shared.media.probe import probe
from shared.settings import Settings
from shared.storage.s3 import ObjectInfo, Storage
from shared.storage.upload_store import UploadChanged, copy_key, copy_pinned

MIB = 1024 * 1024
SNIFF_URL_TTL_SEC = 600  # lifetime of the signed internal URL the sniff reads through, s
COPY_CONTENT_TYPE = "application/octet-stream"


class UploadRejected(Permanent):
    """An upload a job may not use (too large, not media)."""

    code = "upload_rejected"


def _replaced(key: str) -> UploadChanged:
    return UploadChanged(f"the upload at {key!r} was replaced after a job used it; an upload key names one file "
                         f"for good: get a new slot for other bytes")


async def verify_upload(storage: Storage, db: asyncpg.Pool, key: str, settings: Settings) -> ObjectInfo:
    """The checked copy of the upload (made now when missing, pinned to the ETag seen): its key, size and the
    sha256 of its bytes. Raises a Permanent error with a stable code when the upload may not be used."""
    info, first = await asyncio.gather(storage.head(key), uploads.first_use(db, key))  # two round trips at once
    if info is None:
        raise SourceUnreadable(f"no upload at key {key!r}; upload the file first", code="upload_not_found")
    if info.size > settings.max_upload_mb * MIB:
        raise UploadRejected(
            f"the upload is {info.size} bytes; uploads are limited to {settings.max_upload_mb} MiB",
            code="upload_too_large",
        )
    if info.size == 0:
        raise SourceUnreadable("the upload is empty (0 bytes); upload the media file again")
    if first is not None and (first["etag"], first["size"]) != (info.etag, info.size):
        raise _replaced(key)
    copy_to = copy_key(key, info.etag)
    if first is not None:
        copied, _ = await asyncio.gather(storage.head(copy_to), uploads.touch(db, key))
        if copied is None:
            await copy_pinned(storage, key, copy_to, info.etag, info.size, COPY_CONTENT_TYPE)
        return ObjectInfo(copy_to, info.size, {"sha256": first["sha256"]}, info.etag)
    await copy_pinned(storage, key, copy_to, info.etag, info.size, COPY_CONTENT_TYPE)
    try:
        await probe(await storage.internal_url(copy_to, SNIFF_URL_TTL_SEC))
    except SourceUnreadable as exc:
        raise SourceUnreadable(  # the code the API always gave for unreadable media
            f"the uploaded file is not audio or video clipjet can read ({exc.message}); upload a media file"
        ) from exc
    digest = await storage.sha256_object(copy_to)
    held = await uploads.record_check(db, key, info.etag, info.size, digest)
    if (held["etag"], held["size"], held["sha256"]) != (info.etag, info.size, digest):  # other bytes came first
        raise _replaced(key)
    return ObjectInfo(copy_to, info.size, {"sha256": digest}, info.etag)
