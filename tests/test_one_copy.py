"""One copy per clip: a plain stream copy (keyframe precision) is cut once, by the fetcher, straight from the
source to its result key, and the fetcher finishes the job (no trimmer, no uploader hop, nothing staged).
A frame-accurate clip of media already in storage (an upload) is cut by the fetcher too. Real NATS,
PostgreSQL, S3, ffmpeg and an HTTP origin."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from services.fetcher import handler as fetcher_handler
from services.fetcher.handler import handle as fetch
from services.thumbnailer.handler import THUMBS
from services.trimmer.handler import handle as trim
from shared.db import cancels, jobs
from shared.jobs.contracts import (
    Artifact,
    ClipJobMessage,
    MediaPlan,
    Poster,
    StageMessage,
    UploadSource,
    UrlSource,
)
from shared.jobs.ids import uuid7
from shared.jobs.pipeline import DEFAULT_ROUTE_LENGTH, FETCH, TRIM, UPLOAD
from shared.runtime.progress import Progress
from shared.runtime.resources import Resources
from shared.runtime.worker import StageDeps
from shared.storage.clipstore import WRITE_META, clip_key
from shared.storage.s3 import result_key
from tests.conftest import Workers
from tests.http_source import MediaServer
from tests.jobflow import run_upload_job, run_url_job, stages_run, upload
from tests.test_clip_pipeline import assert_clip_matches, download


def _deps(resources: Resources, folder: Path, name: str) -> StageDeps:
    scratch = folder / f"{name}-{len(list(folder.iterdir()))}"
    scratch.mkdir()
    return StageDeps(resources, Progress(name, 0, DEFAULT_ROUTE_LENGTH), scratch, 1)


async def test_keyframe_clip_of_a_url_is_cut_once_by_the_fetcher(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path, tmp_path: Path
) -> None:
    """No staged copy of the range is stored, and neither the trimmer nor the uploader runs: the clip is the only
    copy, written once, at its content-hashed result key."""
    workers.start()
    with MediaServer(sample_video.parent) as origin:
        job = await run_url_job(client, origin.url(sample_video.name), startSec=5.5, endSec=12.0, precision="keyframe")
    assert job["status"] == "done", job
    assert job["result"]["actualStartSec"] == pytest.approx(4.0, abs=1e-3)  # the keyframe before 5.5
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    assert_clip_matches(clip, sample_video, job, 5.5, 12.0)
    assert await stages_run(resources, job["id"]) == [FETCH]
    assert await resources.storage.list_keys(f"staging/{job['id']}/") == []
    assert await resources.storage.list_keys("results/") == [result_key(job["result"]["sha256"], "clip.mp4")]
    events = [e["type"] for e in await jobs.job_events(resources.db, uuid.UUID(job["id"]))]
    assert events.count("done") == 1 and events.count("stage_finished") == 1


async def test_keyframe_clip_of_an_upload_is_finished_by_the_fetcher(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path, tmp_path: Path
) -> None:
    workers.start()
    job = await run_upload_job(client, sample_video, startSec=8.0, endSec=13.0, precision="keyframe")
    assert job["status"] == "done", job
    assert job["result"]["actualStartSec"] == pytest.approx(8.0, abs=1e-3)
    assert_clip_matches(await download(job["urls"]["video"], tmp_path / "clip.mp4"), sample_video, job, 8.0, 13.0)
    assert await stages_run(resources, job["id"]) == [FETCH]


async def test_frame_accurate_clip_of_an_upload_is_cut_by_the_fetcher(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path, tmp_path: Path
) -> None:
    """An upload sits in storage already: the fetcher smart-cuts it on the layout it probed and, nothing else
    following, stores it at its content-hashed result key and finishes the job: neither the trimmer nor the
    uploader runs, nothing is staged, and the clip is the only copy."""
    workers.start()
    job = await run_upload_job(client, sample_video, startSec=5.5, endSec=9.0)
    assert job["status"] == "done", job
    assert job["result"]["cutPath"] == "smart"
    assert job["result"]["actualStartSec"] == pytest.approx(5.5, abs=1 / 30)
    assert job["result"]["durationSec"] == pytest.approx(3.5, abs=1 / 30)
    assert (await download(job["urls"]["video"], tmp_path / "clip.mp4")).stat().st_size == job["result"]["size"]
    assert await stages_run(resources, job["id"]) == [FETCH]
    assert await resources.storage.list_keys(f"staging/{job['id']}/") == []
    assert await resources.storage.list_keys("results/") == [result_key(job["result"]["sha256"], "clip.mp4")]
    events = [e["type"] for e in await jobs.job_events(resources.db, uuid.UUID(job["id"]))]
    assert events.count("done") == 1 and events.count("stage_finished") == 1


async def test_frame_accurate_clip_of_a_url_still_goes_through_the_trimmer(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path
) -> None:
    """A URL source's range is staged once by the fetcher and smart-cut by the trimmer from that copy."""
    workers.start()
    with MediaServer(sample_video.parent) as origin:
        job = await run_url_job(client, origin.url(sample_video.name), startSec=5.5, endSec=9.0)
    assert job["status"] == "done", job
    assert job["result"]["cutPath"] == "smart"
    assert job["result"]["actualStartSec"] == pytest.approx(5.5, abs=1 / 30)
    assert await stages_run(resources, job["id"]) == [FETCH, TRIM, UPLOAD]


async def test_fetcher_smart_cut_run_twice_reuses_the_stored_clip(
    client: AsyncTestClient[Any], resources: Resources, sample_video: Path, tmp_path: Path
) -> None:
    """A fetcher that smart-cut an upload (a poster to follow: the clip is passed on) and died before acking: the
    redelivery passes the same clip on."""
    key = await upload(client, sample_video)
    job = ClipJobMessage(id=str(uuid7()), source=UploadSource(key=key), start_sec=5.5, end_sec=9.0, poster=Poster())
    assert await jobs.begin_stage(resources.db, job, FETCH, 1) == "processing"
    once = await fetch(job, _deps(resources, tmp_path, "fetch"))
    first_write = await resources.storage.head(clip_key(job.id))
    again = await fetch(job, _deps(resources, tmp_path, "fetch"))
    second_write = await resources.storage.head(clip_key(job.id))
    assert once is not None and once == again
    assert (once.route, once.done) == ([THUMBS, UPLOAD], [FETCH])
    assert once.result is not None and once.result.cut_path == "smart"
    assert first_write is not None and second_write is not None
    assert first_write.metadata[WRITE_META] == second_write.metadata[WRITE_META]  # not cut and written again


async def _died_before_done_then_redelivered(
    resources: Resources, job: ClipJobMessage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> asyncpg.Record:
    """Run `job`'s fetch with a fetcher that dies between its put at the result key and done, then twice more (the
    redelivery, and one after done): the result is stored once, never written again, nothing is staged, and the
    job ends done once, naming it. The job's row."""
    real_finish = fetcher_handler.finish_job_done
    deaths: list[str] = []

    async def dies_once(res: Resources, job_id: str, *args: Any) -> bool:
        if not deaths:
            deaths.append(job_id)
            raise RuntimeError("killed between the put and done")
        return await real_finish(res, job_id, *args)

    monkeypatch.setattr(fetcher_handler, "finish_job_done", dies_once)
    assert await jobs.begin_stage(resources.db, job, FETCH, 1) == "processing"
    with pytest.raises(RuntimeError):
        await fetch(job, _deps(resources, tmp_path, "fetch"))
    [stored] = await resources.storage.list_keys("results/")
    first_write = await resources.storage.head(stored)
    assert await fetch(job, _deps(resources, tmp_path, "fetch")) is None
    assert await fetch(job, _deps(resources, tmp_path, "fetch")) is None  # after done: nothing more happens
    second_write = await resources.storage.head(stored)
    assert first_write is not None and second_write is not None
    assert first_write.metadata[WRITE_META] == second_write.metadata[WRITE_META]  # not written again
    assert await resources.storage.list_keys("results/") == [stored]
    assert await resources.storage.list_keys(f"staging/{job.id}/") == []
    row = await jobs.get_job(resources.db, uuid.UUID(job.id))
    assert row is not None and row["status"] == "done" and row["result_video_key"] == stored
    events = [e["type"] for e in await jobs.job_events(resources.db, uuid.UUID(job.id))]
    assert events.count("done") == 1
    return row


async def test_fetcher_that_stored_the_result_and_died_before_done_ends_the_job_once(
    resources: Resources, sample_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetcher that put the plain copy at its result key and died before the job was done: the redelivery cuts
    again, finds the same bytes stored (not written again) and ends the job; a later one changes nothing."""
    with MediaServer(sample_video.parent) as origin:
        job = ClipJobMessage(id=str(uuid7()), source=UrlSource(url=origin.url(sample_video.name)), start_sec=2.5,
                             end_sec=6, precision="keyframe")
        row = await _died_before_done_then_redelivered(resources, job, tmp_path, monkeypatch)
    assert row["result"]["actualStartSec"] == pytest.approx(2.0, abs=1e-3)


async def test_fetcher_that_stored_a_smart_cut_and_died_before_done_ends_the_job_once(
    client: AsyncTestClient[Any], resources: Resources, sample_video: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fetcher that smart-cut an upload with nothing to follow, put it at its result key and died before the job
    was done: the redelivery cuts again (the same bytes: the head's encode is deterministic), finds them stored
    and ends the job once; a later one changes nothing."""
    key = await upload(client, sample_video)
    job = ClipJobMessage(id=str(uuid7()), source=UploadSource(key=key), start_sec=5.5, end_sec=9.0)
    row = await _died_before_done_then_redelivered(resources, job, tmp_path, monkeypatch)
    assert row["result"]["cutPath"] == "smart"
    assert row["result"]["actualStartSec"] == pytest.approx(5.5, abs=1 / 30)


@pytest.mark.parametrize("precision", ["keyframe", "frame"])
async def test_job_canceled_while_the_fetcher_stores_its_result_leaves_no_object(
    client: AsyncTestClient[Any], resources: Resources, sample_video: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, precision: str,
) -> None:
    """The client's DELETE lands after the fetcher put the clip at its result key and before done: the job ends
    canceled, and the object (which no job names) is deleted, not left in results/ for good."""
    real_finish = fetcher_handler.finish_job_done

    async def canceled_first(res: Resources, job_id: str, *args: Any) -> bool:
        await cancels.cancel(res.db, uuid.UUID(job_id), None)
        return await real_finish(res, job_id, *args)

    monkeypatch.setattr(fetcher_handler, "finish_job_done", canceled_first)
    key = await upload(client, sample_video)
    job = ClipJobMessage(id=str(uuid7()), source=UploadSource(key=key), start_sec=5.5, end_sec=9.0,
                         precision=precision)
    assert await jobs.begin_stage(resources.db, job, FETCH, 1) == "processing"
    assert await fetch(job, _deps(resources, tmp_path, "fetch")) is None
    row = await jobs.get_job(resources.db, uuid.UUID(job.id))
    assert row is not None and row["status"] == "canceled"
    assert await resources.storage.list_keys("results/") == []


async def test_trimmer_still_cuts_a_plain_copy_staged_by_an_older_fetcher(
    client: AsyncTestClient[Any], resources: Resources, sample_video: Path, tmp_path: Path
) -> None:
    """A message already queued for the trimmer when the fetcher changed (rolling upgrade) is cut as before."""
    key = await upload(client, sample_video)
    job = ClipJobMessage(id=str(uuid7()), source=UploadSource(key=key), start_sec=5.5, end_sec=12.0,
                         precision="keyframe")
    info = await resources.storage.head(key)
    assert info is not None
    source = Artifact(stage=FETCH, role="source", key=key, size=info.size)
    plan = MediaPlan(duration_sec=20.0, container="mov,mp4,m4a,3gp,3g2,mj2", streams=[], cut_start_sec=4.0,
                     cut_reason="keyframe_precision")
    assert await jobs.begin_stage(resources.db, job, FETCH, 1) == "processing"
    message = StageMessage(job=job, route=[TRIM, UPLOAD], done=[FETCH], plan=plan, artifacts=[source])
    trimmed = await trim(message, _deps(resources, tmp_path, "trim"))
    assert trimmed.result is not None and trimmed.result.actual_start_sec == pytest.approx(4.0, abs=1e-3)
    assert (trimmed.route, trimmed.done) == ([UPLOAD], [FETCH, TRIM])
    assert trimmed.result.duration_sec == pytest.approx(8.0, abs=0.15)
