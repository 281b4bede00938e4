"""Thumbnails every `interval` seconds of the clip, tiled in one JPEG sprite sheet (ffmpeg's select, scale and
tile filters in one pass; `fps` would take the last frame before each half-interval mark instead), and the
WebVTT index a player scrubs with: one cue per interval, `sprite.jpg#xywh=…`."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import Permanent
from shared.media.ffmpeg import run_ffmpeg

MAX_COLUMNS = 10  # thumbnails a row of the sheet, at most
JPEG_QUALITY = "3"  # ffmpeg's -q:v for the mjpeg encoder (2: best .. 31: worst)
MS_PER_SEC = 1000
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # JPEG start-of-frame markers (size inside)


@dataclass(frozen=True)
class Grid:
    """How the sheet is laid out: `count` thumbnails of `width` x `height`, `columns` a row, every `interval` s."""

    count: int
    columns: int
    width: int
    height: int
    interval: float

    @property
    def rows(self) -> int:
        return math.ceil(self.count / self.columns)

    def webvtt(self, sprite_name: str, duration_sec: float) -> str:
        """The index: thumbnail i covers [i·interval, (i+1)·interval), the last one up to the clip's end."""
        cues = ["WEBVTT", ""]
        for i in range(self.count):
            start, end = i * self.interval, min((i + 1) * self.interval, duration_sec)
            x, y = (i % self.columns) * self.width, (i // self.columns) * self.height
            cues += [f"{_vtt_time(start)} --> {_vtt_time(end)}", f"{sprite_name}#xywh={x},{y},{self.width},"
                     f"{self.height}", ""]
        return "\n".join(cues)


async def make_sprite(
    url: str, path: Path, duration_sec: float, interval_sec: float, width: int, on_progress: Callable[[float], None]
) -> Grid:
    """The sheet of the clip at `url` in `path` (each thumbnail `width` wide, its height by the picture's shape)."""
    count = max(1, math.ceil(duration_sec / interval_sec - 1e-6))
    columns = min(count, MAX_COLUMNS)
    rows = math.ceil(count / columns)
    pick = rf"select=gte(t-start_t\,selected_n*{interval_sec!r})"  # thumbnail k: the first frame at or after k·interval
    await run_ffmpeg(
        ["-i", url, "-map", "0:v:0", "-vf", f"{pick},scale={width}:-2,tile={columns}x{rows}", "-frames:v", "1",
         "-q:v", JPEG_QUALITY, "-update", "1", "-y", str(path)],
        duration_sec=duration_sec, on_progress=on_progress,
    )
    sheet_width, sheet_height = jpeg_size(await asyncio.to_thread(path.read_bytes))
    if sheet_width != columns * width or sheet_height % rows:
        raise Permanent(f"the sprite sheet came out {sheet_width}x{sheet_height} for {columns}x{rows} thumbnails "
                        f"{width} wide", code="sprite_failed")
    return Grid(count=count, columns=columns, width=width, height=sheet_height // rows, interval=interval_sec)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG, from its start-of-frame segment."""
    at = 2  # after the SOI marker
    while at + 9 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], int.from_bytes(data[at + 2:at + 4], "big")
        if marker in _SOF_MARKERS:
            return int.from_bytes(data[at + 7:at + 9], "big"), int.from_bytes(data[at + 5:at + 7], "big")
        at += 2 + length
    raise Permanent("the sprite sheet is not a readable JPEG", code="sprite_failed")


def _vtt_time(seconds: float) -> str:
    minutes, ms = divmod(round(seconds * MS_PER_SEC), 60 * MS_PER_SEC)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{ms / MS_PER_SEC:06.3f}"
