"""Burn-in at the ffmpeg level: the same short clip encoded with and without the subtitles filter, and the
filter an encoder gets for a job from the transcriber's SRT in object storage."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import msgspec
import numpy as np
import pytest

from shared.errors import Permanent
from shared.jobs.contracts import Artifact, ClipJobMessage, StageMessage, Subtitles, UploadSource
from shared.jobs.ids import uuid7
from shared.media.burnin import burn_in_filter_for, subtitles_filter
from shared.runtime.resources import Resources
from shared.settings import load_settings

FFMPEG_TIMEOUT_SEC = 120
CLIP_SEC = 2
FRAME_AT_SEC = 1.0
SRT = "1\n00:00:00,000 --> 00:00:02,000\nBurned-in words, readable\nat any size: 42 characters\n"


def _encode(out: Path, size: str, vf: str | None) -> None:
    """libx264 lossless (qp 0), so any difference between two outputs is the filter's, not the encoder's."""
    filters = ["-vf", vf] if vf else []
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30:duration={CLIP_SEC}",
         *filters, "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-pix_fmt", "yuv420p", str(out)],
        check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC,
    )


def _luma(path: Path, width: int, height: int) -> np.ndarray:
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-ss", str(FRAME_AT_SEC), "-i", str(path), "-frames:v", "1", "-f", "rawvideo",
         "-pix_fmt", "gray", "-"], check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC,
    )
    return np.frombuffer(out.stdout, dtype=np.uint8).reshape(height, width).astype(np.int16)


@pytest.mark.parametrize(("width", "height"), [(640, 360), (1920, 1080)])
def test_burned_frames_differ_only_in_the_subtitle_band(tmp_path: Path, width: int, height: int) -> None:
    odd = tmp_path / "it's: odd, [dir]"  # the filter's escaping must survive quotes, colons, commas, brackets
    odd.mkdir()
    srt = odd / "subs.srt"
    srt.write_text(SRT)
    settings = load_settings({})
    plain, burned = tmp_path / "plain.mp4", tmp_path / "burned.mp4"
    _encode(plain, f"{width}x{height}", None)
    _encode(burned, f"{width}x{height}", subtitles_filter(srt, settings))

    diff = np.abs(_luma(burned, width, height) - _luma(plain, width, height)) > 0
    rows = np.flatnonzero(diff.any(axis=1))
    assert rows.size > 0, "the subtitles were not drawn"
    band_top, band_bottom = rows[0] / height, rows[-1] / height
    # two lines in the bottom of the picture, above the margin; nothing drawn above them
    assert 0.7 < band_top < 0.9 and 0.9 < band_bottom < 1.0, (band_top, band_bottom)
    assert not diff[: int(0.7 * height)].any()
    # text height scales with the picture: two lines take 10-20 % of the height at both sizes
    assert 0.10 < band_bottom - band_top < 0.20
    assert diff[rows[0]: rows[-1] + 1].mean() > 0.01  # glyphs, not a stray pixel


async def test_encoder_gets_the_filter_from_the_transcribers_srt(resources: Resources, tmp_path: Path) -> None:
    """What the encoder stage calls: the SRT artifact comes from object storage into its scratch."""
    job = ClipJobMessage(id=str(uuid7()), source=UploadSource(key="uploads/x/a.mp4"), start_sec=0, end_sec=2,
                         subs=Subtitles(enabled=True, burn_in=True))
    key = f"staging/{job.id}/subs.srt"
    (tmp_path / "subs.srt").write_text(SRT)
    size = await resources.storage.put_file(key, tmp_path / "subs.srt", "application/x-subrip", {})
    srt_artifact = Artifact(stage="transcribe", role="srt", key=key, size=size)
    task = StageMessage(job=job, route=["encode", "upload"], artifacts=[srt_artifact])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    settings = resources.settings

    plain_job = msgspec.structs.replace(job, subs=Subtitles(enabled=True, burn_in=False))
    assert await burn_in_filter_for(msgspec.structs.replace(task, job=plain_job), resources.storage, scratch,
                                    settings) is None
    with pytest.raises(Permanent):
        await burn_in_filter_for(msgspec.structs.replace(task, artifacts=[]), resources.storage, scratch, settings)
    vf = await burn_in_filter_for(task, resources.storage, scratch, settings)
    assert vf is not None and (scratch / "burn-in.srt").read_text() == SRT
    plain, burned = tmp_path / "plain.mp4", tmp_path / "burned.mp4"
    await asyncio.to_thread(_encode, plain, "640x360", None)
    await asyncio.to_thread(_encode, burned, "640x360", vf)
    assert (_luma(burned, 640, 360) != _luma(plain, 640, 360))[int(0.75 * 360):].any()
