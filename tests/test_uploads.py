"""Uploads straight into object storage: single signed PUT, and resumable multipart slots for large files."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from shared.media.testpattern import make_test_pattern
from shared.runtime.resources import Resources
from tests.conftest import Workers
from tests.jobflow import run_job, run_upload_job

MIB = 1024 * 1024


@pytest.fixture(scope="session")
def larger_video(media_dir: Path) -> Path:
    """About 12 MB: three 5 MiB multipart parts."""
    return make_test_pattern(media_dir / "larger.mp4", seconds=24, video_bitrate="4M")


async def put_part(url: str, body: bytes) -> None:
    async with httpx.AsyncClient() as s3:
        response = await s3.put(url, content=body)
    assert response.status_code == 200, response.text


@pytest.mark.settings(upload_single_put_max_mb=1, upload_part_mb=5)
async def test_multipart_upload_resumes_and_feeds_a_job(
    client: AsyncTestClient[Any], workers: Workers, larger_video: Path
) -> None:
    data = larger_video.read_bytes()
    assert len(data) > 10 * MIB
    slot = (await client.post("/api/uploads", json={
        "filename": "big.mp4", "contentType": "video/mp4", "sizeBytes": len(data),
    })).json()
    size = slot["partSize"]
    assert slot["uploadId"] and size == 5 * MIB and len(slot["parts"]) == -(-len(data) // size)
    chunks = [data[i:i + size] for i in range(0, len(data), size)]
    for part, chunk in list(zip(slot["parts"], chunks, strict=True))[:-1]:  # the connection drops before the last
        await put_part(part["url"], chunk)
    status = (await client.get("/api/uploads/status", params={"key": slot["key"], "uploadId": slot["uploadId"]}))
    stored = status.json()["parts"]
    assert [p["partNumber"] for p in stored] == list(range(1, len(chunks)))
    assert all(p["size"] == size for p in stored)
    await put_part(slot["parts"][-1]["url"], chunks[-1])  # resume with what is missing
    done = await client.post("/api/uploads/complete", json={"key": slot["key"], "uploadId": slot["uploadId"]})
    assert done.status_code == 200, done.text
    assert done.json() == {"key": slot["key"], "size": len(data)}

    workers.start()
    job = await run_job(client, {"source": {"type": "upload", "key": slot["key"]}, "startSec": 10, "endSec": 14})
    assert job["status"] == "done", job


@pytest.mark.settings(max_upload_mb=100)
async def test_upload_limits_and_unknown_uploads(client: AsyncTestClient[Any]) -> None:
    too_big = await client.post("/api/uploads", json={"sizeBytes": 101 * MIB})
    assert too_big.status_code == 422 and too_big.json()["error"]["code"] == "upload_too_large"
    small = (await client.post("/api/uploads", json={"sizeBytes": 1000})).json()
    assert small["url"] and "uploadId" not in small  # a single PUT
    unknown = await client.get("/api/uploads/status", params={"key": small["key"], "uploadId": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "upload_not_found"
    foreign = await client.post("/api/uploads/complete", json={"key": "results/x/clip.mp4", "uploadId": "x"})
    assert foreign.status_code == 422 and foreign.json()["error"]["code"] == "upload_not_found"  # not a key form


async def test_same_bytes_under_two_uploads_are_one_source(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path, tmp_path: Path
) -> None:
    """The fetcher sniffs each upload and records its sha256; the second upload of the same bytes (another key,
    another name) is the same source, so the same request is answered with the first job's result."""
    workers.start()
    copy = tmp_path / "renamed.mp4"
    copy.write_bytes(sample_video.read_bytes())
    jobs = []
    for path in (sample_video, copy):
        jobs.append(await run_upload_job(client, path, startSec=2, endSec=5))
    assert [j["status"] for j in jobs] == ["done", "done"], jobs
    assert jobs[1]["result"] == jobs[0]["result"]
    rows = await resources.db.fetch("SELECT key, sha256 FROM upload_checks ORDER BY checked_at")
    assert len(rows) == 2 and {r["sha256"] for r in rows} == {hashlib.sha256(sample_video.read_bytes()).hexdigest()}
    prints = await resources.db.fetch(
        "SELECT fingerprint FROM jobs WHERE id = ANY($1::uuid[])", [uuid.UUID(j["id"]) for j in jobs]
    )
    assert len(prints) == 2 and prints[0]["fingerprint"] == prints[1]["fingerprint"] is not None
    assert await resources.storage.list_keys(f"staging/{jobs[1]['id']}/") == []  # nothing cut again


@pytest.mark.settings(max_upload_mb=1)
async def test_stored_upload_over_the_limit_is_not_used(
    client: AsyncTestClient[Any], resources: Resources, larger_video: Path
) -> None:
    """The stored object's size is checked again before a job may use it (an object written at an upload key by
    other means than its slot, whose signature binds sizeBytes)."""
    slot = (await client.post("/api/uploads", json={"filename": "big.mp4", "contentType": "video/mp4",
                                                    "sizeBytes": 1000})).json()
    async with httpx.AsyncClient() as s3:  # the slot itself takes no more than its 1000 bytes
        put = await s3.put(slot["url"], content=larger_video.read_bytes(), headers=slot["headers"])
    assert put.status_code == 403
    await resources.storage.put_file(slot["key"], larger_video, "video/mp4", {})
    response = await client.post("/api/jobs", json={
        "source": {"type": "upload", "key": slot["key"]}, "startSec": 0, "endSec": 2,
    })
    assert response.status_code == 422 and response.json()["error"]["code"] == "upload_too_large", response.text
