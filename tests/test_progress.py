"""Progress and heartbeats: the job row is written every HEARTBEAT_MS (even while progress stands still),
and progress really moves during a long encode."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from shared.db import jobs
from shared.runtime.resources import Resources
from tests.conftest import Workers, record_progress, wait_for_job
from tests.http_source import MediaServer
from tests.jobflow import run_upload_job
from tests.media import make_media

WAIT_SEC = 30.0
STALL_SEC = 2.0  # the origin holds the download this long: the fetch stage's progress stands still
SAMPLE_SEC = 0.02  # how often the job row is read
MIN_BEATS = 4  # heartbeats the row must show while the stall lasts (HEARTBEAT_MS is 100 in tests)
MIN_ENCODE_STEPS = 3  # distinct progress values the long encode must show
LONG_SOURCE_SEC = 14  # a 720p source whose re-encode takes seconds (ffmpeg reports progress every 0.5 s)


async def sample_row(res: Resources, job_id: str, seconds: float) -> list[tuple[Any, float, str | None]]:
    """(last_heartbeat_at, progress, stage) of the job row, read every SAMPLE_SEC for `seconds`."""
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        row = await jobs.get_job(res.db, uuid.UUID(job_id))
        if row is not None:
            seen.append((row["last_heartbeat_at"], float(row["progress"]), row["stage"]))
        await asyncio.sleep(SAMPLE_SEC)
    return seen


async def test_heartbeat_writes_the_row_while_progress_stands_still(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path
) -> None:
    received = await record_progress(resources)
    workers.start()
    with MediaServer(sample_video.parent) as origin:
        origin.stall_first_get_sec = STALL_SEC
        origin.ranges = False  # a whole download, which the stall holds up
        response = await client.post("/api/jobs", json={
            "source": {"type": "url", "url": origin.url(sample_video.name)}, "startSec": 2, "endSec": 4,
        })
        assert await asyncio.to_thread(origin.first_get_started.wait, WAIT_SEC), "no worker started the download"
        job_id = response.json()["id"]
        stalled = await sample_row(resources, job_id, STALL_SEC * 0.6)
        job = await wait_for_job(client, job_id)
    assert job["status"] == "done"
    in_fetch = [s for s in stalled if s[2] == "fetch"]
    assert len({p for _, p, _ in in_fetch}) == 1, in_fetch  # progress stood still meanwhile
    beats = sorted({at for at, _, _ in in_fetch})
    period = resources.settings.heartbeat_ms / 1000
    assert len(beats) >= MIN_BEATS, beats  # the reaper sees a live worker, not a silent one
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(beats)]
    assert max(gaps) < period * 3, gaps  # every HEARTBEAT_MS, give or take a busy machine
    assert received and all(e.job_id == job["id"] for e in received)
    assert any(e.stage == "fetch" for e in received)
    pcts = [e.pct for e in received]
    assert pcts == sorted(pcts) and all(0 <= p <= 1 for p in pcts)


@pytest.mark.settings(force_cut_path="reencode", video_encoder="libx264")
async def test_progress_moves_during_a_long_encode(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    source = make_media(tmp_path_factory.mktemp("long") / "long.mp4", seconds=LONG_SOURCE_SEC, video="libx264",
                        audio=None, size="1280x720", extra=("-preset", "ultrafast"))
    received = await record_progress(resources)
    workers.start()
    job = await run_upload_job(client, source, startSec=0.5, endSec=LONG_SOURCE_SEC - 1)
    assert job["status"] == "done" and job["result"]["cutPath"] == "reencode", job
    encode = [e.pct for e in received if e.job_id == job["id"] and e.stage == "encode"]
    assert len(encode) >= MIN_ENCODE_STEPS, encode  # several heartbeats saw the encode move
    assert all(a < b for a, b in itertools.pairwise(encode)), encode  # strictly increasing
    assert encode[-1] - encode[0] > 0.1, encode  # a real part of the job, not rounding
