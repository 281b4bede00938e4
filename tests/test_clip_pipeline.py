"""A job goes through gateway → fetcher → trimmer → uploader on real NATS, PostgreSQL, S3 and ffmpeg."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from shared.db import jobs
from shared.jobs.contracts import ClipJobMessage, UrlSource
from shared.jobs.ids import uuid7
from shared.runtime import bus
from shared.runtime.resources import Resources
from tests.conftest import Workers, wait_for_job
from tests.http_source import MediaServer
from tests.jobflow import run_upload_job, run_url_job, stages_run, upload
from tests.media import codecs, frame_md5, keyframe_times, probe

ONE_FRAME_SEC = 1 / 30
AUDIO_SLACK_SEC = 0.1  # copied audio may run up to a few AAC frames past the video


async def download(url: str, path: Path) -> Path:
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200, response.text
    path.write_bytes(response.content)
    return path


def assert_clip_matches(clip: Path, source: Path, job: dict[str, Any], start: float, end: float) -> None:
    """The clip starts at the reported keyframe, lasts what the job reports, and its codecs were copied."""
    result = job["result"]
    actual_start, actual_end = result["actualStartSec"], result["actualEndSec"]
    assert any(abs(actual_start - k) < 1e-3 for k in keyframe_times(source))
    assert actual_start <= start < actual_start + 2.0 + ONE_FRAME_SEC  # the previous keyframe, GOP 2 s
    info = probe(clip)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert float(video["duration"]) == pytest.approx(end - actual_start, abs=2 * ONE_FRAME_SEC)
    assert float(info["format"]["duration"]) == pytest.approx(actual_end - actual_start, abs=1e-3)
    assert float(video.get("start_time", 0)) == pytest.approx(0, abs=1e-3)
    assert codecs(info) == codecs(probe(source))
    assert frame_md5(clip) == frame_md5(source, actual_start)
    assert result["sha256"] in job["urls"]["video"]


async def test_upload_source_end_to_end(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path, tmp_path: Path
) -> None:
    workers.start()
    key = await upload(client, sample_video)
    response = await client.post("/api/jobs", json={
        "source": {"type": "upload", "key": key}, "startSec": 5.5, "endSec": 12.0, "priority": "fast",
        "precision": "keyframe",
    })
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    job = await wait_for_job(client, response.json()["id"])
    assert job["status"] == "done", job
    assert job["progress"] == 1.0 and job["attempts"] == 1
    assert job["result"]["actualStartSec"] == pytest.approx(4.0, abs=1e-3)
    assert job["result"].get("cutPath", "copy") == "copy"  # omitted on the wire when it is the default
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    assert_clip_matches(clip, sample_video, job, 5.5, 12.0)

    results = await resources.storage.list_keys("results/")
    assert results == [f"results/sha256/{job['result']['sha256'][:2]}/{job['result']['sha256']}/clip.mp4"]
    events = [e["type"] for e in await jobs.job_events(resources.db, uuid.UUID(job["id"]))]
    assert events[0] == "queued" and events.count("done") == 1
    assert events.count("stage_started") == 1 and events.count("stage_finished") == 1  # the fetcher cuts and ends it


async def test_url_source_end_to_end(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path, tmp_path: Path
) -> None:
    workers.start()
    with MediaServer(sample_video.parent) as origin:
        response = await client.post("/api/jobs", json={
            "source": {"type": "url", "url": origin.url(sample_video.name)}, "startSec": 8.0, "endSec": 14.5,
        })
        assert response.status_code == 202, response.text
        job = await wait_for_job(client, response.json()["id"])
    assert job["status"] == "done", job
    assert job["result"]["actualStartSec"] == pytest.approx(8.0, abs=1e-3)  # 8.0 is a keyframe
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    assert_clip_matches(clip, sample_video, job, 8.0, 14.5)
    staged = await resources.storage.head(f"staging/{job['id']}/source.mp4")
    assert staged is not None and staged.size < sample_video.stat().st_size / 2  # only the range was staged


async def test_job_published_straight_to_nats_is_processed(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path
) -> None:
    workers.start()
    with MediaServer(sample_video.parent) as origin:
        job = ClipJobMessage(
            id=str(uuid7()), source=UrlSource(url=origin.url(sample_video.name)), start_sec=1.0, end_sec=3.0,
            priority="bulk",
        )
        await bus.publish_job(resources.js, resources.subjects, job)
        view = await wait_for_job(client, job.id, may_be_unknown=True)
    assert view["status"] == "done", view
    assert view["priority"] == "bulk"
    assert view["result"]["actualStartSec"] == pytest.approx(1.0, abs=1e-3)  # frame-accurate by default
    assert view["result"]["cutPath"] == "smart"


async def test_end_past_duration_fails_without_retry(
    client: AsyncTestClient[Any], workers: Workers, sample_video: Path
) -> None:
    workers.start()
    job = await run_upload_job(client, sample_video, startSec=15, endSec=25)
    assert job["status"] == "failed"
    assert job["errorCode"] == "end_past_duration"
    assert "duration" in job["errorMessage"]
    assert job["attempts"] == 1


async def test_unreadable_upload_fails_with_clear_code(
    client: AsyncTestClient[Any], workers: Workers, tmp_path: Path
) -> None:
    workers.start()
    junk = tmp_path / "notes.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    job = await run_upload_job(client, junk, startSec=0, endSec=1)
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "source_unreadable", 1)


async def test_missing_url_fails_with_clear_code(
    client: AsyncTestClient[Any], workers: Workers, sample_video: Path
) -> None:
    workers.start()
    with MediaServer(sample_video.parent) as origin:
        job = await run_url_job(client, origin.url("gone.mp4"), startSec=0, endSec=1)
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "source_unreadable", 1)
    assert "404" in job["errorMessage"]


async def test_identical_request_finishes_from_the_earlier_result(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path
) -> None:
    """The same bytes (uploaded twice), range and options: the second job reuses the first one's clip."""
    workers.start()
    views = []
    for start in (5.5, 5.5, 6.5):
        views.append(await run_upload_job(client, sample_video, startSec=start, endSec=9.0, priority="bulk"))
    first, same, other = views
    assert first["status"] == same["status"] == other["status"] == "done"
    assert same["result"] == first["result"]
    assert same["urls"]["video"].split("?")[0] == first["urls"]["video"].split("?")[0]
    stages = [await stages_run(resources, v["id"]) for v in views]
    assert stages == [["fetch"], ["fetch"], ["fetch"]]  # an upload is cut, stored and finished by the fetcher
    assert other["result"]["sha256"] != first["result"]["sha256"]  # another range is another clip
    assert len(await resources.storage.list_keys("results/")) == 2


@pytest.mark.parametrize(("failures", "status", "attempts"), [(1, "done", 2), (10, "failed", 3)])
async def test_transient_source_errors_are_retried_then_fail_with_the_last_code(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path,
    failures: int, status: str, attempts: int,
) -> None:
    workers.start()
    with MediaServer(sample_video.parent) as origin:
        origin.fail_first_gets = failures  # the origin answers 503 this many times
        job = await run_url_job(client, origin.url(sample_video.name), startSec=2, endSec=4)
    assert (job["status"], job["attempts"]) == (status, attempts)
    events = await jobs.job_events(resources.db, uuid.UUID(job["id"]))
    retries = [e["data"] for e in events if e["type"] == "retry"]
    assert [r["code"] for r in retries] == ["source_unreachable"] * (attempts - 1)
    assert [r["attempt"] for r in retries] == list(range(1, attempts))
    if status == "failed":
        assert job["errorCode"] == "source_unreachable" and "503" in job["errorMessage"]
