"""What one request can make clipjet do is bounded (issue 12, item 5): frame size and rate at probe time, the
keyframe lead-in staged and decoded, and the clip's duration whatever the media's timestamps claim."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import av
import pytest
from litestar.testing import AsyncTestClient

from shared.errors import SourceUnreadable
from shared.media.probe import read_info
from shared.runtime.resources import Resources
from shared.storage.s3 import staging_prefix
from tests.conftest import Workers
from tests.http_source import MediaServer
from tests.jobflow import run_url_job
from tests.media import FFMPEG_TIMEOUT_SEC, keyframe_times, probe
from tests.test_clip_pipeline import download

ONE_KEY_SEC = 40  # a source with a single keyframe, at 0
GAP_SEC = 27_000  # the timestamp jump of the "hours" source: 7.5 hours
GAP_AFTER_FRAMES = 100  # frames before the jump (10 s at 10 fps)
FRAME_SEC = 0.1  # 10 fps sources
CLIP_TOLERANCE_SEC = 0.25  # a clip may run this much past what was asked (the last frame, audio packets)


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC)


def _h264(*, gop: str) -> list[str]:
    return ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-bf", "0",
            "-x264-params", f"keyint={gop}:min-keyint={gop}:scenecut=0"]


@pytest.fixture(scope="module")
def bounds_media(media_dir: Path) -> Path:
    """A folder of sources: `one-key.mp4` (one keyframe, at 0), `8k.mp4` (7680x4320, 3 frames), `240fps.mp4`,
    `hours.mp4` (20 s of frames and audio whose video timestamps jump by 7.5 hours after 10 s)."""
    folder = media_dir / "bounds"
    if folder.is_dir():
        return folder
    folder.mkdir()
    audio = ["-f", "lavfi", "-i", f"anoisesrc=d={ONE_KEY_SEC}:r=48000:seed=7", "-c:a", "aac"]
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=160x90:rate=10:duration={ONE_KEY_SEC}", *audio,
            *_h264(gop="infinite"), "-shortest", str(folder / "one-key.mp4"))
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=7680x4320:rate=30", "-frames:v", "3", *_h264(gop="30"),
            str(folder / "8k.mp4"))
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x90:rate=240:duration=1", *_h264(gop="240"),
            str(folder / "240fps.mp4"))
    jump = rf"setpts='if(gte(N\,{GAP_AFTER_FRAMES})\,PTS+{GAP_SEC}/TB\,PTS)'"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x90:rate=10:duration=20", "-f", "lavfi", "-i",
            "anoisesrc=d=20:r=48000:seed=7", "-vf", jump, "-fps_mode", "passthrough", *_h264(gop="20"),
            "-c:a", "aac", str(folder / "hours.mp4"))
    return folder


async def _job(client: AsyncTestClient[Any], url: str, start: float, end: float, precision: str = "auto") -> dict:
    return await run_url_job(client, url, startSec=start, endSec=end, precision=precision)


def _duration(path: Path) -> float:
    return float(probe(path)["format"]["duration"])


def test_the_sources_are_what_the_tests_say(bounds_media: Path) -> None:
    assert keyframe_times(bounds_media / "one-key.mp4") == [0.0]
    assert _duration(bounds_media / "hours.mp4") > GAP_SEC


@pytest.mark.parametrize(("name", "code"), [("8k.mp4", "resolution_too_high"), ("240fps.mp4", "frame_rate_too_high")])
async def test_oversized_sources_are_refused_at_probe_time(
    client: AsyncTestClient[Any], workers: Workers, bounds_media: Path, name: str, code: str
) -> None:
    workers.start()
    with MediaServer(bounds_media) as origin:
        job = await _job(client, origin.url(name), 0, 0.05)
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", code, 1), job
    assert "upload" in job["errorMessage"]


@pytest.mark.settings(max_source_duration_sec=3600)
async def test_a_source_claiming_hours_over_the_limit_is_refused(
    client: AsyncTestClient[Any], workers: Workers, bounds_media: Path
) -> None:
    workers.start("fetch")
    with MediaServer(bounds_media) as origin:
        job = await _job(client, origin.url("hours.mp4"), 1, 2)
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "source_too_long", 1), job


async def test_a_far_keyframe_is_not_copied_into_a_keyframe_precision_clip(
    client: AsyncTestClient[Any], workers: Workers, bounds_media: Path, tmp_path: Path
) -> None:
    """The keyframe is 15 s before startSec (over MAX_KEYFRAME_LEADIN_SEC, 10 s): the clip is cut by frame."""
    workers.start()
    with MediaServer(bounds_media) as origin:
        job = await _job(client, origin.url("one-key.mp4"), 15, 20, precision="keyframe")
    assert job["status"] == "done", job
    assert job["result"]["cutPath"] == "reencode"  # no keyframe inside the clip: the encoder cut it
    assert job["result"]["actualStartSec"] == pytest.approx(15, abs=FRAME_SEC)
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    assert _duration(clip) == pytest.approx(5, abs=CLIP_TOLERANCE_SEC)


@pytest.mark.settings(max_decode_leadin_sec=20)
async def test_a_keyframe_too_far_before_the_start_is_refused_before_staging(
    client: AsyncTestClient[Any], workers: Workers, bounds_media: Path, resources: Resources
) -> None:
    """The keyframe is 30 s before startSec, over MAX_DECODE_LEADIN_SEC: refused, nothing staged or decoded."""
    workers.start()
    for precision in ("frame", "keyframe"):
        with MediaServer(bounds_media) as origin:
            job = await _job(client, origin.url("one-key.mp4"), 30, 35, precision=precision)
        assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "keyframe_too_far", 1), job
        assert "keyframe" in job["errorMessage"]
        assert await resources.storage.head(f"{staging_prefix(job['id'])}source.mp4") is None  # nothing staged


@pytest.mark.parametrize("precision", ["keyframe", "auto"])
async def test_a_clip_never_lasts_longer_than_asked_whatever_the_timestamps_claim(
    client: AsyncTestClient[Any], workers: Workers, bounds_media: Path, tmp_path: Path, precision: str
) -> None:
    """The last frame before a 7.5-hour timestamp jump lasts 7.5 hours in the source: not in the clip."""
    workers.start()
    with MediaServer(bounds_media) as origin:
        job = await _job(client, origin.url("hours.mp4"), 5, 15, precision=precision)
    assert job["status"] == "done", job
    result = job["result"]
    asked = 15 - result["actualStartSec"]
    assert result["durationSec"] <= asked + CLIP_TOLERANCE_SEC, result
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    info = probe(clip)
    assert float(info["format"]["duration"]) <= asked + CLIP_TOLERANCE_SEC
    for stream in info["streams"]:
        assert float(stream["duration"]) <= asked + CLIP_TOLERANCE_SEC, stream


class _CountingFile(io.FileIO):
    """A file that counts the bytes libavformat reads from it."""

    bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_a_keyframe_search_without_an_index_reads_a_bounded_distance(media_dir: Path) -> None:
    """MPEG-TS has no index: a seek lands near the time asked for and the probe scans forward for a keyframe.
    With none for 490 s after it, the scan stops after KEYFRAME_SCAN_SEC instead of reading to the end (four
    times: once per step back)."""
    path = media_dir / "bounds-far-keyframes.ts"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x90:rate=5:duration=600", *_h264(gop="2950"), "-f", "mpegts",
            str(path))
    with _CountingFile(path, "rb") as handle, av.open(handle) as container:
        with pytest.raises(SourceUnreadable):
            read_info(container, keyframe_at=100)
        size = path.stat().st_size
        assert handle.bytes_read < size, f"{handle.bytes_read} bytes read of a {size}-byte file"
