"""ffprobe: stream facts, duration, and keyframe times near a cut point (packets only, no decoding)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import msgspec

from shared.contracts import StreamFacts
from shared.errors import SourceUnreadable, Transient

PROBE_TIMEOUT_SEC = 60.0
STREAM_KINDS = {"video", "audio", "subtitle"}


class _FfStream(msgspec.Struct):
    index: int
    codec_type: str = "data"
    codec_name: str = "unknown"
    width: int | None = None
    height: int | None = None


class _FfFormat(msgspec.Struct):
    format_name: str = ""
    duration: str | None = None


class _FfProbe(msgspec.Struct):
    streams: list[_FfStream] = []
    format: _FfFormat = msgspec.field(default_factory=_FfFormat)


@dataclass(frozen=True)
class MediaInfo:
    duration_sec: float
    container: str
    streams: list[StreamFacts]

    @property
    def has_video(self) -> bool:
        return any(s.kind == "video" for s in self.streams)


_decoder = msgspec.json.Decoder(_FfProbe)


async def _run(args: list[str], timeout: float = PROBE_TIMEOUT_SEC) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise Transient("ffprobe timed out reading the source", code="probe_timeout") from exc
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise SourceUnreadable(f"the source is not readable media ({detail[0]}); upload a video or audio file")
    return out.decode()


async def probe(source: str) -> MediaInfo:
    """Streams and duration of a local path or URL."""
    raw = await _run(["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", source])
    data = _decoder.decode(raw)
    streams = [
        StreamFacts(
            index=s.index, kind=s.codec_type if s.codec_type in STREAM_KINDS else "data",  # type: ignore[arg-type]
            codec=s.codec_name, width=s.width, height=s.height,
        )
        for s in data.streams
    ]
    if not any(s.kind in ("video", "audio") for s in streams) or data.format.duration is None:
        raise SourceUnreadable("the source has no audio or video stream with a known duration")
    return MediaInfo(float(data.format.duration), data.format.format_name, streams)


async def keyframes(source: str, start_sec: float, end_sec: float) -> list[float]:
    """Presentation times of video keyframes between start_sec and end_sec (ascending)."""
    raw = await _run([
        "ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags",
        "-read_intervals", f"{max(start_sec, 0):.6f}%{end_sec:.6f}", "-of", "csv=p=0", source,
    ])
    times = []
    for line in raw.splitlines():
        pts, _, flags = line.partition(",")
        if "K" in flags and pts not in ("", "N/A"):
            times.append(float(pts))
    return sorted(t for t in times if start_sec <= t <= end_sec)
