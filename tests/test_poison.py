"""A poison message: the worker holding it dies on every delivery. After MAX_ATTEMPTS deliveries JetStream sends
its MAX_DELIVERIES advisory, and the reaper fails the job (`max_deliveries_exceeded`) instead of leaving it
`processing`."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from services.reaper.handler import reap_once, run_reaper
from services.reaper.poison import MAX_DELIVERIES_CODE
from shared.db import jobs
from shared.jobs.contracts import ClipJobMessage
from shared.jobs.pipeline import ENTRY_STAGE
from shared.runtime import bus
from shared.runtime.resources import Resources
from shared.settings import Settings
from tests.chaos import Fleet
from tests.conftest import wait_for_job
from tests.http_source import MediaServer
from tests.test_reaper import SET_HEARTBEAT_AGO, new_job

WAIT_SEC = 30.0
STALL_SEC = 120.0  # every download of the source hangs: the fetch worker is mid-job until it is killed
CHECK_NO_MORE_SEC = 1.0  # after the job failed, how long a fresh worker is given to (wrongly) take it again


def gets(origin: MediaServer) -> int:
    return sum(1 for method, _, _ in origin.requests if method == "GET")


async def wait_gets(origin: MediaServer, count: int) -> None:
    async with asyncio.timeout(WAIT_SEC):
        while gets(origin) < count:  # noqa: ASYNC110 - the origin is a thread
            await asyncio.sleep(0.05)


@pytest.mark.chaos
@pytest.mark.settings(queue_visibility_sec=2.0, reaper_interval_sec=60.0)
async def test_message_that_kills_its_worker_every_time_fails_its_job(
    settings: Settings, resources: Resources, client: AsyncTestClient[Any],
    sample_video: Path, tmp_path: Path,
) -> None:
    stop = asyncio.Event()
    reaper = asyncio.create_task(run_reaper(resources, stop))
    fleet = Fleet(settings, tmp_path)
    try:
        with MediaServer(sample_video.parent) as origin:
            origin.stall_every_get_sec = STALL_SEC
            fleet.start_worker("fetch")
            response = await client.post("/api/jobs", json={
                "source": {"type": "url", "url": origin.url(sample_video.name)}, "startSec": 1, "endSec": 3,
            })
            job_id = response.json()["id"]
            for delivery in range(1, settings.max_attempts + 1):
                await wait_gets(origin, delivery)  # this delivery's worker is downloading: kill it mid-job
                fleet.kill("fetch")
                fleet.start_worker("fetch")
            job = await wait_for_job(client, job_id, WAIT_SEC)
            await asyncio.sleep(CHECK_NO_MORE_SEC)
            assert gets(origin) == settings.max_attempts  # never delivered again
    finally:
        fleet.stop()
        stop.set()
        await asyncio.wait_for(reaper, WAIT_SEC)
    assert (job["status"], job["errorCode"]) == ("failed", MAX_DELIVERIES_CODE), job
    assert job["attempts"] == settings.max_attempts
    events = await jobs.job_events(resources.db, uuid.UUID(job_id))
    started = [e["data"]["attempt"] for e in events if e["type"] == "stage_started"]
    assert started == [1, 2, 3]
    assert [e["type"] for e in events].count("failed") == 1
    info = await resources.js.stream_info(settings.nats_stream)
    assert info.state.messages == 0  # the poison message is deleted, not left in the stream


@pytest.mark.settings(stuck_after_sec=2, queue_visibility_sec=0.5, lost_republish_max=1)
async def test_silent_job_is_republished_when_its_message_is_gone_and_failed_when_spent(
    resources: Resources, client: AsyncTestClient[Any]
) -> None:
    """The reaper's stuck step looks at the message by the stream sequence the runtime recorded: deliverable →
    left alone; gone → published again from the entry stage (LOST_REPUBLISH_MAX times), then `stuck`; past its
    last delivery → `max_deliveries_exceeded`."""
    waiting, gone, spent = new_job(), new_job(), new_job()
    attempts = {waiting.id: 1, gone.id: 1, spent.id: resources.settings.max_attempts}
    seqs = {}
    for job in (waiting, gone, spent):
        await bus.publish_job(resources.js, resources.subjects, job)
        seqs[job.id] = (await resources.js.get_last_msg(resources.settings.nats_stream, subject_of(resources, job))).seq
        assert await jobs.begin_stage(resources.db, job, ENTRY_STAGE, attempts[job.id], seqs[job.id]) == "processing"
        await resources.db.execute(SET_HEARTBEAT_AGO, uuid.UUID(job.id), 3600.0)
    await resources.js.delete_msg(resources.settings.nats_stream, seqs[gone.id])  # lost by a NATS crash

    report = await reap_once(resources)
    assert (report.stuck_failed, report.lost_republished, report.errors) == (1, 1, [])
    views = {job.id: (await client.get(f"/api/jobs/{job.id}")).json() for job in (waiting, gone, spent)}
    assert views[waiting.id]["status"] == "processing"  # its message waits for a worker: not stuck
    assert views[gone.id]["status"] == "processing"  # published again: a worker will take it
    assert (views[spent.id]["status"], views[spent.id]["errorCode"]) == ("failed", MAX_DELIVERIES_CODE)
    again = await resources.js.get_last_msg(resources.settings.nats_stream, subject_of(resources, gone))
    assert msgspec.json.decode(again.data, type=ClipJobMessage) == gone
    info = await resources.js.stream_info(resources.settings.nats_stream)
    assert info.state.messages == 2  # the spent message is deleted; the waiting one kept, the lost one back
    assert (await reap_once(resources)).lost_republished == 0  # heard from now: not silent any more

    await resources.js.delete_msg(resources.settings.nats_stream, again.seq)  # lost once more
    await resources.db.execute(SET_HEARTBEAT_AGO, uuid.UUID(gone.id), 3600.0)
    report = await reap_once(resources)
    assert (report.stuck_failed, report.lost_republished) == (1, 0)  # LOST_REPUBLISH_MAX (1) used up
    failed = (await client.get(f"/api/jobs/{gone.id}")).json()
    assert (failed["status"], failed["errorCode"]) == ("failed", "stuck")
    events = [e["type"] for e in await jobs.job_events(resources.db, uuid.UUID(gone.id))]
    assert events.count("message_republished") == 1


def subject_of(res: Resources, job: ClipJobMessage) -> str:
    return res.subjects.stage(ENTRY_STAGE, job.priority)
