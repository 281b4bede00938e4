"""Burn-in at the ffmpeg level: the same short clip encoded with and without the subtitles filter."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from shared.media.burnin import subtitles_filter
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
