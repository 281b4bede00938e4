"""URL sources are read by range through the guarded proxy: a short clip of a long file moves a small part of it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from shared.media.testpattern import make_test_pattern
from tests.conftest import Workers
from tests.http_source import MediaServer
from tests.jobflow import run_url_job
from tests.test_clip_pipeline import assert_clip_matches, download

LONG_SEC = 300  # the source: 5 minutes at 1.5 Mb/s, about 60 MB
CLIP = (150.0, 154.0)
ORIGIN_SNDBUF_BYTES = 128 * 1024  # an origin's socket buffer (loopback autotunes to MBs: not what a WAN carries)
SMALL_FRACTION = 0.12  # share of the file a 4 s clip of 300 s may move: the span is 1.4%, the rest is the
# moov and what each abandoned open-ended range leaves in flight (~1 MB: socket buffers)


@pytest.fixture(scope="module")
def long_videos(media_dir: Path) -> tuple[Path, Path]:
    """The same 5-minute video with the moov box at the front (+faststart) and at the end."""
    front = make_test_pattern(media_dir / "long-front.mp4", seconds=LONG_SEC, size="320x180", video_bitrate="1500k")
    end = media_dir / "long-end.mp4"
    if not end.exists():
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(front), "-c", "copy", str(end)], check=True,
                       timeout=120)
    return front, end


async def _clip(client: AsyncTestClient[Any], url: str) -> dict[str, Any]:
    return await run_url_job(client, url, startSec=CLIP[0], endSec=CLIP[1])


@pytest.mark.parametrize("moov", ["front", "end"])
async def test_short_clip_of_a_long_url_reads_a_small_part(
    client: AsyncTestClient[Any], workers: Workers, long_videos: tuple[Path, Path], moov: str, tmp_path: Path
) -> None:
    source = long_videos[0] if moov == "front" else long_videos[1]
    size = source.stat().st_size
    workers.start()
    with MediaServer(source.parent) as origin:
        origin.send_buffer_bytes = ORIGIN_SNDBUF_BYTES
        job = await _clip(client, origin.url(source.name))
        sent, requests = origin.bytes_sent, list(origin.requests)
    assert job["status"] == "done", job
    assert sent < SMALL_FRACTION * size, f"{sent} of {size} bytes moved ({sent / size:.1%}): {requests}"
    assert all(r[2] is not None for r in requests if r[0] == "GET"), requests  # every read was a range read
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    assert_clip_matches(clip, source, job, CLIP[0], CLIP[1])
    print(f"moov at the {moov}: {sent} of {size} bytes ({sent / size:.2%}) in {len(requests)} requests")


async def test_server_without_ranges_is_downloaded_whole(
    client: AsyncTestClient[Any], workers: Workers, sample_video: Path
) -> None:
    workers.start()
    with MediaServer(sample_video.parent) as origin:
        origin.ranges = False
        job = await run_url_job(client, origin.url(sample_video.name), startSec=4, endSec=6)
        sent = origin.bytes_sent
    assert job["status"] == "done", job
    assert sent >= sample_video.stat().st_size
