"""Canceling a job (`POST /api/jobs/{id}/cancel`): a queued job never runs, a running encode stops at once
(ffmpeg killed, nothing uploaded, never done), an ended job answers 409, another key's job 404; the in-flight
quota frees the slot; the reaper cleans a canceled job's staging."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from services.reaper.handler import ReapReport, clean_staging
from shared.db import cancels, jobs, keys
from shared.jobs.contracts import ClipJobMessage, ClipResult, JobEvent, UrlSource
from shared.runtime import bus
from shared.runtime.resources import Resources
from shared.storage.s3 import staging_prefix
from tests.conftest import Workers, make_key, record, wait_for_job
from tests.media import make_media
from tests.test_clip_pipeline import upload

WAIT_SEC = 30.0
POLL_SEC = 0.05
SETTLE_SEC = 2.0  # after workers start, how long a canceled queued job is watched for any work on it


def clip_body(key_or_url: str, **extra: Any) -> dict[str, Any]:
    source = {"type": "url", "url": key_or_url} if "://" in key_or_url else {"type": "upload", "key": key_or_url}
    return {"source": source, "startSec": 2, "endSec": 4, **extra}


async def record_end_events(res: Resources) -> list[JobEvent]:
    """Every end event published from now on (core subscription), appended as it arrives."""
    return await record(res, res.subjects.events("*"), JobEvent)


async def until(predicate: Any, timeout: float = WAIT_SEC) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if await predicate():
                return
            await asyncio.sleep(POLL_SEC)


async def arrived(items: list[Any]) -> bool:
    return bool(items)


async def queue_drained(res: Resources, stage: str) -> bool:
    """No message of `stage` is waiting or handed out unacknowledged."""
    info = await res.js.consumer_info(res.settings.nats_stream, bus.consumer_name(stage, "normal"))
    return info.num_pending + info.num_ack_pending == 0


async def test_a_queued_job_is_canceled_and_never_runs(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources
) -> None:
    events = await record_end_events(resources)
    reference = {"orderId": "A-17", "tags": ["x", "y"]}
    created = await client.post("/api/jobs", json=clip_body("http://127.0.0.1:9/never.mp4", metadata=reference))
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    staged = staging_prefix(job_id) + "partial.bin"  # as if a stage had staged something before the cancel
    await resources.storage._client.put_object(Bucket=resources.settings.s3_bucket, Key=staged, Body=b"x")

    canceled = await client.post(f"/api/jobs/{job_id}/cancel")
    assert canceled.status_code == 200, canceled.text
    view = canceled.json()
    assert view["status"] == "canceled" and view["metadata"] == reference, view
    await until(lambda: arrived(events))
    assert events == [JobEvent(job_id=job_id, status="canceled", metadata=reference)]

    workers.start()  # the job's message is still on the queue: the entry stage takes it and skips it
    await until(lambda: queue_drained(resources, "fetch"))
    await asyncio.sleep(SETTLE_SEC)
    view = (await client.get(f"/api/jobs/{job_id}")).json()
    assert view["status"] == "canceled" and view["attempts"] == 0, view
    types = [e["type"] for e in await jobs.job_events(resources.db, uuid.UUID(job_id))]
    assert "canceled" in types and "stage_started" not in types, types
    assert len(events) == 1, events  # no second end event (e.g. failed for the unreachable source)

    report = ReapReport()
    await clean_staging(resources, report)  # a canceled job's staging is deleted like any ended job's
    assert report.staging_cleaned == 1 and await resources.storage.head(staged) is None


async def test_cancel_answers(client: AsyncTestClient[Any], resources: Resources) -> None:
    created = await client.post("/api/jobs", json=clip_body("http://127.0.0.1:9/never.mp4"))
    job_id = created.json()["id"]
    other = await make_key(resources.db, "other")
    foreign = await client.post(f"/api/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {other}"})
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "job_not_found", foreign.text
    assert (await client.get(f"/api/jobs/{job_id}")).json()["status"] == "queued"  # untouched by the other key
    for unknown in (str(uuid.uuid4()), "not-a-uuid"):
        missing = await client.post(f"/api/jobs/{unknown}/cancel")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found", missing.text
    assert (await client.post(f"/api/jobs/{job_id}/cancel")).status_code == 200
    again = await client.post(f"/api/jobs/{job_id}/cancel")
    assert again.status_code == 409, again.text
    error = again.json()["error"]
    assert error["code"] == "job_already_ended" and "canceled" in error["message"], error
    listed = await client.get("/api/jobs", params={"status": "canceled"})
    assert [j["id"] for j in listed.json()["jobs"]] == [job_id], listed.text
    no_key = await client.post(f"/api/jobs/{job_id}/cancel", headers={"Authorization": ""})
    assert no_key.status_code == 401, no_key.text


async def test_a_canceled_job_frees_its_in_flight_slot(client: AsyncTestClient[Any], resources: Resources) -> None:
    quotas = keys.Quotas(max_in_flight=1, max_jobs_per_day=100, max_source_seconds_per_day=1e6)
    token = await make_key(resources.db, "one", quotas=quotas)
    auth = {"Authorization": f"Bearer {token}"}
    body = clip_body("http://127.0.0.1:9/never.mp4")
    first = await client.post("/api/jobs", json=body, headers=auth)
    assert first.status_code == 202, first.text
    refused = await client.post("/api/jobs", json=body, headers=auth)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded", refused.text
    assert (await client.post(f"/api/jobs/{first.json()['id']}/cancel", headers=auth)).status_code == 200
    second = await client.post("/api/jobs", json=body, headers=auth)
    assert second.status_code == 202, second.text


async def test_metadata_round_trip_and_limits(client: AsyncTestClient[Any], resources: Resources) -> None:
    reference = {"customer": "ü-42", "nested": {"n": 1, "ok": True, "none": None}}
    created = await client.post("/api/jobs", json=clip_body("http://127.0.0.1:9/a.mp4", metadata=reference))
    assert created.status_code == 202, created.text
    view = (await client.get(created.headers["Location"])).json()
    assert view["metadata"] == reference and view["request"]["metadata"] == reference, view
    listed = (await client.get("/api/jobs")).json()["jobs"]
    assert listed[0]["metadata"] == reference
    plain = await client.post("/api/jobs", json=clip_body("http://127.0.0.1:9/a.mp4"))
    assert (await client.get(plain.headers["Location"])).json()["metadata"] is None

    limit = resources.settings.max_metadata_bytes
    fits = {"k": "x" * (limit - len('{"k":""}'))}
    accepted = await client.post("/api/jobs", json=clip_body("http://127.0.0.1:9/a.mp4", metadata=fits))
    assert accepted.status_code == 202, accepted.text
    for bad in ({"k": "x" * (limit - len('{"k":""}') + 1)}, {"k": "a\u0000b"}, ["a", "list"], "text", 5):
        refused = await client.post("/api/jobs", json=clip_body("http://127.0.0.1:9/a.mp4", metadata=bad))
        assert refused.status_code == 422, (bad, refused.text)
        error = refused.json()["error"]
        assert error["code"] == "invalid_field" and error["field"] == "metadata", error


async def test_a_done_job_cannot_be_canceled_and_its_end_event_carries_metadata(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path
) -> None:
    events = await record_end_events(resources)
    workers.start()
    key = await upload(client, sample_video)
    created = await client.post("/api/jobs", json=clip_body(key, metadata={"ref": 7}))
    job = await wait_for_job(client, created.json()["id"])
    assert job["status"] == "done" and job["metadata"] == {"ref": 7}, job
    ended = await client.post(f"/api/jobs/{job['id']}/cancel")
    assert ended.status_code == 409, ended.text
    assert ended.json()["error"]["code"] == "job_already_ended" and "done" in ended.json()["error"]["message"]
    assert (await client.get(f"/api/jobs/{job['id']}")).json()["status"] == "done"
    await until(lambda: arrived(events))
    assert [(e.status, e.metadata) for e in events] == [("done", {"ref": 7})]


# --------------------------------------------------------------------------------------- a running encode

LONG_SOURCE_SEC = 14  # a 720p source whose libx264 re-encode takes seconds (as in test_progress.py)
STOP_WITHIN_SEC = 2.0  # a canceled encode's ffmpeg is gone and the row canceled this soon after the cancel
ENCODE_RUNNING_SEC = 0.3  # after the encoder's ffmpeg appears, let it work this long before the cancel


@pytest.fixture(scope="module")
def long_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_media(tmp_path_factory.mktemp("long") / "long.mp4", seconds=LONG_SOURCE_SEC, video="libx264",
                      audio=None, size="1280x720", extra=("-preset", "ultrafast"))


def ffmpeg_children() -> list[int]:
    """ffmpeg processes whose parent is this test process (the workers run in it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if name == "ffmpeg" and int(rest[1]) == os.getpid():
            found.append(int(entry.name))
    return found


async def start_long_encode(client: AsyncTestClient[Any], workers: Workers, res: Resources, source: Path) -> str:
    """A job whose encode stage is running its ffmpeg now; its id."""
    workers.start()
    key = await upload(client, source)
    created = await client.post("/api/jobs", json={
        "source": {"type": "upload", "key": key}, "startSec": 0.5, "endSec": LONG_SOURCE_SEC - 1,
        "metadata": {"ref": "long"},
    })
    job_id = created.json()["id"]

    async def encoding() -> bool:
        row = await jobs.get_job(res.db, uuid.UUID(job_id))
        return row is not None and row["stage"] == "encode" and bool(ffmpeg_children())

    await until(encoding)
    await asyncio.sleep(ENCODE_RUNNING_SEC)
    assert ffmpeg_children(), "the encode ended before it could be canceled"
    return job_id


async def stopped_within(res: Resources, job_id: str, started: float) -> float:
    """Seconds from `started` until no ffmpeg child is left and the row is canceled."""
    async def stopped() -> bool:
        row = await jobs.get_job(res.db, uuid.UUID(job_id))
        return not ffmpeg_children() and row is not None and row["status"] == "canceled"

    await until(stopped, STOP_WITHIN_SEC * 5)
    return time.monotonic() - started


async def assert_nothing_after_cancel(client: AsyncTestClient[Any], res: Resources, job_id: str) -> None:
    """The encode's message was acknowledged, and nothing was uploaded or finished for the job."""
    await until(lambda: queue_drained(res, "encode"))
    await asyncio.sleep(SETTLE_SEC)  # time for a wrongly continued stage to upload and finish
    view = (await client.get(f"/api/jobs/{job_id}")).json()
    assert view["status"] == "canceled" and view["urls"] is None and view["result"] is None, view
    assert await res.storage.list_keys("results/") == []
    types = [e["type"] for e in await jobs.job_events(res.db, uuid.UUID(job_id))]
    assert "done" not in types and not any(t == "stage_finished" for t in types[types.index("canceled"):]), types
    assert await queue_drained(res, "upload")


@pytest.mark.settings(force_cut_path="reencode", video_encoder="libx264", heartbeat_ms=5000)
async def test_a_running_encode_stops_at_once(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, long_source: Path
) -> None:
    """The cancel notice stops it: the heartbeat (every 5 s here) is far too slow to be what did."""
    events = await record_end_events(resources)
    job_id = await start_long_encode(client, workers, resources, long_source)
    started = time.monotonic()
    canceled = await client.post(f"/api/jobs/{job_id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled", canceled.text
    took = await stopped_within(resources, job_id, started)
    print(f"cancel → ffmpeg gone and row canceled: {took:.2f} s")
    assert took < STOP_WITHIN_SEC, took
    await assert_nothing_after_cancel(client, resources, job_id)
    assert events == [JobEvent(job_id=job_id, status="canceled", metadata={"ref": "long"})]


@pytest.mark.settings(force_cut_path="reencode", video_encoder="libx264")
async def test_the_heartbeat_stops_a_canceled_encode_whose_notice_was_lost(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, long_source: Path
) -> None:
    """Only the row is written (no notice published, as when NATS was away): the next heartbeat stops it."""
    job_id = await start_long_encode(client, workers, resources, long_source)
    started = time.monotonic()
    assert await cancels.cancel(resources.db, uuid.UUID(job_id), None) is not None
    took = await stopped_within(resources, job_id, started)
    print(f"row canceled → ffmpeg gone (heartbeat {resources.settings.heartbeat_ms} ms): {took:.2f} s")
    assert took < STOP_WITHIN_SEC, took
    await assert_nothing_after_cancel(client, resources, job_id)


async def test_nothing_ends_a_canceled_job_again(client: AsyncTestClient[Any], resources: Resources) -> None:
    """A stage that missed the cancel can neither begin, finish nor fail the job, nor requeue it."""
    created = await client.post("/api/jobs", json=clip_body("http://127.0.0.1:9/never.mp4"))
    job_id = created.json()["id"]
    assert (await client.post(f"/api/jobs/{job_id}/cancel")).status_code == 200
    uid, db = uuid.UUID(job_id), resources.db
    message = ClipJobMessage(id=job_id, source=UrlSource(url="http://127.0.0.1:9/never.mp4"), start_sec=2, end_sec=4)
    assert await jobs.begin_stage(db, message, "fetch", 1) == "canceled"
    result = ClipResult(actual_start_sec=2, actual_end_sec=4, duration_sec=2, size=1, sha256="0" * 64)
    assert await jobs.complete(db, uid, result, "results/x/clip.mp4", 60) is None
    assert await jobs.fail(db, uid, "internal_error", "late") is None
    await jobs.requeue(db, uid, "transient_error", "late", 1, 0.1)
    row = await jobs.get_job(db, uid)
    assert row is not None and row["status"] == "canceled" and row["result"] is None, dict(row or {})


@pytest.mark.settings(force_cut_path="reencode", video_encoder="libx264", heartbeat_ms=5000)
async def test_a_stray_cancel_notice_does_not_stop_a_job(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, long_source: Path
) -> None:
    """A publish on the cancel subject without the row canceled (anyone on NATS could send one) is ignored."""
    job_id = await start_long_encode(client, workers, resources, long_source)
    running = ffmpeg_children()
    await resources.nc.publish(resources.subjects.cancel(job_id), b"")
    await resources.nc.flush()
    await asyncio.sleep(STOP_WITHIN_SEC / 2)
    row = await jobs.get_job(resources.db, uuid.UUID(job_id))
    assert row is not None and row["status"] == "processing" and row["stage"] == "encode", dict(row or {})
    assert set(running) & set(ffmpeg_children()), "the encode's ffmpeg was stopped by a stray notice"
    assert (await client.post(f"/api/jobs/{job_id}/cancel")).status_code == 200  # the real one still works
    await stopped_within(resources, job_id, time.monotonic())
