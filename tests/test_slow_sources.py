"""A slow-drip origin cannot hold a fetch slot (issue 12, item 6): every read of a user's URL must keep a
minimum average rate (the guarded proxy cuts it, `source_too_slow`), and every ffmpeg run has a wall-clock
deadline (killed past it), so a source that sends a byte a second fails its job within bounded time."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from shared.asr.audio import read_audio
from shared.errors import ClipError
from shared.jobs.pipeline import DEFAULT_ROUTE_LENGTH
from shared.media.cut import copy_cut
from shared.media.ffmpeg import FfmpegDeadline, RunLimits
from shared.net.fetchproxy import fetch_session
from shared.runtime.resources import Resources
from shared.settings import Settings
from tests.conftest import Workers, record_progress, wait_for_job
from tests.http_source import MediaServer
from tests.media import FFMPEG_TIMEOUT_SEC

DRIP_BYTES_PER_SEC = 2.0  # the origin's pace once it drips: never silent long enough for an idle timeout
GRACE_SEC = 2.0  # FETCH_MIN_RATE_GRACE_SEC in these tests
SILENT_SEC = 120.0  # a silent origin sends nothing this long (longer than any retry round of the old code)
SILENT_FAIL_WITHIN_SEC = 25.0  # connect allowance + the grace + the worker's bookkeeping, with margin on 2 cores
FAIL_WITHIN_SEC = 55.0  # a dripping source's job fails within this (grace + rate + ffmpeg's reconnect backoff)
LONG_SEC = 60  # the staging source: 60 s at 2 Mb/s, its moov at the front
FAST_BYTES = 1024 * 1024  # each response's first MiB comes at full speed: the probe's reads, not the staged range
SESSION_CUT_WITHIN_SEC = 3.0  # a read through a session that ended stops within this
STAGED_FROM = 40.0  # the clip's start: its range lies past the first MiB of the file
STAGING_PROGRESS = 0.6 / DEFAULT_ROUTE_LENGTH  # the job's progress when the fetcher begins staging


@pytest.fixture(scope="module")
def long_source(media_dir: Path) -> Path:
    path = media_dir / "slow" / "long.mp4"
    if not path.exists():
        path.parent.mkdir()
        subprocess.run([
            "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size=320x180:rate=30:duration={LONG_SEC}",
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "60", "-bf", "0", "-b:v", "2M", "-maxrate", "2M",
            "-bufsize", "2M", "-movflags", "+faststart", str(path),
        ], check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC)
    return path


async def _job(client: AsyncTestClient[Any], url: str, start: float, end: float) -> tuple[dict[str, Any], float]:
    began = time.monotonic()
    response = await client.post("/api/jobs", json={"source": {"type": "url", "url": url},
                                                     "startSec": start, "endSec": end})
    assert response.status_code == 202, response.text
    job = await wait_for_job(client, response.json()["id"], FAIL_WITHIN_SEC)
    return job, time.monotonic() - began


@pytest.mark.settings(fetch_min_rate_grace_sec=GRACE_SEC)
async def test_a_dripping_origin_fails_its_job_with_source_too_slow(
    client: AsyncTestClient[Any], workers: Workers, sample_video: Path
) -> None:
    workers.start("fetch")
    with MediaServer(sample_video.parent) as origin:
        origin.drip_bytes_per_sec = DRIP_BYTES_PER_SEC
        job, took = await _job(client, origin.url(sample_video.name), 2, 4)
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "source_too_slow", 1), job
    assert "upload" in job["errorMessage"]
    print(f"failed after {took:.1f} s")


@pytest.mark.settings(fetch_min_rate_grace_sec=GRACE_SEC)
async def test_a_silent_origin_fails_once_and_frees_its_fetch_slot(
    client: AsyncTestClient[Any], workers: Workers, sample_video: Path
) -> None:
    """An origin that accepts the connection and sends nothing (not even headers) is below any rate: the job fails
    once with source_too_slow after the grace, instead of holding a fetch slot for the idle timeout per attempt."""
    workers.start("fetch")
    with MediaServer(sample_video.parent) as origin:
        origin.silent_before_headers_sec = SILENT_SEC
        job, took = await _job(client, origin.url(sample_video.name), 2, 4)
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "source_too_slow", 1), job
    assert took < SILENT_FAIL_WITHIN_SEC, f"the silent origin held the job {took:.1f} s"


@pytest.mark.settings(fetch_min_rate_grace_sec=GRACE_SEC)
async def test_a_range_that_drips_while_staging_is_cut_by_the_minimum_rate(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, long_source: Path
) -> None:
    """The probe's reads come fast, then the staging ffmpeg's range drips: its heartbeats do not save it."""
    progress = await record_progress(resources)
    workers.start("fetch")
    with MediaServer(long_source.parent) as origin:
        origin.drip_bytes_per_sec, origin.drip_after_bytes = DRIP_BYTES_PER_SEC, FAST_BYTES
        job, took = await _job(client, origin.url(long_source.name), STAGED_FROM, STAGED_FROM + 8)
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "source_too_slow", 1), job
    assert any(e.job_id == job["id"] and e.pct >= STAGING_PROGRESS for e in progress), "failed before staging"
    print(f"failed after {took:.1f} s")


@pytest.mark.settings(fetch_min_rate_kbps=0, ffmpeg_deadline_base_sec=3, ffmpeg_deadline_per_media_sec=0)
async def test_without_the_rate_floor_the_staging_deadline_stops_a_drip(
    client: AsyncTestClient[Any], workers: Workers, long_source: Path
) -> None:
    """No minimum rate (FETCH_MIN_RATE_KBPS=0): the staging ffmpeg's wall-clock deadline ends it instead."""
    workers.start("fetch")
    with MediaServer(long_source.parent) as origin:
        origin.drip_bytes_per_sec, origin.drip_after_bytes = DRIP_BYTES_PER_SEC, FAST_BYTES
        job, took = await _job(client, origin.url(long_source.name), STAGED_FROM, STAGED_FROM + 8)
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "source_too_slow", 1), job
    assert "deadline" in job["errorMessage"]  # the staging ffmpeg's: the only ffmpeg run of the fetcher
    print(f"failed after {took:.1f} s")


@pytest.mark.settings(fetch_min_rate_grace_sec=GRACE_SEC)
async def test_the_proxy_cuts_a_dripping_read_and_refuses_its_reconnects(
    settings: Settings, sample_video: Path, tmp_path: Path
) -> None:
    with MediaServer(sample_video.parent) as origin:
        origin.drip_bytes_per_sec = DRIP_BYTES_PER_SEC
        async with fetch_session(settings) as session:
            began = time.monotonic()
            with pytest.raises(ClipError) as caught:
                async with asyncio.timeout(FAIL_WITHIN_SEC):
                    with session.errors():
                        await copy_cut(origin.url(sample_video.name), tmp_path / "o.mp4", seek_sec=2, duration_sec=2,
                                       input_args=session.ffmpeg_input_args(origin.url(sample_video.name)))
            took = time.monotonic() - began
    assert caught.value.code == "source_too_slow", caught.value
    assert took < GRACE_SEC + FAIL_WITHIN_SEC / 2
    gets = [r for r in origin.requests if r[0] == "GET"]
    assert len(gets) == 1, gets  # ffmpeg's reconnects were refused by the proxy, never sent on


async def test_an_ffmpeg_run_past_its_deadline_is_killed(sample_video: Path, tmp_path: Path) -> None:
    limits = RunLimits(base_sec=1.0, per_media_sec=0.5)
    with MediaServer(sample_video.parent) as origin:
        origin.drip_bytes_per_sec = DRIP_BYTES_PER_SEC
        began = time.monotonic()
        with pytest.raises(FfmpegDeadline) as caught:
            async with asyncio.timeout(FAIL_WITHIN_SEC):
                await copy_cut(origin.url(sample_video.name), tmp_path / "o.mp4", seek_sec=2, duration_sec=2,
                               limits=limits)
        took = time.monotonic() - began
    assert caught.value.code == "ffmpeg_deadline"
    assert limits.deadline(2) <= took < limits.deadline(2) + 2.0


async def test_the_transcribers_audio_read_has_a_deadline_too(sample_video: Path) -> None:
    limits = RunLimits(base_sec=1.0, per_media_sec=0.5)
    with MediaServer(sample_video.parent) as origin:
        origin.drip_bytes_per_sec = DRIP_BYTES_PER_SEC
        began = time.monotonic()
        with pytest.raises(FfmpegDeadline):
            async with asyncio.timeout(FAIL_WITHIN_SEC):
                await read_audio(origin.url(sample_video.name), start_sec=2, duration_sec=2, limits=limits)
        took = time.monotonic() - began
    assert limits.deadline(2) <= took < limits.deadline(2) + 2.0


async def test_a_read_that_outlives_its_session_is_cut_when_the_session_ends(
    settings: Settings, sample_video: Path
) -> None:
    """A yt-dlp thread cannot be killed at its deadline: the end of its fetch session cuts what it still reads."""
    with MediaServer(sample_video.parent) as origin:
        origin.drip_bytes_per_sec = DRIP_BYTES_PER_SEC
        async with fetch_session(settings) as session:
            http = httpx.AsyncClient(proxy=session.url, timeout=FAIL_WITHIN_SEC, trust_env=False)
            response = await http.send(http.build_request("GET", origin.url(sample_video.name)), stream=True)
            chunks = response.aiter_raw(1)
            assert await anext(chunks)  # the drip has begun
        began = time.monotonic()
        try:
            with pytest.raises(httpx.TransportError):
                async with asyncio.timeout(SESSION_CUT_WITHIN_SEC):
                    async for _ in chunks:
                        pass
        finally:
            await http.aclose()
        took = time.monotonic() - began
    assert took < SESSION_CUT_WITHIN_SEC
