"""Uploads are immutable once checked, bounded by their slot's signature, and cleaned up (real SeaweedFS + PG)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from services.fetcher import locate
from services.reaper.uploads import sweep_uploads
from shared.db import jobs
from shared.jobs.pipeline import FETCH
from shared.media.testpattern import make_test_pattern
from shared.runtime.resources import Resources
from shared.settings import Settings
from shared.storage.s3 import ObjectInfo, Storage
from shared.storage.upload_store import UploadChanged, copy_pinned, copy_prefix
from tests.conftest import Workers, wait_for_job
from tests.http_source import MediaServer
from tests.media import probe
from tests.test_clip_pipeline import download, upload

MIB = 1024 * 1024
WAIT_SEC = 30.0  # longest a PUT may take


@pytest.fixture(scope="session")
def other_video(media_dir: Path) -> Path:
    """Other bytes than sample_video, told apart by their picture size."""
    return make_test_pattern(media_dir / "other-320x180.mp4", seconds=8, size="320x180")


async def _slot(client: AsyncTestClient[Any], **request: Any) -> dict[str, Any]:
    response = await client.post("/api/uploads", json={"filename": "a.mp4", "contentType": "video/mp4", **request})
    assert response.status_code == 201, response.text
    return response.json()


async def _put(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with httpx.AsyncClient(timeout=WAIT_SEC) as s3:
        return (await s3.put(url, content=body, headers=headers)).status_code


def _width(path: Path) -> int:
    return next(s["width"] for s in probe(path)["streams"] if s["codec_type"] == "video")


async def test_second_put_after_the_check_changes_nothing_a_job_cuts(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path, other_video: Path,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Upload A, the fetcher checks it; then, before the fetcher probes and cuts it (it cuts an upload's clip
    itself), B lands at the same key. The slot's URL refuses the second PUT, and even bytes written there anyway (a
    store that ignored If-None-Match) reach no job: job 1 cuts A, job 2 on the key is refused with
    `upload_changed` rather than cutting B under A's fingerprint."""
    assert _width(sample_video) != _width(other_video)
    original = sample_video.read_bytes()
    slot = await _slot(client, sizeBytes=len(original))
    assert await _put(slot["url"], original, slot["headers"]) == 200
    swaps: list[str] = []
    check = locate.verify_upload

    async def check_then_swap(storage: Storage, db: Any, key: str, settings: Settings) -> ObjectInfo:
        checked = await check(storage, db, key, settings)
        if not swaps:  # the first job only: between its check and its cut
            swapped = original[:-1] + bytes([original[-1] ^ 0xFF])  # other bytes of the signed length
            assert await _put(slot["url"], swapped, slot["headers"]) == 412  # If-None-Match: *
            assert await _put(slot["url"], swapped, {"Content-Type": "video/mp4"}) == 403  # it is signed
            await storage.put_file(key, other_video, "video/mp4", {})  # B at the key anyway
            swaps.append(key)
        return checked

    monkeypatch.setattr(locate, "verify_upload", check_then_swap)
    workers.start()
    first = (await client.post("/api/jobs", json={
        "source": {"type": "upload", "key": slot["key"]}, "startSec": 1.5, "endSec": 4,
    })).json()["id"]
    job = await wait_for_job(client, first)
    assert job["status"] == "done", job
    assert swaps == [slot["key"]]
    assert job["result"]["cutPath"] == "smart"  # cut frame-accurately by the fetcher, on what it probed
    events = await jobs.job_events(resources.db, uuid.UUID(first))
    assert [e["data"]["stage"] for e in events if e["type"] == "stage_started"] == [FETCH]  # and finished there
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    assert _width(clip) == _width(sample_video)  # A's bytes were cut, not B's

    second = await client.post("/api/jobs", json={
        "source": {"type": "upload", "key": slot["key"]}, "startSec": 1, "endSec": 4,
    })
    assert second.status_code == 202, second.text
    refused = await wait_for_job(client, second.json()["id"])
    assert (refused["status"], refused["errorCode"]) == ("failed", "upload_changed"), refused


async def test_slot_signature_bounds_size_type_and_overwrites(client: AsyncTestClient[Any]) -> None:
    """A slot for 10 bytes takes exactly 10 bytes of its content type, once."""
    slot = await _slot(client, sizeBytes=10)
    headers = slot["headers"]
    assert headers == {"Content-Type": "video/mp4", "If-None-Match": "*"}
    assert await _put(slot["url"], b"x" * (50 * MIB), headers) == 403  # longer than signed
    assert await _put(slot["url"], b"x" * 9, headers) == 403
    assert await _put(slot["url"], b"x" * 10, {**headers, "Content-Type": "text/html"}) == 403
    assert await _put(slot["url"], b"x" * 10, {"Content-Type": "video/mp4"}) == 403  # If-None-Match is signed
    assert await _put(slot["url"], b"A" * 10, headers) == 200
    assert await _put(slot["url"], b"B" * 10, headers) == 412  # the key is written once
    assert await _put(slot["url"], b"B" * 10, {"Content-Type": "video/mp4"}) == 403


@pytest.mark.settings(upload_single_put_max_mb=1, upload_part_mb=5)
async def test_multipart_parts_are_bounded_and_complete_checks_the_total(
    client: AsyncTestClient[Any], resources: Resources
) -> None:
    size = 7 * MIB
    slot = await _slot(client, sizeBytes=size)
    first, last = slot["parts"]
    assert await _put(first["url"], b"x" * (6 * MIB), {}) == 403  # a part longer than signed
    assert await _put(last["url"], b"x" * (5 * MIB), {}) == 403  # the last part is 2 MiB
    assert await _put(last["url"], b"x" * (2 * MIB), {}) == 200
    ref = {"key": slot["key"], "uploadId": slot["uploadId"]}
    short = await client.post("/api/uploads/complete", json=ref)  # part 1 missing: 2 MiB of 7
    assert short.status_code == 422 and short.json()["error"]["code"] == "upload_incomplete", short.text
    assert await resources.storage.head(slot["key"]) is None


@pytest.mark.settings(upload_retention_hours=1 / 3600)  # one second
async def test_reaper_deletes_unused_old_uploads_and_keeps_used_ones(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path
) -> None:
    """Past the retention: an upload nobody named, and one whose job ended, go (with its checked copy); one a
    queued job names stays; an unfinished multipart upload is aborted."""
    unused = await upload(client, sample_video)
    ended = await upload(client, sample_video)
    workers.start()
    response = await client.post("/api/jobs", json={"source": {"type": "upload", "key": ended}, "startSec": 0,
                                                    "endSec": 1})
    assert (await wait_for_job(client, response.json()["id"]))["status"] == "done"
    await workers.stop()
    copies = await resources.storage.list_keys(copy_prefix(ended))
    assert len(copies) == 1
    used = await upload(client, sample_video)
    response = await client.post("/api/jobs", json={"source": {"type": "upload", "key": used}, "startSec": 0,
                                                    "endSec": 1})
    assert response.status_code == 202  # stays queued: no workers run any more
    multipart = (await client.post("/api/uploads", json={"sizeBytes": 400 * MIB}))
    assert multipart.status_code == 201, multipart.text
    await asyncio.sleep(1.5)  # past the retention
    swept = await sweep_uploads(resources)
    assert (swept.deleted, swept.copies_deleted, swept.kept, swept.aborted) == (2, 1, 1, 1), swept
    assert await resources.storage.head(unused) is None and await resources.storage.head(ended) is None
    assert await resources.storage.list_keys("sources/") == []
    assert await resources.storage.head(used) is not None
    pending = await resources.storage.client.list_multipart_uploads(Bucket=resources.storage.bucket)
    assert pending.get("Uploads", []) == []


@pytest.mark.settings(nvme_scratch_gb=1.5 / 1024, scratch_reserve_mb=0.5)  # 1.5 MiB of scratch, 0.5 per message
async def test_download_without_content_length_is_bounded_by_scratch(
    client: AsyncTestClient[Any], workers: Workers, media_dir: Path
) -> None:
    """A server that sends no Content-Length still gets a scratch reservation, and the download stops there."""
    source = make_test_pattern(media_dir / "two-mib.mp4", seconds=8, video_bitrate="2M")
    assert source.stat().st_size > 1.5 * MIB
    workers.start()
    with MediaServer(source.parent) as origin:
        origin.ranges, origin.content_length = False, False
        response = await client.post("/api/jobs", json={
            "source": {"type": "url", "url": origin.url(source.name)}, "startSec": 1, "endSec": 2,
        })
        assert response.status_code == 202, response.text
        job = await wait_for_job(client, response.json()["id"])
    assert (job["status"], job["errorCode"]) == ("failed", "source_too_large"), job


async def test_pinned_copy_part_by_part_copies_only_the_checked_bytes(resources: Resources, tmp_path: Path) -> None:
    """Large uploads are copied part by part (UploadPartCopy), each part pinned to the ETag: other bytes at the
    key stop the copy with `upload_changed` and leave no unfinished upload behind."""
    storage = resources.storage
    body = bytes(range(256)) * (7 * MIB // 256)
    (tmp_path / "a").write_bytes(body)
    await storage.put_file("uploads/x/a", tmp_path / "a", "video/mp4", {})
    info = await storage.head("uploads/x/a")
    assert info is not None
    await copy_pinned(storage, "uploads/x/a", "staging/j/upload", info.etag, info.size, "video/mp4",
                      part_bytes=5 * MIB)
    await storage.download("staging/j/upload", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == body
    (tmp_path / "b").write_bytes(b"other")
    await storage.put_file("uploads/x/b", tmp_path / "b", "video/mp4", {})
    other = await storage.head("uploads/x/b")
    assert other is not None
    await copy_pinned(storage, "uploads/x/b", "staging/j/upload", other.etag, other.size, "video/mp4")
    await storage.download("staging/j/upload", tmp_path / "again")
    assert (tmp_path / "again").read_bytes() == body  # a copy is written once: the first one stands
    with pytest.raises(UploadChanged):
        await copy_pinned(storage, "uploads/x/a", "staging/k/upload", "0" * 32, info.size, "video/mp4",
                          part_bytes=5 * MIB)
    assert await storage.head("staging/k/upload") is None
    pending = await storage.client.list_multipart_uploads(Bucket=storage.bucket)
    assert pending.get("Uploads", []) == []
