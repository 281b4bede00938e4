"""Cloudflare R2 and other S3-compatible stores: every storage path of the service (upload slots, single and
multipart; the fetcher's pinned copy; stages' PUTs and signed reads; signed result URLs; the reaper's deletes)
against SeaweedFS behind a proxy that refuses what R2 refuses (tests/r2_rules.py), with R2's settings:
region `auto`, S3_CHECKSUM=when_required."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import msgspec
import pytest
from botocore.exceptions import ClientError
from litestar.testing import AsyncTestClient

from services.init import init_storage
from services.reaper.handler import reap_once
from shared.errors import StorageError
from shared.media.testpattern import make_test_pattern
from shared.runtime.resources import Resources
from shared.settings import Settings, load_settings
from shared.storage.s3 import open_storage, result_key
from shared.storage.upload_store import copy_pinned
from tests.conftest import Servers, Workers, make_settings, wait_for_job
from tests.r2_rules import r2_refusal
from tests.s3_fault_proxy import FaultProxy, Request, S3Error

MIB = 1024 * 1024
SET_EXPIRED = "UPDATE jobs SET expires_at = now() - interval '1 second' WHERE id = $1"


@pytest.fixture
def r2_proxy(servers: Servers) -> Iterator[FaultProxy]:
    """The R2-like proxy in front of the session's SeaweedFS (its own event loop: the gateway under test and
    ffmpeg read through it while this test's loop waits)."""
    upstream = urlsplit(servers.s3.url).port
    assert upstream is not None
    with FaultProxy(upstream, refuse=r2_refusal).in_thread() as proxy:
        yield proxy


@pytest.fixture
def settings(servers: Servers, tmp_path: Path, r2_proxy: FaultProxy, request: pytest.FixtureRequest) -> Settings:
    """This test's settings (conftest's), on the R2-like proxy with R2's region and checksum mode."""
    marker = request.node.get_closest_marker("settings")
    return make_settings(servers, tmp_path, **{
        "s3_endpoint_url": r2_proxy.url, "s3_region": "auto", "s3_copy_if_none_match": "cloudflare",
        **(marker.kwargs if marker else {})})


@pytest.fixture(scope="session")
def two_part_video(media_dir: Path) -> Path:
    """Over 5 MiB: a multipart upload slot of two parts."""
    return make_test_pattern(media_dir / "r2-two-parts.mp4", seconds=14, video_bitrate="4M")


def _regions(seen: list[Request]) -> set[str]:
    """The SigV4 regions the requests were signed for (header or presigned query)."""
    found = set()
    for request in seen:
        auth = request.headers.get("authorization", "")
        if "Credential=" in auth:
            found.add(auth.split("Credential=")[1].split("/")[2])
        elif credential := parse_qs(urlsplit(request.target).query).get("X-Amz-Credential"):
            found.add(unquote(credential[0]).split("/")[2])
    return found


@pytest.mark.settings(upload_single_put_max_mb=1, upload_part_mb=5, s3_multipart_part_mb=5)
async def test_a_job_from_a_multipart_upload_to_the_reaper_on_an_r2_like_store(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, r2_proxy: FaultProxy,
    two_part_video: Path, tmp_path: Path,
) -> None:
    data = two_part_video.read_bytes()
    slot = (await client.post("/api/uploads", json={
        "filename": "talk.mp4", "contentType": "video/mp4", "sizeBytes": len(data)})).json()
    size = slot["partSize"]
    assert len(slot["parts"]) == 2
    async with httpx.AsyncClient() as s3:
        for part, start in zip(slot["parts"], range(0, len(data), size), strict=True):
            put = await s3.put(part["url"], content=data[start:start + size])
            assert put.status_code == 200, put.text
    done = await client.post("/api/uploads/complete", json={"key": slot["key"], "uploadId": slot["uploadId"]})
    assert done.status_code == 200, done.text

    workers.start()
    response = await client.post("/api/jobs", json={  # a poster too: the uploader promotes both (server-side copies)
        "source": {"type": "upload", "key": slot["key"]}, "startSec": 3, "endSec": 7, "poster": {}})
    job = await wait_for_job(client, response.json()["id"])
    assert job["status"] == "done", (job.get("errorCode"), job.get("errorMessage"))
    async with httpx.AsyncClient() as http:  # the signed result URL, through the R2-like endpoint
        clip = await http.get(job["urls"]["video"])
    assert clip.status_code == 200
    assert hashlib.sha256(clip.content).hexdigest() == job["result"]["sha256"]

    # a stage's own multipart PUT (over S3_MULTIPART_PART_MB), read back whole
    big = tmp_path / "big.bin"
    big.write_bytes(data * 2)
    await resources.storage.put_file("staging/r2/big.bin", big, "application/octet-stream", {})
    back = tmp_path / "back.bin"
    await resources.storage.download("staging/r2/big.bin", back)
    assert back.read_bytes() == big.read_bytes()

    key = result_key(job["result"]["sha256"], "clip.mp4")
    await resources.db.execute(SET_EXPIRED, uuid.UUID(job["id"]))
    report = await reap_once(resources)
    assert report.errors == [] and report.results_deleted == 2  # the clip and the poster
    assert await resources.storage.head(key) is None

    assert r2_proxy.refused == []
    seen = r2_proxy.seen
    assert _regions(seen) == {"auto"}
    assert any(r.is_part_upload and "X-Amz-Signature=" in r.target for r in seen)  # the client's signed parts
    assert any(r.is_part_upload and "authorization" in r.headers for r in seen)  # the stage's own parts
    pinned = [r for r in seen if r.method == "PUT" and "/sources/" in r.target]  # the fetcher's pinned copy
    assert pinned and all(r.headers.get("cf-copy-destination-if-none-match") == "*" for r in pinned)
    assert any(r.method == "PUT" and "/results/" in r.target and "x-amz-copy-source" in r.headers for r in seen)
    assert any(r.method == "DELETE" for r in seen)  # the reaper
    assert any(r.method == "GET" and "range" in r.headers and "X-Amz-Signature=" in r.target for r in seen)  # ffmpeg
    assert not any(name.startswith("x-amz-checksum-") for r in seen for name in r.headers)


async def test_a_single_put_upload_slot_is_written_once_on_an_r2_like_store(
    client: AsyncTestClient[Any], r2_proxy: FaultProxy, sample_video: Path
) -> None:
    """A single-PUT slot's signed URL covers If-None-Match: * (R2 takes it on PutObject): the second PUT is 412."""
    data = sample_video.read_bytes()
    slot = (await client.post("/api/uploads", json={
        "filename": "talk.mp4", "contentType": "video/mp4", "sizeBytes": len(data)})).json()
    async with httpx.AsyncClient() as s3:
        first = await s3.put(slot["url"], content=data, headers=slot["headers"])
        again = await s3.put(slot["url"], content=data, headers=slot["headers"])
    assert (first.status_code, again.status_code) == (200, 412)
    puts = [r for r in r2_proxy.seen if r.method == "PUT" and "X-Amz-Signature=" in r.target]
    assert len(puts) == 2 and all(r.headers.get("if-none-match") == "*" for r in puts)
    signed = parse_qs(urlsplit(slot["url"]).query)["X-Amz-SignedHeaders"][0].split(";")
    assert "if-none-match" in signed  # a client cannot drop it
    assert r2_proxy.refused == [] and _regions(puts) == {"auto"}


@pytest.mark.settings(s3_checksum="when_supported")
async def test_botocore_default_checksums_are_what_r2_refuses(
    resources: Resources, settings: Settings, r2_proxy: FaultProxy, tmp_path: Path
) -> None:
    """botocore's own default (when_supported) puts a CRC32 on every PutObject: R2 keeps CRC32 only per part."""
    small = tmp_path / "small.bin"
    small.write_bytes(b"clip bytes")
    with pytest.raises(StorageError, match=r"NotImplemented.*set S3_CHECKSUM=when_required"):
        await resources.storage.put_file("staging/r2/small.bin", small, "application/octet-stream", {})
    (request, error), = r2_proxy.refused
    assert error.code == "NotImplemented" and "x-amz-checksum-crc32" in request.headers


@pytest.mark.parametrize(("mode", "sent"), [("cloudflare", {"cf-copy-destination-if-none-match": "*"}),
                                            ("off", {}), ("standard", None)])
async def test_a_copy_says_write_once_the_way_the_store_takes_it(
    resources: Resources, settings: Settings, r2_proxy: FaultProxy, mode: str, sent: dict[str, str] | None
) -> None:
    """S3_COPY_IF_NONE_MATCH: R2 takes a copy's destination condition only as its own header (the standard
    If-None-Match on CopyObject is refused by the R2-like proxy: `sent` None)."""
    await resources.storage.client.put_object(Bucket=settings.s3_bucket, Key="uploads/a/talk.mp4", Body=b"bytes")
    etag = (await resources.storage.head("uploads/a/talk.mp4")).etag
    async with open_storage(msgspec.structs.replace(settings, s3_copy_if_none_match=mode)) as storage:
        copying = copy_pinned(storage, "uploads/a/talk.mp4", "sources/a/copy", etag, 5, "video/mp4")
        if sent is None:
            with pytest.raises(StorageError, match=r"NotImplemented; .* set S3_COPY_IF_NONE_MATCH"):
                await copying
            return
        await copying
    copy, = (r for r in r2_proxy.seen if "x-amz-copy-source" in r.headers)
    conditions = {name: value for name, value in copy.headers.items() if "if-none-match" in name}
    assert conditions == sent and copy.headers["x-amz-copy-source-if-match"] == f'"{etag}"'
    assert await resources.storage.head("sources/a/copy") is not None


async def test_init_carries_on_when_the_store_refuses_bucket_cors(
    resources: Resources, settings: Settings, r2_proxy: FaultProxy
) -> None:
    """A token without bucket-settings rights (or a store without PutBucketCors) answers AccessDenied: init says so
    and carries on; the rest of the bucket works."""
    r2_proxy.refuse = lambda request: (
        S3Error(403, "AccessDenied", "Access Denied") if "cors" in parse_qs(urlsplit(request.target).query,
                                                                                keep_blank_values=True) else None)
    lines = await init_storage(msgspec.structs.replace(settings, s3_cors_origins="http://127.0.0.1:8080"))
    assert lines[0] == f"bucket {settings.s3_bucket}: kept"
    assert lines[1].startswith("bucket CORS: refused by object storage (AccessDenied)")
    (request, _), = r2_proxy.refused
    assert "x-amz-checksum-crc32" in request.headers and "content-md5" not in request.headers  # botocore >= 1.36


async def test_addressing_style_and_region_shape_signed_urls() -> None:
    """S3_ADDRESSING_STYLE decides where the bucket goes in a signed URL; S3_REGION is the signature's scope."""
    endpoint = "https://0123abcd.r2.cloudflarestorage.com"
    urls = {}
    for style in ("path", "virtual"):
        settings = load_settings({}, s3_endpoint_url=endpoint, s3_region="auto", s3_bucket="clips",
                                 s3_addressing_style=style)
        async with open_storage(settings) as storage:
            urls[style] = await storage.signed_get_url("results/a/clip.mp4", 60)
    assert urls["path"].startswith(f"{endpoint}/clips/results/a/clip.mp4?")
    assert urls["virtual"].startswith("https://clips.0123abcd.r2.cloudflarestorage.com/results/a/clip.mp4?")
    assert all("%2Fauto%2Fs3%2Faws4_request" in url for url in urls.values())


@pytest.mark.parametrize(("name", "value"), [("s3_addressing_style", "vhost"), ("s3_checksum", "always"),
                                             ("s3_copy_if_none_match", "yes"), ("s3_region", " ")])
def test_storage_settings_refuse_unknown_values(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name.upper()):
        load_settings({name.upper(): value})


@pytest.mark.parametrize("extra", [{"ACL": "private"}, {"Tagging": "team=a"}, {"ExpectedBucketOwner": "123456789012"},
                                   {"ChecksumAlgorithm": "SHA256"}])
async def test_the_r2_like_store_refuses_what_r2_refuses(
    resources: Resources, r2_proxy: FaultProxy, extra: dict[str, str]
) -> None:
    """The proxy is not a bystander: what R2 does not implement is refused with its error (and never reaches
    SeaweedFS), so the run above, with nothing refused, shows that clipjet sends none of it."""
    client, bucket = resources.storage.client, resources.storage.bucket
    with pytest.raises(ClientError, match="NotImplemented"):
        await client.put_object(Bucket=bucket, Key="r2/refused", Body=b"x", **extra)
    assert await resources.storage.head("r2/refused") is None
    await client.put_object(Bucket=bucket, Key="r2/taken", Body=b"x")
    with pytest.raises(ClientError, match="NotImplemented"):
        await client.put_object_tagging(Bucket=bucket, Key="r2/taken", Tagging={"TagSet": []})
    assert len(r2_proxy.refused) == 2


async def test_the_r2_like_store_takes_only_region_auto(settings: Settings, r2_proxy: FaultProxy) -> None:
    async with open_storage(msgspec.structs.replace(settings, s3_region="eu-west-1")) as storage:
        with pytest.raises(ClientError, match="InvalidRegionName"):
            await storage.list_keys("")
