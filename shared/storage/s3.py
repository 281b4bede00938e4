"""Object storage (S3-compatible) through aioboto3: one client per process, multipart with bounded concurrency."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError

from shared.errors import Conflict, NotFound, Permanent, StorageError
from shared.runtime.adaptive import THROTTLE_CODES, AdaptiveLimit
from shared.runtime.metrics import observe_s3
from shared.runtime.retry import backoff
from shared.runtime.startup import NotInitialized
from shared.settings import Settings
from shared.storage.s3_spans import trace_calls

MIB = 1024 * 1024
HASH_CHUNK = 4 * MIB  # bytes read at a time when hashing
COPY_MAX_SINGLE = 5 * 1024 * MIB  # S3 CopyObject limit; larger objects copy part by part
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
CORS_MAX_AGE_SEC = 3600  # browsers cache the bucket's answer to a CORS preflight this long, s


def cors_origins(setting: str) -> list[str]:
    """The origins S3_CORS_ORIGINS names (comma-separated, no trailing slash)."""
    return [origin.strip().rstrip("/") for origin in setting.split(",") if origin.strip()]
CHECKSUM_REFUSAL_CODES = frozenset({"NotImplemented", "InvalidRequest", "InvalidArgument", "BadDigest"})
NO_UPLOAD_CODES = frozenset({"404", "NoSuchUpload", "NoSuchKey"})
PART_TRIES = 5  # tries of one multipart part after botocore's own retries gave up on a throttle
PART_RETRY_BASE_SEC = 0.2  # first backoff ceiling between two tries of a part, s (full jitter, doubles)
THROTTLE_STATUSES = frozenset({429, 503})
SERVER_ERROR_STATUS = 500  # an S3 answer from this status on is the server's failure, below it the request's


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    metadata: dict[str, str]  # user metadata (x-amz-meta-*), e.g. sha256
    etag: str = ""  # the server's entity tag (MD5 of a single-part upload)

    @property
    def sha256(self) -> str:
        return self.metadata.get("sha256", "")


async def sha256_file(path: Path) -> str:
    """The file's sha256 (hex), read off the event loop."""
    return await asyncio.to_thread(_sha256_file, path)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def result_key(sha256: str, filename: str) -> str:
    """Content-hashed result key: results/sha256/<2 hex>/<hash>/<filename>."""
    return f"results/sha256/{sha256[:2]}/{sha256}/{filename}"


def staging_prefix(job_id: str) -> str:
    return f"staging/{job_id}/"


class Storage:
    """The project's bucket: reads, writes, server-side copies and signed URLs."""

    def __init__(self, client: Any, presigner: Any, settings: Settings) -> None:
        self._client = client
        self._presigner = presigner
        self.bucket = settings.s3_bucket
        self._part_size = settings.s3_multipart_part_mb * MIB
        self._checksum = settings.s3_checksum
        # parts in flight over all of this process's multipart uploads: lowered on 503 SlowDown, raised after successes
        self.part_limit = AdaptiveLimit(settings.s3_multipart_concurrency)
        client.meta.events.register("needs-retry.s3.UploadPart", self._watch_part_attempt)
        observe_s3(client.meta.events)  # latency and retries of every call, in Prometheus

    def _watch_part_attempt(self, response: Any = None, **_: Any) -> None:
        """Every try of a part botocore makes, retried ones included: a throttle lowers the part limit."""
        if response is not None and _is_throttle(response[0].status_code, response[1]):
            self.part_limit.throttled()

    async def ensure_bucket(self) -> bool:
        """Create the bucket when it does not exist (`clipjet init`); whether it was created."""
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            await self._client.create_bucket(Bucket=self.bucket)
            return True
        return False

    async def bucket_exists(self) -> bool:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _error_code(exc) in NOT_FOUND_CODES | {"NoSuchBucket"}:
                return False
            raise
        return True

    async def require_bucket(self) -> None:
        """The bucket exists (a service waits for `clipjet init` to make it: NotInitialized); other errors raise."""
        if not await self.bucket_exists():
            raise NotInitialized(f"S3 bucket {self.bucket!r} does not exist")

    async def allow_browser_origins(self, origins: list[str], max_age_sec: int) -> None:
        """Bucket CORS: these browser origins may PUT uploads and GET (ranges of) results with signed URLs."""
        rule = {"AllowedOrigins": origins, "AllowedMethods": ["GET", "HEAD", "PUT"], "AllowedHeaders": ["*"],
                "ExposeHeaders": ["ETag", "Content-Length", "Content-Range"], "MaxAgeSeconds": max_age_sec}
        await self._client.put_bucket_cors(Bucket=self.bucket, CORSConfiguration={"CORSRules": [rule]})

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size and recorded sha256, or None when it does not exist."""
        meta = await _unless_missing(self._client.head_object(Bucket=self.bucket, Key=key), "HEAD", key)
        if meta is None:
            return None
        etag = str(meta.get("ETag", "")).strip('"')
        return ObjectInfo(key, int(meta["ContentLength"]), dict(meta.get("Metadata", {})), etag)

    async def put_file(self, key: str, path: Path, content_type: str, metadata: dict[str, str]) -> int:
        """Upload a local file (multipart above one part size, S3_MULTIPART_CONCURRENCY parts in flight).

        `metadata` should carry the file's sha256: readers use it to skip work already done.
        """
        size = (await asyncio.to_thread(path.stat)).st_size
        extra = {"ContentType": content_type, "Metadata": metadata}
        try:
            if size <= self._part_size:
                body = await asyncio.to_thread(path.read_bytes)
                await self._client.put_object(Bucket=self.bucket, Key=key, Body=body, **extra)
            else:
                await self._multipart_put(key, path, size, extra)
        except ClientError as exc:
            raise StorageError(f"storage PUT failed for {key}: {exc}{self._checksum_hint(exc)}") from exc
        return size

    async def _multipart_put(self, key: str, path: Path, size: int, extra: dict[str, Any]) -> None:
        upload = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)
        upload_id = upload["UploadId"]

        async def send(number: int, offset: int) -> dict[str, Any]:
            body = await asyncio.to_thread(_read_range, path, offset, self._part_size)
            for attempt in range(1, PART_TRIES + 1):
                async with self.part_limit.slot():
                    try:
                        part = await self._client.upload_part(
                            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                        )
                    except ClientError as exc:
                        if attempt == PART_TRIES or not _is_throttle(0, exc.response):
                            raise
                    else:
                        self.part_limit.succeeded()
                        return {"PartNumber": number, "ETag": part["ETag"]}
                await asyncio.sleep(backoff(attempt, PART_RETRY_BASE_SEC))
            raise AssertionError("unreachable: the last try returns or raises")

        try:
            parts = await asyncio.gather(
                *(send(i + 1, offset) for i, offset in enumerate(range(0, size, self._part_size)))
            )
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": list(parts)}
            )
        except BaseException:
            await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def _checksum_hint(self, exc: ClientError) -> str:
        """What to change when a store refuses botocore's default flexible checksums (see STORAGE.md)."""
        if self._checksum == "when_supported" and _error_code(exc) in CHECKSUM_REFUSAL_CODES:
            return "; this store may not take botocore's default checksums: set S3_CHECKSUM=when_required"
        return ""

    async def copy(self, source_key: str, key: str, content_type: str) -> None:
        """Server-side copy (no bytes pass through this process), keeping the sha256 metadata."""
        info = await self.head(source_key)
        if info is None:
            raise StorageError(f"storage copy: {source_key} is missing")
        if info.size > COPY_MAX_SINGLE:
            raise StorageError(f"storage copy: {source_key} is over {COPY_MAX_SINGLE} bytes")
        try:
            await self._client.copy_object(
                Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source_key},
                MetadataDirective="REPLACE", ContentType=content_type, Metadata=info.metadata,
            )
        except ClientError as exc:
            raise StorageError(f"storage copy to {key} failed: {exc}") from exc

    async def download(self, key: str, path: Path) -> None:
        async with self._body(key) as body:
            with path.open("wb") as handle:
                while chunk := await body.read(HASH_CHUNK):
                    await asyncio.to_thread(handle.write, chunk)

    @asynccontextmanager
    async def _body(self, key: str) -> AsyncIterator[Any]:
        """The object's body to read (closed on the way out); StorageError when it is missing or unreadable."""
        response = await _unless_missing(self._client.get_object(Bucket=self.bucket, Key=key), "GET", key)
        if response is None:
            raise StorageError(f"storage GET failed for {key}: no such object")
        try:
            yield response["Body"]
        finally:
            response["Body"].close()

    async def read_small(self, key: str, max_bytes: int) -> bytes | None:
        """A small object's bytes (None when it does not exist); one over `max_bytes` is refused."""
        response = await _unless_missing(self._client.get_object(Bucket=self.bucket, Key=key), "GET", key)
        if response is None:
            return None
        body = response["Body"]
        try:
            if int(response.get("ContentLength", 0)) > max_bytes:
                raise Permanent(f"{key} is over {max_bytes} bytes", code="file_too_large")
            return bytes(await body.read())
        finally:
            body.close()

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    async def delete(self, key: str) -> int:
        """Delete one object; the number deleted (0 when it was not there)."""
        if await self.head(key) is None:
            return 0
        await self._client.delete_object(Bucket=self.bucket, Key=key)
        return 1

    async def delete_prefix(self, prefix: str) -> int:
        keys = await self.list_keys(prefix)
        for key in keys:
            await self._client.delete_object(Bucket=self.bucket, Key=key)
        return len(keys)

    async def internal_url(self, key: str, ttl_sec: int) -> str:
        """A signed GET URL on the internal endpoint, for ffmpeg/ffprobe range reads inside the cluster."""
        return await self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=ttl_sec
        )

    async def signed_get_url(self, key: str, ttl_sec: int, filename: str | None = None) -> str:
        """A short-lived signed GET URL for clients (public endpoint)."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        return await self._presigner.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_sec)

    @property
    def client(self) -> Any:
        """The internal-endpoint S3 client (for the upload-specific calls in shared/storage/upload_store.py)."""
        return self._client

    async def start_multipart(self, key: str, content_type: str, metadata: dict[str, str] | None = None) -> str:
        """A multipart upload for a client to fill through signed part URLs; its upload id."""
        upload = await self._client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType=content_type, Metadata=metadata or {}
        )
        return str(upload["UploadId"])

    async def signed_part_url(self, key: str, upload_id: str, part_number: int, ttl_sec: int, length: int) -> str:
        """A part URL whose signature covers the part's exact length: a longer or shorter body is refused."""
        params = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": part_number,
                  "ContentLength": length}
        return await self._presigner.generate_presigned_url("upload_part", Params=params, ExpiresIn=ttl_sec)

    async def stored_parts(self, key: str, upload_id: str) -> list[tuple[int, str, int]]:
        """(part number, ETag, size) of the parts stored so far; StorageError when the upload is unknown."""
        parts: list[tuple[int, str, int]] = []
        try:
            paginator = self._client.get_paginator("list_parts")
            async for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                parts.extend((p["PartNumber"], p["ETag"], int(p["Size"])) for p in page.get("Parts", []))
        except ClientError as exc:
            if _error_code(exc) in NO_UPLOAD_CODES:
                raise NotFound(f"no multipart upload {upload_id!r} at {key!r}", code="upload_not_found") from exc
            raise StorageError(f"listing the parts of {key!r} failed: {_error_code(exc)}") from exc
        return sorted(parts)

    async def complete_multipart(self, key: str, upload_id: str) -> None:
        """Join the stored parts into the object; never over an object already at `key` (If-None-Match:
        `upload_exists`). `upload_incomplete` (the client's error) when nothing is stored yet or object storage
        refuses the parts (e.g. a part other than the last under 5 MiB)."""
        parts = [{"PartNumber": n, "ETag": etag} for n, etag, _ in await self.stored_parts(key, upload_id)]
        if not parts:
            raise Permanent("no part of this upload is stored yet; PUT its parts, then complete it",
                            code="upload_incomplete")
        try:
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
            )
        except ClientError as exc:
            if _error_code(exc) == "PreconditionFailed":
                raise Conflict(f"the upload at {key!r} is already complete; it cannot be replaced",
                               code="upload_exists") from exc
            if _status(exc) < SERVER_ERROR_STATUS:
                raise Permanent(f"object storage refused to join the parts ({_error_code(exc)}); check that every "
                                "part but the last is partSize bytes", code="upload_incomplete") from exc
            raise StorageError(f"completing the upload at {key!r} failed: {_error_code(exc)}") from exc

    async def sha256_object(self, key: str) -> str:
        """The stored object's sha256 (hex), streamed: no local copy."""
        digest = hashlib.sha256()
        async with self._body(key) as body:
            while chunk := await body.read(HASH_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    async def signed_put_url(self, key: str, ttl_sec: int, content_type: str, size: int | None = None) -> str:
        """A client's PUT URL. Its signature covers Content-Type, `If-None-Match: *` (the first PUT creates the
        object, every later one is refused: 412) and, when `size` is given, the exact Content-Length."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "ContentType": content_type, "IfNoneMatch": "*"}
        if size is not None:
            params["ContentLength"] = size
        return await self._presigner.generate_presigned_url("put_object", Params=params, ExpiresIn=ttl_sec)


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(length)


async def _unless_missing(call: Awaitable[dict[str, Any]], verb: str, key: str) -> dict[str, Any] | None:
    """S3's answer to one call on the object at `key`: None when it does not exist, StorageError on any other
    failure."""
    try:
        return await call
    except ClientError as exc:
        if _error_code(exc) in NOT_FOUND_CODES:
            return None
        raise StorageError(f"storage {verb} failed for {key}: {exc}") from exc


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or SERVER_ERROR_STATUS)


def _is_throttle(status: int, parsed: Any) -> bool:
    """Whether a response (its HTTP status, or botocore's parsed error) says the server is overloaded."""
    if status in THROTTLE_STATUSES:
        return True
    error = parsed.get("Error", {}) if isinstance(parsed, dict) else {}
    meta = parsed.get("ResponseMetadata", {}) if isinstance(parsed, dict) else {}
    return str(error.get("Code", "")) in THROTTLE_CODES or meta.get("HTTPStatusCode") in THROTTLE_STATUSES


def s3_config(settings: Settings) -> Config:
    """The one botocore configuration every clipjet S3 client is made with (see STORAGE.md for each store):
    SigV4, S3_ADDRESSING_STYLE, S3_CHECKSUM for both request checksums and response validation (botocore 1.36+
    defaults to when_supported: a CRC32 on every PutObject and UploadPart, in an aws-chunked trailer over HTTPS,
    which stores with partial checksum support, such as Cloudflare R2, refuse)."""
    return Config(
        signature_version="s3v4", s3={"addressing_style": settings.s3_addressing_style},
        request_checksum_calculation=settings.s3_checksum, response_checksum_validation=settings.s3_checksum,
        max_pool_connections=max(10, settings.s3_multipart_concurrency * 2),
        retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},
    )


CLOUDFLARE_COPY_CONDITION = "cf-copy-destination-if-none-match"  # R2's header for a copy's destination condition


def copy_condition_hook(mode: str) -> Any:
    """A botocore before-sign handler for CopyObject carrying S3_COPY_IF_NONE_MATCH out: `If-None-Match` (a copy's
    destination condition, as AWS S3 takes it) kept, renamed to R2's header, or dropped; None for standard."""
    if mode == "standard":
        return None

    def rewrite(request: Any, **_: Any) -> None:
        value = request.headers.get("If-None-Match")
        if value is None:
            return
        del request.headers["If-None-Match"]
        if mode == "cloudflare":
            request.headers[CLOUDFLARE_COPY_CONDITION] = value

    return rewrite


def _prepare(client: Any, settings: Settings) -> None:
    """What every S3 client of the process gets: its copy-condition rewrite and tracing."""
    if hook := copy_condition_hook(settings.s3_copy_if_none_match):
        client.meta.events.register("before-sign.s3.CopyObject", hook)
    trace_calls(client)


@asynccontextmanager
async def open_storage(settings: Settings) -> AsyncIterator[Storage]:
    """One S3 client for the process (plus a signer on the public endpoint when that differs)."""
    session = aioboto3.Session()
    config = s3_config(settings)
    common = {
        "region_name": settings.s3_region,
        "aws_access_key_id": settings.s3_access_key,
        "aws_secret_access_key": settings.s3_secret_key,
        "config": config,
    }
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            session.client("s3", endpoint_url=settings.s3_endpoint_url, **common)
        )
        _prepare(client, settings)
        presigner = client
        if settings.public_s3_endpoint != settings.s3_endpoint_url:
            presigner = await stack.enter_async_context(
                session.client("s3", endpoint_url=settings.public_s3_endpoint, **common)
            )
        yield Storage(client, presigner, settings)
