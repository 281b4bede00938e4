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


class _FfPacket(msgspec.Struct):
    stream_index: int
    pts_time: str = "N/A"
    flags: str = ""


class _FfProbe(msgspec.Struct):
    streams: list[_FfStream] = []
    format: _FfFormat = msgspec.field(default_factory=_FfFormat)
    packets: list[_FfPacket] = []


@dataclass(frozen=True)
class MediaInfo:
    duration_sec: float
    container: str
    streams: list[StreamFacts]
    keyframes: list[float]  # video keyframe times inside the window asked for (ascending)

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


async def probe(source: str, keyframe_window: tuple[float, float] | None = None) -> MediaInfo:
    """Streams and duration of a local path or URL, and (in one ffprobe run) the video keyframes in a window."""
    args = ["ffprobe", "-v", "error", "-show_format", "-show_streams"]
    if keyframe_window is not None:
        low, high = keyframe_window
        args += ["-show_entries", "packet=stream_index,pts_time,flags", "-read_intervals", _interval(low, high)]
    data = _decoder.decode(await _run([*args, "-of", "json", source]))
    streams = [
        StreamFacts(
            index=s.index, kind=s.codec_type if s.codec_type in STREAM_KINDS else "data",  # type: ignore[arg-type]
            codec=s.codec_name, width=s.width, height=s.height,
        )
        for s in data.streams
    ]
    if not any(s.kind in ("video", "audio") for s in streams) or data.format.duration is None:
        raise SourceUnreadable("the source has no audio or video stream with a known duration")
    video = next((s.index for s in streams if s.kind == "video"), None)
    found: list[float] = []
    if keyframe_window is not None and video is not None:
        low, high = keyframe_window
        found = sorted(
            t for t in (_time(p) for p in data.packets if p.stream_index == video and "K" in p.flags)
            if t is not None and low <= t <= high
        )
    return MediaInfo(float(data.format.duration), data.format.format_name, streams, found)


async def keyframes(source: str, start_sec: float, end_sec: float) -> list[float]:
    """Presentation times of video keyframes between start_sec and end_sec (ascending)."""
    return (await probe(source, (start_sec, end_sec))).keyframes


def _interval(low: float, high: float) -> str:
    return f"{max(low, 0.0):.6f}%{high:.6f}"


def _time(packet: _FfPacket) -> float | None:
    return None if packet.pts_time in ("", "N/A") else float(packet.pts_time)
