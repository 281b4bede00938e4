"""Full re-encodes through the real stack: sources MP4 cannot take, pass-through per stream, audio-/video-only."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from shared.db import jobs
from shared.runtime.resources import Resources
from tests import jobflow
from tests.conftest import Workers, record_progress
from tests.frames import decode_errors, psnr_per_frame
from tests.http_source import MediaServer
from tests.media import codecs, frame_md5, make_media, probe, stream_of
from tests.test_clip_pipeline import download

FPS = 25
ONE_FRAME_SEC = 1 / FPS
MIN_PSNR_DB = 35.0
SOURCE_SEC = 8


@pytest.fixture(scope="module")
def mpeg2_pcm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MPEG-2 video (GOP 2 s) and PCM audio in Matroska: neither fits MP4."""
    return make_media(tmp_path_factory.mktemp("enc") / "mpeg2-pcm.mkv", seconds=SOURCE_SEC,
                      video="mpeg2video", audio="pcm_s16le", extra=("-q:v", "2"))


async def run_job(client: AsyncTestClient[Any], path: Path, start: float, end: float, **extra: Any) -> dict[str, Any]:
    job = await jobflow.run_upload_job(client, path, startSec=start, endSec=end, **extra)
    assert job["status"] == "done", job
    assert job["progress"] == 1.0
    return job


async def run_url_job(client: AsyncTestClient[Any], path: Path, start: float, end: float) -> dict[str, Any]:
    """A job on `path` served over local HTTP (the fetcher stages the range); it must end re-encoded."""
    with MediaServer(path.parent) as origin:
        job = await jobflow.run_url_job(client, origin.url(path.name), startSec=start, endSec=end)
    assert job["status"] == "done", job
    assert job["result"]["cutPath"] == "reencode"
    return job


def assert_frame_accurate(
    clip: Path, source: Path, job: dict[str, Any], start: float, end: float, fps: float = FPS
) -> None:
    """The clip starts with the frame shown at `start` (the job reports its time) and every frame after it is
    the source's frame at the same time up to `end`: none repeated or missing."""
    first = job["result"]["actualStartSec"]
    assert start - 1 / fps < first <= start + 1e-3, (first, start)
    expected = math.ceil(round((end - first) * fps, 6))
    psnr = psnr_per_frame(clip, source, first, end)
    assert len(psnr) == expected
    assert min(psnr) >= MIN_PSNR_DB, psnr
    video = stream_of(probe(clip), "video")
    assert int(video["nb_frames"]) == expected
    assert float(video["duration"]) == pytest.approx(end - first, abs=1 / fps)


async def test_codecs_mp4_cannot_take_are_reencoded_frame_accurately(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, mpeg2_pcm: Path, tmp_path: Path
) -> None:
    received = await record_progress(resources)
    workers.start()
    start, end = 2.72, 5.0  # 0.72 s after a keyframe
    job = await run_job(client, mpeg2_pcm, start, end)
    result = job["result"]
    assert result["cutPath"] == "reencode"
    assert result["actualStartSec"] == pytest.approx(start, abs=1e-6)
    assert result["durationSec"] == pytest.approx(end - start, abs=ONE_FRAME_SEC)
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    info = probe(clip)
    assert codecs(info) == {"video": "h264", "audio": "aac"}
    assert int(stream_of(info, "audio")["bit_rate"]) <= 170_000
    assert_frame_accurate(clip, mpeg2_pcm, job, start, end)
    video, audio = stream_of(info, "video"), stream_of(info, "audio")
    assert float(audio["start_time"]) == pytest.approx(float(video["start_time"]), abs=ONE_FRAME_SEC)
    assert float(audio["duration"]) == pytest.approx(float(video["duration"]), abs=ONE_FRAME_SEC)
    assert decode_errors(clip) == ""

    pcts = [e.pct for e in received if e.job_id == job["id"]]
    assert any(e.stage == "encode" for e in received)
    assert pcts == sorted(pcts) and pcts[-1] <= 1.0
    row = await jobs.get_job(resources.db, uuid.UUID(job["id"]))
    assert row is not None and row["progress"] == 1.0


@pytest.mark.settings(force_cut_path="reencode")
async def test_webm_vp9_opus_becomes_h264_with_opus_copied(
    client: AsyncTestClient[Any], workers: Workers, tmp_path: Path
) -> None:
    source = make_media(tmp_path / "vp9.webm", seconds=4, video="libvpx-vp9", audio="libopus", size="160x120",
                        extra=("-deadline", "realtime", "-cpu-used", "8", "-b:v", "400k"))
    workers.start()
    start, end = 1.32, 3.0
    job = await run_job(client, source, start, end)
    assert job["result"]["cutPath"] == "reencode"
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    info = probe(clip)
    assert codecs(info) == {"video": "h264", "audio": "opus"}  # video re-encoded, Opus copied
    assert_frame_accurate(clip, source, job, start, end)
    video, audio = stream_of(info, "video"), stream_of(info, "audio")
    assert float(audio["start_time"]) == pytest.approx(float(video["start_time"]), abs=ONE_FRAME_SEC)
    assert float(audio["duration"]) == pytest.approx(end - job["result"]["actualStartSec"], abs=ONE_FRAME_SEC)
    assert decode_errors(clip) == ""


async def test_audio_only_and_video_only_sources(
    client: AsyncTestClient[Any], workers: Workers, tmp_path: Path
) -> None:
    wav = make_media(tmp_path / "tone.wav", seconds=6, video=None, audio="pcm_s16le")
    silent = make_media(tmp_path / "silent.mkv", seconds=6, video="mpeg2video", audio=None, extra=("-q:v", "2"))
    workers.start()
    audio_job = await run_job(client, wav, 1.5, 4.0)
    video_job = await run_job(client, silent, 1.36, 4.0)
    assert audio_job["result"]["cutPath"] == video_job["result"]["cutPath"] == "reencode"
    audio_clip = await download(audio_job["urls"]["video"], tmp_path / "audio.mp4")
    info = probe(audio_clip)
    assert codecs(info) == {"audio": "aac"}
    assert float(info["format"]["duration"]) == pytest.approx(2.5, abs=0.05)
    video_clip = await download(video_job["urls"]["video"], tmp_path / "video.mp4")
    assert codecs(probe(video_clip)) == {"video": "h264"}
    assert_frame_accurate(video_clip, silent, video_job, 1.36, 4.0)
    assert decode_errors(audio_clip) == decode_errors(video_clip) == ""


async def test_mp4_video_on_a_keyframe_is_copied_and_only_audio_encoded(
    client: AsyncTestClient[Any], workers: Workers, tmp_path: Path
) -> None:
    source = make_media(tmp_path / "h264-pcm.mkv", seconds=6, video="libx264", audio="pcm_s16le",
                        extra=("-preset", "ultrafast", "-bf", "0", "-sc_threshold", "0"))
    workers.start()
    job = await run_job(client, source, 2.0, 4.0)  # 2.0 s is a keyframe (GOP 50 frames at 25 fps)
    assert job["result"]["cutPath"] == "reencode"
    assert job["result"]["actualStartSec"] == pytest.approx(2.0, abs=1e-3)
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    info = probe(clip)
    assert codecs(info) == {"video": "h264", "audio": "aac"}
    assert frame_md5(clip) == frame_md5(source, 2.0)  # the copied frame decodes to the same pixels
    assert int(stream_of(info, "video")["nb_frames"]) == 50


async def test_url_source_staged_in_matroska_to_the_last_frame(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, mpeg2_pcm: Path, tmp_path: Path
) -> None:
    workers.start()
    start, end = 6.36, float(SOURCE_SEC)  # the last seconds of the file
    job = await run_url_job(client, mpeg2_pcm, start, end)
    staged = await resources.storage.head(f"staging/{job['id']}/source.mkv")
    assert staged is not None and staged.size < 0.75 * mpeg2_pcm.stat().st_size  # a range, not the whole file
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    assert codecs(probe(clip)) == {"video": "h264", "audio": "aac"}
    assert_frame_accurate(clip, mpeg2_pcm, job, start, end)
    assert decode_errors(clip) == ""


async def test_bframes_open_gop_ntsc_rate_through_a_url(
    client: AsyncTestClient[Any], workers: Workers, tmp_path: Path
) -> None:
    """29.97 fps H.264 with B-frames and open GOPs, Vorbis audio (not for MP4): staged, then re-encoded."""
    fps = 30000 / 1001
    source = make_media(tmp_path / "ntsc.mkv", seconds=6, video="libx264", audio="libvorbis", fps="30000/1001",
                        gop_frames=60, extra=("-preset", "ultrafast", "-bf", "3", "-x264-params", "open-gop=1"))
    workers.start()
    start, end = 2.4, 4.5
    job = await run_url_job(client, source, start, end)
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    info = probe(clip)
    assert codecs(info) == {"video": "h264", "audio": "aac"}
    assert_frame_accurate(clip, source, job, start, end, fps)
    video, audio = stream_of(info, "video"), stream_of(info, "audio")
    assert float(audio["start_time"]) == pytest.approx(float(video["start_time"]), abs=1 / fps)
    assert decode_errors(clip) == ""
