"""Thumbnails every `interval` seconds of the clip, tiled in one JPEG sprite sheet (ffmpeg's fps, scale and tile
filters in one pass), and the WebVTT index a player scrubs with: one cue per interval, `sprite.jpg#xywh=…`.

Thumbnail k is the frame on screen at k·interval (the last one whose time is at or before it: `fps` rounding
timestamps up, so a sparse or variable-frame-rate clip's frames land where they show). The sheet's layout is
planned from the clip's picture (its displayed shape: rotation and pixel aspect applied) before ffmpeg runs:
a thumbnail is never wider than the picture (no upscaling) nor taller than MAX_TILE_HEIGHT (narrower instead,
the shape kept), and a sheet over MAX_SHEET_SIDE a side or MAX_SHEET_PIXELS in all is refused
(`sprite_too_large`) rather than made: ffmpeg's memory grows with the sheet."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import Permanent
from shared.media.ffmpeg import run_ffmpeg

MAX_COLUMNS = 10  # thumbnails a row of the sheet, at most
MAX_TILE_HEIGHT = 480  # px: a taller picture's thumbnails are narrower than asked, keeping its shape
MAX_SHEET_SIDE = 16383  # px, either side of the sheet (decoders' and browsers' image limits are near)
MAX_SHEET_PIXELS = 16_000_000  # px, the whole sheet (a side's limit alone allows 268 Mpx)
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


def plan_grid(picture: tuple[int, int], duration_sec: float, interval_sec: float, width: int) -> Grid:
    """The sheet's layout for a clip whose picture shows `picture` (width, height) px: thumbnails `width` wide
    at most (the picture's own width at most, MAX_TILE_HEIGHT tall at most, its shape kept), or
    `sprite_too_large` when the sheet would pass MAX_SHEET_SIDE or MAX_SHEET_PIXELS."""
    count = max(1, math.ceil(duration_sec / interval_sec - 1e-6))
    columns = min(count, MAX_COLUMNS)
    rows = math.ceil(count / columns)
    tile_width, tile_height = tile_size(picture, width)
    sheet_width, sheet_height = columns * tile_width, rows * tile_height
    if max(sheet_width, sheet_height) > MAX_SHEET_SIDE or sheet_width * sheet_height > MAX_SHEET_PIXELS:
        raise Permanent(
            f"{count} thumbnails of {tile_width}x{tile_height} would make a {sheet_width}x{sheet_height} sprite "
            f"sheet, over its limit ({MAX_SHEET_SIDE} px a side, {MAX_SHEET_PIXELS // 1_000_000} Mpx): raise "
            f"thumbnails.intervalSec or lower thumbnails.width", code="sprite_too_large")
    return Grid(count=count, columns=columns, width=tile_width, height=tile_height, interval=interval_sec)


def tile_size(picture: tuple[int, int], width: int) -> tuple[int, int]:
    """(width, height) of a thumbnail of a `picture` (displayed width, height), even: `width` or the picture's
    own width if narrower, its height by the shape; MAX_TILE_HEIGHT at most (then narrower, same shape)."""
    picture_width, picture_height = picture
    tile_width = min(float(width), float(picture_width))
    tile_height = tile_width * picture_height / picture_width
    if tile_height > MAX_TILE_HEIGHT:
        tile_width, tile_height = MAX_TILE_HEIGHT * picture_width / picture_height, MAX_TILE_HEIGHT
    return max(2, int(tile_width) // 2 * 2), max(2, round(tile_height / 2) * 2)


async def make_sprite(
    url: str, path: Path, grid: Grid, duration_sec: float, on_progress: Callable[[float], None]
) -> None:
    """The sheet of the clip at `url` in `path`, laid out as `grid` (`plan_grid`) says."""
    # timestamps from the clip's first frame; fps: thumbnail k, the last frame at or before k·interval (EOF: the
    # last frame on, so the final tiles are not black); trim: exactly `count` thumbnails
    chain = (f"setpts=PTS-STARTPTS,fps=1/{grid.interval!r}:round=up:start_time=0,tpad=stop=-1:stop_mode=clone,"
             f"trim=end_frame={grid.count},scale={grid.width}:{grid.height},setsar=1,"
             f"tile={grid.columns}x{grid.rows}")
    await run_ffmpeg(
        ["-i", url, "-map", "0:v:0", "-vf", chain, "-frames:v", "1", "-q:v", JPEG_QUALITY, "-update", "1", "-y",
         str(path)],
        duration_sec=duration_sec, on_progress=on_progress,
    )
    sheet = jpeg_size(await asyncio.to_thread(path.read_bytes))
    if sheet != (grid.columns * grid.width, grid.rows * grid.height):
        raise Permanent(f"the sprite sheet came out {sheet[0]}x{sheet[1]} for {grid.columns}x{grid.rows} "
                        f"thumbnails of {grid.width}x{grid.height}", code="sprite_failed")


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
