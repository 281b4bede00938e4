"""Object-store calls only uploads need: a copy pinned to the checked ETag, and listing/removing old uploads.

A client's slot writes `uploads/<uuid>/<name>`; no job reads that key after its fetch: the first job copies it
server-side, pinned with `x-amz-copy-source-if-match` to the ETag it saw, to `sources/<hash of the key>/<ETag>`
(written once: `If-None-Match: *`), and checks and hashes the copy. Every later stage, and every later job on the
same key and ETag, reads that copy, which no client can write.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from shared.errors import Permanent, StorageError
from shared.storage.s3 import COPY_MAX_SINGLE, Storage

MIB = 1024 * 1024
COPY_PART_BYTES = 512 * MIB  # part size of a multipart server-side copy (objects over COPY_MAX_SINGLE), bytes
COPY_PARTS_IN_FLIGHT = 4  # UploadPartCopy calls at once
CHANGED_CODES = frozenset({"PreconditionFailed", "412"})
COPY_PREFIX = "sources/"  # checked copies of uploads
KEY_HASH_CHARS = 32  # hex characters of the upload key's sha256 naming its copies' folder


class UploadChanged(Permanent):
    """The upload's bytes changed between the check and the copy (a second PUT)."""

    code = "upload_changed"


def _changed(key: str) -> UploadChanged:
    return UploadChanged(f"the upload at {key!r} changed while it was being read; get a new slot and upload the "
                         f"file again")


def copy_prefix(upload_key: str) -> str:
    """The folder holding the checked copies of one upload key."""
    return f"{COPY_PREFIX}{hashlib.sha256(upload_key.encode()).hexdigest()[:KEY_HASH_CHARS]}/"


def copy_key(upload_key: str, etag: str) -> str:
    """Where the bytes `etag` names at `upload_key` are copied (an ETag is hex, with '-<parts>' for multipart)."""
    return f"{copy_prefix(upload_key)}{etag}"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def copy_pinned(storage: Storage, source: str, key: str, etag: str, size: int, content_type: str,
                      part_bytes: int = COPY_PART_BYTES) -> None:
    """Server-side copy of `source` to `key` only while its ETag is `etag` (UploadChanged otherwise), and only when
    `key` is still free (a copy already there is kept: `key` is written once); objects over COPY_MAX_SINGLE (or
    `part_bytes`, when smaller) are copied part by part, each part pinned the same way."""
    client, bucket = storage.client, storage.bucket
    pin = {"CopySource": {"Bucket": bucket, "Key": source}, "CopySourceIfMatch": f'"{etag}"'}
    try:
        if size <= min(COPY_MAX_SINGLE, part_bytes):
            await client.copy_object(Bucket=bucket, Key=key, ContentType=content_type, IfNoneMatch="*", **pin)
            return
        upload_id = (await client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type))["UploadId"]
        try:
            await _copy_parts(client, bucket, key, upload_id, pin, size, part_bytes)
        except BaseException:
            await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
    except ClientError as exc:
        if _code(exc) in CHANGED_CODES:
            if await storage.head(key) is not None:  # copied before (by another job): that copy stands
                return
            raise _changed(source) from exc
        if _code(exc) in {"404", "NoSuchKey", "NotFound"}:
            raise Permanent(f"no upload at key {source!r}; upload the file first", code="upload_not_found") from exc
        hint = "; if the store does not take If-None-Match on CopyObject, set S3_COPY_IF_NONE_MATCH (STORAGE.md)" \
            if _code(exc) == "NotImplemented" else ""
        raise StorageError(f"copying the upload {source!r} failed: {_code(exc)}{hint}") from exc


async def _copy_parts(client: Any, bucket: str, key: str, upload_id: str, pin: dict[str, Any], size: int,
                      part_bytes: int) -> None:
    gate = asyncio.Semaphore(COPY_PARTS_IN_FLIGHT)

    async def part(number: int, start: int) -> dict[str, Any]:
        end = min(size, start + part_bytes) - 1
        async with gate:
            done = await client.upload_part_copy(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                                 CopySourceRange=f"bytes={start}-{end}", **pin)
        return {"PartNumber": number, "ETag": done["CopyPartResult"]["ETag"]}

    parts = await asyncio.gather(*(part(i + 1, start) for i, start in enumerate(range(0, size, part_bytes))))
    await client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, IfNoneMatch="*",
                                           MultipartUpload={"Parts": list(parts)})


async def objects_before(storage: Storage, prefix: str, cutoff: datetime, limit: int) -> list[str]:
    """Keys under `prefix` last written before `cutoff`, at most `limit`."""
    found: list[str] = []
    paginator = storage.client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=storage.bucket, Prefix=prefix):
        found.extend(o["Key"] for o in page.get("Contents", []) if o["LastModified"] < cutoff)
        if len(found) >= limit:
            break
    return found[:limit]


async def multipart_before(storage: Storage, prefix: str, cutoff: datetime, limit: int) -> list[tuple[str, str]]:
    """(key, upload id) of unfinished multipart uploads under `prefix` started before `cutoff`, at most `limit`."""
    found: list[tuple[str, str]] = []
    paginator = storage.client.get_paginator("list_multipart_uploads")
    async for page in paginator.paginate(Bucket=storage.bucket, Prefix=prefix):
        found.extend((u["Key"], u["UploadId"]) for u in page.get("Uploads", []) if u["Initiated"] < cutoff)
        if len(found) >= limit:
            break
    return found[:limit]


async def abort_multipart(storage: Storage, key: str, upload_id: str) -> None:
    try:
        await storage.client.abort_multipart_upload(Bucket=storage.bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if _code(exc) not in {"404", "NoSuchUpload"}:
            raise StorageError(f"aborting the upload at {key!r} failed: {_code(exc)}") from exc
