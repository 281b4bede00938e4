"""The reaper on real NATS, PostgreSQL and S3: outbox, expiry, staging cleanup, stuck jobs, partitions, replicas."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from services.reaper.handler import TRY_LOCK, UNLOCK, reap_once, run_reaper
from shared.db import jobs
from shared.jobs.contracts import ClipJobMessage, JobEvent, Priority, UploadSource, UrlSource
from shared.jobs.ids import uuid7
from shared.jobs.pipeline import ENTRY_STAGE
from shared.runtime import bus
from shared.runtime.resources import Resources, open_resources
from shared.settings import Settings
from shared.storage.s3 import result_key, staging_prefix
from tests.conftest import Workers, wait_for_job
from tests.http_source import MediaServer

WAIT_SEC = 10.0  # longest a test waits for a message or a loop to stop
POLL_SEC = 0.05
SET_HEARTBEAT_AGO = "UPDATE jobs SET last_heartbeat_at = now() - make_interval(secs => $2) WHERE id = $1"
SET_EXPIRED = "UPDATE jobs SET expires_at = now() - interval '1 second' WHERE id = $1"
SET_STATUS = "UPDATE jobs SET status = $2, published_at = now() WHERE id = $1"
SET_PUBLISHED_AGO = "UPDATE jobs SET published_at = now() - make_interval(secs => $2) WHERE id = $1"
SET_REQUEST = "UPDATE jobs SET request = $2 WHERE id = $1"
OLD_PARTITIONS = (
    "CREATE TABLE jobs_20200101 PARTITION OF jobs FOR VALUES FROM ('2020-01-01 00:00Z') TO ('2020-01-02 00:00Z')",
    "CREATE TABLE jobs_20200102 PARTITION OF jobs FOR VALUES FROM ('2020-01-02 00:00Z') TO ('2020-01-03 00:00Z')",
    "CREATE TABLE jobs_20200103 PARTITION OF jobs FOR VALUES FROM ('2020-01-03 00:00Z') TO ('2020-01-04 00:00Z')",
    "CREATE TABLE jobs_20200104 (id uuid)",  # a look-alike that is not a partition of jobs
)
TABLE_EXISTS = "SELECT to_regclass($1) IS NOT NULL"
DROP_TABLE_DAY_AFTER_TOMORROW = """
DO $$ BEGIN
    EXECUTE format('DROP TABLE %I', 'jobs_' || to_char((now() AT TIME ZONE 'UTC')::date + 2, 'YYYYMMDD'));
END $$
"""


def new_job(url: str = "http://127.0.0.1:9/none.mp4", *, at: datetime | None = None,
            priority: Priority = "normal") -> ClipJobMessage:
    job_id = uuid7(int(at.timestamp() * 1000)) if at else uuid7()
    return ClipJobMessage(id=str(job_id), source=UrlSource(url=url), start_sec=2.0, end_sec=5.0, priority=priority)


async def insert_unpublished(res: Resources, job: ClipJobMessage) -> None:
    """The row the gateway writes before it publishes, as a gateway that died right then left it."""
    async with res.db.acquire() as conn:
        assert await jobs.insert_job(conn, job)


async def event_types(res: Resources, job_id: str) -> list[str]:
    return [e["type"] for e in await jobs.job_events(res.db, uuid.UUID(job_id))]


async def pending(res: Resources, priority: Priority) -> int:
    info = await res.js.consumer_info(res.settings.nats_stream, bus.consumer_name(ENTRY_STAGE, priority))
    return info.num_pending + info.num_ack_pending


async def clip(client: AsyncTestClient[Any], origin: MediaServer, video: Path) -> dict[str, Any]:
    response = await client.post("/api/jobs", json={
        "source": {"type": "url", "url": origin.url(video.name)}, "startSec": 2, "endSec": 6,
    })
    assert response.status_code == 202, response.text
    job = await wait_for_job(client, response.json()["id"])
    assert job["status"] == "done", job
    return job


async def view(client: AsyncTestClient[Any], job_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.settings(outbox_grace_sec=0)
async def test_unpublished_job_is_republished_once_and_processed(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path
) -> None:
    with MediaServer(sample_video.parent) as origin:
        orphan = new_job(origin.url(sample_video.name), priority="fast")
        await insert_unpublished(resources, orphan)
        taken = new_job(priority="fast")  # published straight to NATS and retried: a message exists, no published_at
        assert await jobs.begin_stage(resources.db, taken, ENTRY_STAGE, 1) == "processing"
        await jobs.requeue(resources.db, uuid.UUID(taken.id), "source_unreachable", "retry", 1, 1.0)
        normal = await client.post("/api/jobs", json={
            "source": {"type": "url", "url": origin.url(sample_video.name)}, "startSec": 1, "endSec": 2,
            "priority": "fast", "precision": "keyframe",  # no keyframe inside 1-2 s: frame-accurate needs the encoder
        })
        assert normal.status_code == 202

        first, second = await reap_once(resources), await reap_once(resources)
        assert (first.republished, second.republished) == (1, 0)
        assert first.errors == second.errors == []
        assert await pending(resources, "fast") == 2  # the gateway's job and the orphan, once each
        workers.start()
        done = await wait_for_job(client, orphan.id)
        assert (await wait_for_job(client, normal.json()["id"]))["status"] == "done"
    assert done["status"] == "done" and done["attempts"] == 1
    assert done["result"]["actualStartSec"] == pytest.approx(2.0, abs=1e-3)
    assert (await event_types(resources, orphan.id)).count("republished") == 1
    assert "republished" not in await event_types(resources, taken.id)
    assert "republished" not in await event_types(resources, normal.json()["id"])


async def test_expired_result_is_deleted_unless_a_live_job_shares_it(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path
) -> None:
    workers.start()
    with MediaServer(sample_video.parent) as origin:
        first = await clip(client, origin, sample_video)
        second = await clip(client, origin, sample_video)  # the same clip: the same content-hashed object
    sha = first["result"]["sha256"]
    assert second["result"]["sha256"] == sha
    key = result_key(sha, "clip.mp4")
    await resources.db.execute(SET_EXPIRED, uuid.UUID(first["id"]))

    report = await reap_once(resources)
    assert (report.expired, report.results_deleted, report.errors) == (1, 0, [])
    gone = await view(client, first["id"])
    assert gone["status"] == "expired" and gone["urls"] is None
    assert await resources.storage.head(key) is not None  # the second job still serves it
    live = await view(client, second["id"])
    async with httpx.AsyncClient() as http:
        assert (await http.get(live["urls"]["video"])).status_code == 200

    await resources.db.execute(SET_EXPIRED, uuid.UUID(second["id"]))
    report = await reap_once(resources)
    assert (report.expired, report.results_deleted) == (1, 1)
    assert (await view(client, second["id"]))["status"] == "expired"
    assert await resources.storage.head(key) is None
    assert await resources.storage.list_keys("results/") == []
    assert (await event_types(resources, first["id"])).count("expired") == 1


async def test_staging_of_ended_jobs_is_deleted_once_and_of_running_jobs_kept(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path, tmp_path: Path
) -> None:
    workers.start()
    with MediaServer(sample_video.parent) as origin:
        done = await clip(client, origin, sample_video)
    staged = await resources.storage.list_keys(staging_prefix(done["id"]))
    assert staged  # the staged source range and the cut clip
    running = new_job()  # a worker is on it right now
    assert await jobs.begin_stage(resources.db, running, "trim", 1) == "processing"
    scratch = tmp_path / "source.mp4"
    scratch.write_bytes(b"staged media")
    running_key = f"{staging_prefix(running.id)}source.mp4"
    await resources.storage.put_file(running_key, scratch, "video/mp4", {})

    report = await reap_once(resources)
    assert (report.staging_cleaned, report.staging_objects_deleted, report.errors) == (1, len(staged), [])
    assert await resources.storage.list_keys(staging_prefix(done["id"])) == []
    assert await resources.storage.list_keys(staging_prefix(running.id)) == [running_key]
    assert (await view(client, done["id"]))["status"] == "done"  # the result itself is untouched
    assert (await reap_once(resources)).staging_cleaned == 0  # once


@pytest.mark.settings(stuck_after_sec=2, lost_republish_max=0)
async def test_silent_processing_job_is_failed_as_stuck(
    client: AsyncTestClient[Any], resources: Resources, settings: Settings
) -> None:
    announced: list[JobEvent] = []
    arrived = asyncio.Event()

    async def keep(msg: Any) -> None:
        announced.append(msgspec.json.decode(msg.data, type=JobEvent))
        arrived.set()

    await resources.nc.subscribe(resources.subjects.events("*"), cb=keep)
    redelivery_window = settings.queue_visibility_sec * settings.max_attempts
    stuck, recent, waiting, alive = new_job(), new_job(), new_job(), new_job()
    for job in (stuck, recent, waiting, alive):
        assert await jobs.begin_stage(resources.db, job, ENTRY_STAGE, 1) == "processing"
    await resources.db.execute(SET_HEARTBEAT_AGO, uuid.UUID(stuck.id), 3600.0)
    await resources.db.execute(SET_HEARTBEAT_AGO, uuid.UUID(recent.id), redelivery_window / 2)  # may come back
    # the fetcher finished and published the next message, whose queue is long: not stuck, only waiting
    subject = await bus.publish_job(resources.js, resources.subjects, waiting)
    seq = (await resources.js.get_last_msg(resources.settings.nats_stream, subject)).seq
    await jobs.record_event(resources.db, uuid.UUID(waiting.id), "stage_finished", {"stage": ENTRY_STAGE, "seq": seq})
    await resources.db.execute(SET_HEARTBEAT_AGO, uuid.UUID(waiting.id), 3600.0)

    report = await reap_once(resources)
    assert (report.stuck_failed, report.errors) == (1, [])
    failed = await view(client, stuck.id)
    assert (failed["status"], failed["errorCode"]) == ("failed", "stuck")
    assert "no worker reported" in failed["errorMessage"] and "submit it again" in failed["errorMessage"]
    for job in (recent, waiting, alive):
        assert (await view(client, job.id))["status"] == "processing"
    await asyncio.wait_for(arrived.wait(), timeout=WAIT_SEC)
    assert announced == [JobEvent(job_id=stuck.id, status="failed", error_code="stuck")]
    assert (await event_types(resources, stuck.id)).count("failed") == 1
    assert (await reap_once(resources)).stuck_failed == 0


async def test_old_partitions_are_dropped_only_when_nothing_in_them_is_needed(resources: Resources) -> None:
    for statement in OLD_PARTITIONS:
        await resources.db.execute(statement)
    await resources.db.execute(DROP_TABLE_DAY_AFTER_TOMORROW)
    rows = {  # partition day → the one job in it and its status
        "jobs_20200101": (new_job(at=datetime(2020, 1, 1, 12, tzinfo=UTC)), "expired"),
        "jobs_20200102": (new_job(at=datetime(2020, 1, 2, 12, tzinfo=UTC)), "queued"),
        "jobs_20200103": (new_job(at=datetime(2020, 1, 3, 12, tzinfo=UTC)), "done"),
    }
    for job, status in rows.values():
        await insert_unpublished(resources, job)
        await resources.db.execute(SET_STATUS, uuid.UUID(job.id), status)

    report = await reap_once(resources)
    assert report.errors == []
    assert report.partitions_dropped == ["jobs_20200101"]
    assert report.partitions_created == 1  # the day after tomorrow's, again
    for name, expected in (("jobs_20200101", False), ("jobs_20200102", True), ("jobs_20200103", True),
                           ("jobs_20200104", True)):
        assert await resources.db.fetchval(TABLE_EXISTS, name) is expected, name
    assert await jobs.get_job(resources.db, uuid.UUID(rows["jobs_20200101"][0].id)) is None
    kept = await jobs.get_job(resources.db, uuid.UUID(rows["jobs_20200102"][0].id))
    assert kept is not None and kept["status"] == "queued"


@pytest.mark.settings(outbox_grace_sec=0)
async def test_replicas_never_publish_twice(resources: Resources, settings: Settings) -> None:
    orphans = [new_job(priority="bulk") for _ in range(3)]
    for job in orphans:
        await insert_unpublished(resources, job)
    async with resources.db.acquire() as other_replica:  # another replica's pass is under way
        assert await other_replica.fetchval(TRY_LOCK)
        try:
            held = await reap_once(resources)
        finally:
            await other_replica.fetchval(UNLOCK)
    assert held.skipped and held.republished == 0

    async with open_resources(settings, "test-replica") as replica:
        reports = await asyncio.gather(reap_once(resources), reap_once(replica), reap_once(resources))
    assert sum(r.republished for r in reports) == 3
    assert all(r.errors == [] for r in reports)
    assert await pending(resources, "bulk") == 3
    for job in orphans:
        assert (await event_types(resources, job.id)).count("republished") == 1


@pytest.mark.settings(outbox_grace_sec=0, reaper_interval_sec=0.2)
async def test_reaper_loop_keeps_reaping_until_stopped(resources: Resources) -> None:
    stop = asyncio.Event()
    loop = asyncio.create_task(run_reaper(resources, stop))
    orphan = new_job()
    await insert_unpublished(resources, orphan)
    async with asyncio.timeout(WAIT_SEC):
        while True:
            if "republished" in await event_types(resources, orphan.id):
                break
            await asyncio.sleep(POLL_SEC)
    stop.set()
    await asyncio.wait_for(loop, timeout=WAIT_SEC)
    assert await pending(resources, "normal") == 1


@pytest.mark.settings(outbox_grace_sec=0)
async def test_a_poison_outbox_row_fails_alone_and_the_rest_are_published(resources: Resources) -> None:
    """Oldest first: a row the server refuses (over NATS's max_payload) and a row that is no job come before two
    good ones; each bad row fails its own job, the good ones are published, and nothing is left for next pass."""
    too_big = new_job()
    too_big.source = UploadSource(key="k" * (resources.nc.max_payload + 1))
    not_a_job = new_job()
    good = [new_job(priority="bulk"), new_job(priority="bulk")]
    for job in (too_big, not_a_job, *good):
        await insert_unpublished(resources, job)
    await resources.db.execute(SET_REQUEST, uuid.UUID(not_a_job.id), {"id": not_a_job.id, "startSec": "soon"})

    report = await reap_once(resources)
    assert (report.republished, report.outbox_failed, report.outbox_errors, report.errors) == (2, 2, 0, [])
    assert await pending(resources, "bulk") == 2
    for bad in (too_big, not_a_job):
        row = await jobs.get_job(resources.db, uuid.UUID(bad.id))
        assert row is not None and (row["status"], row["error_code"]) == ("failed", "invalid_message")
    for job in good:
        assert (await event_types(resources, job.id)).count("republished") == 1
    again = await reap_once(resources)
    assert (again.republished, again.outbox_failed, again.errors) == (0, 0, [])


@pytest.mark.settings(stuck_after_sec=2, queue_visibility_sec=0.5)
async def test_a_published_job_whose_message_was_lost_is_published_again(resources: Resources) -> None:
    """The gateway published it (published_at set) and NATS lost the message before any worker took it."""
    lost, waiting = new_job(priority="bulk"), new_job(priority="fast")
    for job in (lost, waiting):
        await insert_unpublished(resources, job)
        await resources.db.execute(SET_PUBLISHED_AGO, uuid.UUID(job.id), 3600.0)
    await bus.publish_job(resources.js, resources.subjects, waiting)  # only this one's message is there

    report = await reap_once(resources)
    assert (report.lost_republished, report.stuck_failed, report.errors) == (1, 0, [])
    assert await pending(resources, "bulk") == 1 and await pending(resources, "fast") == 1
    assert (await event_types(resources, lost.id)).count("message_republished") == 1
    assert "message_republished" not in await event_types(resources, waiting.id)
    assert (await reap_once(resources)).lost_republished == 0
