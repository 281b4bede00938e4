"""At-least-once delivery: duplicates change nothing, a killed worker's job finishes elsewhere."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from services.fetcher.handler import handle as fetch
from services.trimmer.handler import handle as trim
from services.uploader.handler import handle as upload_result
from shared.db import jobs
from shared.jobs.contracts import ClipJobMessage, UrlSource
from shared.jobs.ids import uuid7
from shared.jobs.pipeline import DEFAULT_ROUTE_LENGTH
from shared.runtime import bus
from shared.runtime.progress import Progress
from shared.runtime.resources import Resources
from shared.runtime.worker import StageDeps
from shared.settings import Settings, settings_env
from shared.storage.clipstore import WRITE_META
from tests.conftest import Workers, wait_for_job
from tests.http_source import MediaServer

REPO = Path(__file__).resolve().parent.parent
WAIT_SEC = 30.0
STALL_SEC = 60.0  # the origin holds the first download this long: the worker is mid-job when we signal it


async def queues_empty(res: Resources) -> None:
    """Wait (bounded) until no stage has a pending or unacknowledged message."""
    async with asyncio.timeout(WAIT_SEC):
        while await bus.backlog(res.js, res.settings) > 0:  # noqa: ASYNC110 - polling the server
            await asyncio.sleep(0.1)


async def test_redelivered_stage_messages_change_nothing(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path
) -> None:
    captured: list[tuple[str, bytes]] = []

    async def keep(msg: Any) -> None:
        captured.append((msg.subject, msg.data))

    prefix = resources.settings.subject_prefix
    taps = [await resources.nc.subscribe(f"{prefix}.{stage}.*", cb=keep) for stage in ("trim", "upload")]
    workers.start()
    with MediaServer(sample_video.parent) as origin:
        response = await client.post("/api/jobs", json={
            "source": {"type": "url", "url": origin.url(sample_video.name)}, "startSec": 3, "endSec": 7,
        })
        job = await wait_for_job(client, response.json()["id"])
        assert job["status"] == "done"
        for tap in taps:
            await tap.unsubscribe()
        assert len(captured) == 2
        for subject, data in captured:  # the same messages again, as a redelivery would bring them
            await resources.js.publish(subject, data)
        await queues_empty(resources)
    again = (await client.get(f"/api/jobs/{job['id']}")).json()
    assert again["result"] == job["result"] and again["status"] == "done"
    assert len(await resources.storage.list_keys("results/")) == 1
    events = [e["type"] for e in await jobs.job_events(resources.db, uuid.UUID(job["id"]))]
    assert events.count("done") == 1


async def test_each_stage_run_twice_gives_one_result(
    resources: Resources, sample_video: Path, tmp_path: Path
) -> None:
    """A worker that stored its output but died before acking: the redelivered message short-circuits."""
    with MediaServer(sample_video.parent) as origin:
        job = ClipJobMessage(
            id=str(uuid7()), source=UrlSource(url=origin.url(sample_video.name)), start_sec=2.5, end_sec=6
        )
        status = await jobs.begin_stage(resources.db, job, "fetch", 1)
        assert status == "processing"

        def deps(name: str) -> StageDeps:
            scratch = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}"
            scratch.mkdir()
            return StageDeps(resources, Progress(name, 0, DEFAULT_ROUTE_LENGTH), scratch, 1)

        staged_once, staged_twice = await fetch(job, deps("fetch")), await fetch(job, deps("fetch"))
    assert staged_once == staged_twice
    clip_key = f"staging/{job.id}/clip.mp4"
    trimmed = await trim(staged_once, deps("trim"))
    first_write = await resources.storage.head(clip_key)
    trimmed_again = await trim(staged_once, deps("trim"))
    second_write = await resources.storage.head(clip_key)
    assert trimmed_again == trimmed and first_write is not None and second_write is not None
    # every write of a clip records a fresh random id: the same id means it was not cut and written again
    assert first_write.metadata[WRITE_META] == second_write.metadata[WRITE_META]
    assert await upload_result(trimmed, deps("upload")) is None
    assert await upload_result(trimmed, deps("upload")) is None
    assert len(await resources.storage.list_keys("results/")) == 1
    events = [e["type"] for e in await jobs.job_events(resources.db, uuid.UUID(job.id))]
    assert events.count("done") == 1
    row = await jobs.get_job(resources.db, uuid.UUID(job.id))
    assert row is not None and row["status"] == "done"
    assert msgspec.convert(row["result"], dict)["sha256"] == trimmed.result.sha256  # type: ignore[union-attr]


@contextmanager
def fetch_worker_processes(
    settings: Settings, folder: Path, stage: str = "fetch"
) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """Starts `clipjet worker <stage>` processes (output in <folder>/<name>.log); stops those still alive after."""
    started: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(REPO)}

    def start(name: str) -> subprocess.Popen[bytes]:
        with (folder / f"{name}.log").open("ab") as out:
            started.append(subprocess.Popen(
                [sys.executable, "-m", "services", "worker", stage], cwd=REPO, env=env, stdout=out,
                stderr=subprocess.STDOUT,
            ))
        return started[-1]

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=WAIT_SEC)


async def post_stalled_job(client: AsyncTestClient[Any], origin: MediaServer, video: Path) -> str:
    origin.stall_first_get_sec = STALL_SEC
    origin.ranges = False  # a whole download (range reads would leave the stalled connection behind)
    response = await client.post("/api/jobs", json={
        "source": {"type": "url", "url": origin.url(video.name)}, "startSec": 2, "endSec": 6,
    })
    assert response.status_code == 202
    started = await asyncio.to_thread(origin.first_get_started.wait, WAIT_SEC)
    assert started, "no worker started the download"
    view = (await client.get(f"/api/jobs/{response.json()['id']}")).json()
    assert (view["status"], view["stage"]) == ("processing", "fetch")
    return response.json()["id"]


async def signal_worker_mid_job(
    sig: signal.Signals, settings: Settings, workers: Workers, client: AsyncTestClient[Any], video: Path,
    folder: Path,
) -> tuple[dict[str, Any], float, int]:
    """A fetch worker process takes a job whose download stalls and gets `sig`; a second one starts.

    Returns the job as it ended, the seconds from the signal to its end, and the first worker's exit code.
    """
    workers.start("trim", "upload")
    with fetch_worker_processes(settings, folder) as start, MediaServer(video.parent) as origin:
        first = start("first")
        job_id = await post_stalled_job(client, origin, video)
        signalled_at = time.monotonic()
        first.send_signal(sig)
        start("second")
        job = await wait_for_job(client, job_id)
        took = time.monotonic() - signalled_at
        return job, took, first.wait(timeout=WAIT_SEC)


@pytest.mark.settings(queue_visibility_sec=3.0)
async def test_sigkilled_worker_job_completes_on_another_after_visibility(
    settings: Settings, resources: Resources, workers: Workers, client: AsyncTestClient[Any],
    sample_video: Path, tmp_path: Path,
) -> None:
    job, took, exit_code = await signal_worker_mid_job(
        signal.SIGKILL, settings, workers, client, sample_video, tmp_path
    )
    assert exit_code == -signal.SIGKILL
    assert job["status"] == "done", (job, (tmp_path / "second.log").read_text()[-2000:])
    assert job["attempts"] == 2
    assert took >= settings.queue_visibility_sec * 0.8  # redelivered only after ack_wait


@pytest.mark.settings(queue_visibility_sec=60.0, shutdown_grace_sec=1.0)
async def test_sigterm_hands_in_flight_work_back_at_once(
    resources: Resources, workers: Workers, client: AsyncTestClient[Any], settings: Settings,
    sample_video: Path, tmp_path: Path,
) -> None:
    """Graceful stop: work that cannot finish within the grace period is returned, not left to time out."""
    job, took, exit_code = await signal_worker_mid_job(
        signal.SIGTERM, settings, workers, client, sample_video, tmp_path
    )
    assert exit_code == 0
    assert job["status"] == "done" and job["attempts"] == 2
    assert took < settings.queue_visibility_sec / 2  # handed back, not redelivered after ack_wait
    assert "handed_back" in (tmp_path / "first.log").read_text()
