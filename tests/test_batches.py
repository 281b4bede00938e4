"""Batches: many clips of one source in one POST /api/jobs, the source read from its origin once, every job ending
on its own; quotas for the whole batch, all or nothing; GET /api/batches/{id}; Idempotency-Key."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from services.reaper.handler import reap_once
from shared.db import keys
from shared.runtime.resources import Resources
from shared.settings import Settings
from shared.storage.s3 import staging_prefix
from tests.chaos import Fleet
from tests.conftest import JOB_TIMEOUT_SEC, POLL_SEC, Workers, authorize, wait_for_job
from tests.http_source import MediaServer
from tests.media import probe
from tests.test_clip_pipeline import assert_clip_matches, download

# Three overlapping clips of the 20 s sample (GOP 2 s): two keyframe-precision, one frame-accurate.
CLIPS = [(4.5, 9.0, "keyframe"), (5.0, 10.0, "keyframe"), (6.5, 11.0, "frame")]
ONE_FRAME_SEC = 1 / 30
ORIGIN_SNDBUF_BYTES = 128 * 1024  # as tests/test_range_reads.py: bytes_sent near what the client really read


def _batch_body(url: str, clips: list[tuple[float, float, str]] = CLIPS) -> dict[str, Any]:
    return {"source": {"type": "url", "url": url},
            "clips": [{"startSec": s, "endSec": e, "precision": p, "metadata": {"n": i}}
                      for i, (s, e, p) in enumerate(clips)]}


async def _wait_for_batch(client: AsyncTestClient[Any], batch_id: str) -> dict[str, Any]:
    """GET /api/batches/{id} until every job of it ended (bounded)."""
    async with asyncio.timeout(JOB_TIMEOUT_SEC):
        while True:
            response = await client.get(f"/api/batches/{batch_id}")
            assert response.status_code == 200, response.text
            body = response.json()
            if all(job["status"] in ("done", "failed", "canceled") for job in body["jobs"]):
                return body
            await asyncio.sleep(POLL_SEC)


@pytest.mark.parametrize("ranges", [True, False], ids=["range_reads", "whole_download"])
async def test_batch_reads_the_source_once(
    client: AsyncTestClient[Any], workers: Workers, sample_video: Path, tmp_path: Path, ranges: bool
) -> None:
    workers.start()
    with MediaServer(sample_video.parent) as origin:
        origin.ranges, origin.send_buffer_bytes = ranges, ORIGIN_SNDBUF_BYTES
        url = origin.url(sample_video.name)
        single = await client.post("/api/jobs", json={
            "source": {"type": "url", "url": url}, "startSec": CLIPS[0][0], "endSec": CLIPS[0][1],
            "precision": "keyframe"})
        assert single.status_code == 202, single.text
        assert (await wait_for_job(client, single.json()["id"]))["status"] == "done"
        single_bytes = origin.bytes_sent

        response = await client.post("/api/jobs", json=_batch_body(url))
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert response.headers["location"] == f"/api/batches/{accepted['batchId']}"
        assert [job["status"] for job in accepted["jobs"]] == ["queued"] * len(CLIPS)
        batch = await _wait_for_batch(client, accepted["batchId"])
        batch_bytes = origin.bytes_sent - single_bytes
    assert [job["id"] for job in batch["jobs"]] == [job["id"] for job in accepted["jobs"]]
    assert batch["counts"]["done"] == len(CLIPS) and batch["counts"]["failed"] == 0
    # every clip separately would read the origin len(CLIPS) times; the batch reads it about once
    assert batch_bytes < 2 * single_bytes, (batch_bytes, single_bytes)
    print(f"origin bytes: one clip alone {single_bytes}, a batch of {len(CLIPS)} clips {batch_bytes}")
    for job, (start, end, precision), index in zip(batch["jobs"], CLIPS, range(len(CLIPS)), strict=True):
        assert job["status"] == "done", job
        assert job["batchId"] == accepted["batchId"] and job["metadata"] == {"n": index}
        clip = await download(job["urls"]["video"], tmp_path / f"clip{index}.mp4")
        if precision == "keyframe":
            assert_clip_matches(clip, sample_video, job, start, end)
        else:  # frame-accurate: the first frame at startSec, the clip ends at endSec
            assert job["result"]["actualStartSec"] == pytest.approx(start, abs=ONE_FRAME_SEC)
            video = next(s for s in probe(clip)["streams"] if s["codec_type"] == "video")
            assert float(video["duration"]) == pytest.approx(end - start, abs=2 * ONE_FRAME_SEC)


async def test_jobs_of_a_batch_end_on_their_own(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path
) -> None:
    """One clip canceled before any worker runs and one past the source's end: the third is still done."""
    clips = [(2.0, 5.0, "keyframe"), (6.0, 9.0, "keyframe"), (15.0, 25.0, "keyframe")]
    with MediaServer(sample_video.parent) as origin:
        response = await client.post("/api/jobs", json=_batch_body(origin.url(sample_video.name), clips))
        assert response.status_code == 202, response.text
        ids = [job["id"] for job in response.json()["jobs"]]
        assert (await client.post(f"/api/jobs/{ids[1]}/cancel")).status_code == 200
        workers.start()
        batch = await _wait_for_batch(client, response.json()["batchId"])
    statuses = [job["status"] for job in batch["jobs"]]
    assert statuses == ["done", "canceled", "failed"], batch
    assert batch["jobs"][2]["errorCode"] == "end_past_duration"
    assert batch["counts"] == {"queued": 0, "processing": 0, "done": 1, "failed": 1, "expired": 0, "canceled": 1}
    # the batch's staged span is deleted by the reaper once every job ended, and once
    spans = [key for key in await resources.storage.list_keys("staging/")
             if not any(key.startswith(staging_prefix(job_id)) for job_id in ids)]
    assert len(spans) == 1, spans
    report = await reap_once(resources)
    assert report.batch_staging_cleaned == 1 and not report.errors
    assert await resources.storage.list_keys(spans[0]) == []
    assert (await reap_once(resources)).batch_staging_cleaned == 0


async def test_stopped_fetcher_hands_the_staging_on(
    client: AsyncTestClient[Any], resources: Resources, sample_video: Path
) -> None:
    """The fetcher staging the batch's source stops mid-read (its message is handed back): a new fetcher takes
    the staging turn the first one held, and every job of the batch ends done."""
    with MediaServer(sample_video.parent) as origin:
        origin.ranges = False
        origin.stall_first_get_sec = 30.0  # the first whole download hangs after its first chunk
        response = await client.post("/api/jobs", json=_batch_body(origin.url(sample_video.name)))
        assert response.status_code == 202, response.text
        first = Workers(resources)
        first.start("fetch")
        await asyncio.wait_for(asyncio.to_thread(origin.first_get_started.wait, 30), 35)
        await first.stop()  # shutdown grace 2 s, then the staging job is cancelled and handed back
        rest = Workers(resources)
        rest.start()
        try:
            batch = await _wait_for_batch(client, response.json()["batchId"])
        finally:
            await rest.stop()
    assert [job["status"] for job in batch["jobs"]] == ["done"] * len(CLIPS), batch


async def test_killed_fetcher_hands_the_staging_on(
    client: AsyncTestClient[Any], workers: Workers, settings: Settings, sample_video: Path, tmp_path: Path
) -> None:
    """A fetcher process killed (SIGKILL) while it stages the batch's source: its staging turn ends with its
    PostgreSQL connection, another fetcher stages the source, the killed one's messages come back after ack_wait,
    and every job of the batch ends done."""
    fleet = Fleet(settings, tmp_path)
    try:
        with MediaServer(sample_video.parent) as origin:
            origin.ranges = False
            origin.stall_first_get_sec = 60.0  # the first whole download hangs after its first chunk
            fleet.start_worker("fetch")
            await fleet.wait_started()
            response = await client.post("/api/jobs", json=_batch_body(origin.url(sample_video.name)))
            assert response.status_code == 202, response.text
            assert await asyncio.wait_for(asyncio.to_thread(origin.first_get_started.wait, 60), 65)
            fleet.kill("fetch")
            workers.start()
            batch = await _wait_for_batch(client, response.json()["batchId"])
    finally:
        fleet.stop()
    assert [job["status"] for job in batch["jobs"]] == ["done"] * len(CLIPS), batch


async def test_quota_refusal_writes_nothing(client: AsyncTestClient[Any], resources: Resources) -> None:
    quotas = keys.Quotas(max_in_flight=100, max_jobs_per_day=100, max_source_seconds_per_day=12.0)
    await authorize(client, resources.db, quotas=quotas)
    body = _batch_body("http://127.0.0.1:9/v.mp4")  # 4.5 + 5 + 4.5 = 14 s: each clip fits, the batch does not
    refused = await client.post("/api/jobs", json=body)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert "source_seconds_per_day" in refused.json()["error"]["message"]
    assert await resources.db.fetchval("SELECT count(*) FROM jobs") == 0
    assert await resources.db.fetchval("SELECT count(*) FROM batches") == 0
    await authorize(client, resources.db, quotas=keys.Quotas(max_in_flight=2, max_jobs_per_day=100,
                                                            max_source_seconds_per_day=1e6))
    refused = await client.post("/api/jobs", json=body)
    assert refused.status_code == 429 and "jobs_in_flight" in refused.json()["error"]["message"]
    assert await resources.db.fetchval("SELECT count(*) FROM jobs") == 0
    two = await client.post("/api/jobs", json=_batch_body("http://127.0.0.1:9/v.mp4", CLIPS[:2]))
    assert two.status_code == 202, two.text
    assert await resources.db.fetchval("SELECT count(*) FROM jobs") == 2


async def test_batch_is_owner_scoped_and_idempotent(client: AsyncTestClient[Any], resources: Resources) -> None:
    await authorize(client, resources.db)
    body = _batch_body("http://127.0.0.1:9/v.mp4")
    headers = {"Idempotency-Key": "batch-1"}
    first = await client.post("/api/jobs", json=body, headers=headers)
    again = await client.post("/api/jobs", json=body, headers=headers)
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert again.json()["batchId"] == first.json()["batchId"]
    assert [j["id"] for j in again.json()["jobs"]] == [j["id"] for j in first.json()["jobs"]]
    assert await resources.db.fetchval("SELECT count(*) FROM jobs") == len(CLIPS)
    other_body = _batch_body("http://127.0.0.1:9/v.mp4", CLIPS[:2])
    reused = await client.post("/api/jobs", json=other_body, headers=headers)
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"
    batch_id = first.json()["batchId"]
    mine = await client.get(f"/api/batches/{batch_id}")
    assert mine.status_code == 200 and len(mine.json()["jobs"]) == len(CLIPS)
    await authorize(client, resources.db)  # another key
    for path in (f"/api/batches/{batch_id}", f"/api/batches/{uuid.uuid4()}", "/api/batches/nope"):
        hidden = await client.get(path)
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "batch_not_found", hidden.text


@pytest.mark.settings(max_batch_clips=2)
async def test_batch_requests_are_checked(client: AsyncTestClient[Any], resources: Resources) -> None:
    url = "http://127.0.0.1:9/v.mp4"
    cases = [
        (_batch_body(url), 422, "too_many_clips", "clips"),
        ({"source": {"type": "url", "url": url}, "clips": [{"startSec": 1, "endSec": 2}, {"startSec": 5, "endSec": 4}]},
         422, "end_before_start", "clips[1].endSec"),
        ({"source": {"type": "url", "url": url}, "clips": []}, 422, "invalid_field", "clips"),
        ({"source": {"type": "url", "url": url}, "startSec": 1, "clips": [{"startSec": 1, "endSec": 2}]},
         422, "invalid_field", "startSec"),
        ({"source": {"type": "url", "url": url}, "clips": [{"startSec": 1, "endSec": 2, "prec": "frame"}]},
         422, "invalid_field", "clips[0].prec"),
    ]
    for body, status, code, field in cases:
        response = await client.post("/api/jobs", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["code"] == code, (body, response.text)
        assert response.json()["error"].get("field") == field, (body, response.text)
    assert await resources.db.fetchval("SELECT count(*) FROM jobs") == 0
