"""Single frames of the clip: the sharpest of its first seconds (the variance of a Laplacian over a small grey
copy of each frame, decoded in-process with PyAV), one frame as a JPEG (ffmpeg), and the shape its picture
shows."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shared.errors import Permanent
from shared.media.ffmpeg import run_ffmpeg
from shared.media.probe import AV_TIME_BASE, opened_media

SCORE_WIDTH = 320  # frames are scored on a grey copy this wide (px): cheap, and blur shows as well
SEEK_EPSILON_SEC = 0.0005  # a frame's time as printed may round up past its own timestamp
JPEG_QUALITY = "2"  # ffmpeg's -q:v for the mjpeg encoder (2: best .. 31: worst)


async def displayed_size(url: str) -> tuple[int, int]:
    """(width, height) of the clip's picture as players (and ffmpeg, autorotating) show it: its pixel aspect
    ratio and rotation (of its first frame) applied."""
    return await asyncio.to_thread(_displayed_size, url)


def _displayed_size(url: str) -> tuple[int, int]:
    with opened_media(url) as container:
        if not container.streams.video:
            raise Permanent("a poster or thumbnails were asked for, but the clip has no video", code="no_video")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        first = next(iter(container.decode(stream)), None)
    aspect = stream.sample_aspect_ratio
    if aspect and aspect > 0:
        width = max(1, round(width * aspect))
    if first is not None and round(first.rotation) % 180 == 90:
        width, height = height, width
    if width <= 0 or height <= 0:
        raise Permanent("the clip's picture has no size", code="no_video")
    return width, height


async def sharpest_frame_sec(url: str, window_sec: float) -> float:
    """The time (from the clip's start) of the sharpest frame of its first `window_sec` seconds."""
    return await asyncio.to_thread(_sharpest, url, window_sec)


def _sharpest(url: str, window_sec: float) -> float:
    import numpy as np  # the thumbs worker's own heavy import, with its first poster

    best_score, best_sec = -1.0, 0.0
    with opened_media(url) as container:
        stream = container.streams.video[0]
        start = (container.start_time or 0) / AV_TIME_BASE
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            at = frame.time - start
            if at >= window_sec:
                break
            height = max(2, round(SCORE_WIDTH * frame.height / frame.width))
            grey = frame.reformat(width=SCORE_WIDTH, height=height, format="gray").to_ndarray().astype(np.float32)
            laplacian = (4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2]
                         - grey[1:-1, 2:])
            score = float(laplacian.var())
            if score > best_score:
                best_score, best_sec = score, at
    return best_sec


async def extract_frame(url: str, at_sec: float, path: Path) -> None:
    """The first frame at or after `at_sec` of the clip as a JPEG (full size)."""
    await run_ffmpeg(
        ["-ss", f"{max(0.0, at_sec - SEEK_EPSILON_SEC):.6f}", "-i", url, "-map", "0:v:0", "-frames:v", "1",
         "-q:v", JPEG_QUALITY, "-update", "1", "-y", str(path)],
        duration_sec=at_sec + 1,
    )
    if not await asyncio.to_thread(lambda: path.is_file() and path.stat().st_size > 0):
        raise Permanent(f"the clip has no frame at or after {at_sec:g} s", code="poster_outside_clip")
