"""Probe media in-process with libavformat (PyAV): streams, duration, and the keyframe a copy starts at.

In-process rather than an `ffprobe` child: on 2 cores an ffprobe run costs ~0.12 s of CPU before it reads
a byte, and scanning packets for keyframes reads megabytes; a seek on the container's index finds the
keyframe at or before a time from one packet (see BENCHMARKS.md for the difference it makes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from shared.errors import SourceUnreadable, Transient
from shared.jobs.contracts import StreamFacts
from shared.media.ffmpeg import HTTP_INPUT_OPTIONS
from shared.media.inputs import av_options

if TYPE_CHECKING:  # PyAV (about 20 MB resident) is imported when media is first opened, not with the stage
    import av
    import av.error

OPEN_TIMEOUT_SEC = 30.0  # connecting to / opening the source
READ_TIMEOUT_SEC = 30.0  # waiting for data once open
AV_TIME_BASE = 1_000_000  # libavformat's container time unit (microseconds)
KEYFRAME_EPSILON_SEC = 0.0005  # a keyframe this close after the asked time counts as "at" it (rounding)
SEEK_BACK_STEPS_SEC = (0.0, 1.0, 5.0, 30.0)  # extra lead when a seek lands after the time asked for
STREAM_KINDS = {"video", "audio", "subtitle"}
KEYFRAME_SCAN_SEC = 120.0  # media read past a seek's landing point looking for a keyframe, at most, s


@dataclass(frozen=True)
class MediaInfo:
    duration_sec: float
    container: str
    streams: list[StreamFacts]
    keyframe_before: float | None = None  # the video keyframe at or before the time asked for; None: no video
    frame_rate: float = 0.0  # the highest average frame rate of its video streams, frames/s (0: none or unknown)

    @property
    def has_video(self) -> bool:
        return any(s.kind == "video" for s in self.streams)


def open_options(source: str) -> dict[str, str]:
    """libavformat options for opening `source`: the media whitelists (`shared.media.inputs`); HTTP(S) inputs
    (signed S3 URLs) retry on 5xx and network errors."""
    retries = dict(HTTP_INPUT_OPTIONS) if source.startswith(("http://", "https://")) else {}
    return {**av_options(source), **retries}


async def probe(
    source: str, keyframe_at: float | None = None, options: dict[str, str] | None = None, fmt: str = ""
) -> MediaInfo:
    """Streams and duration of a local path or URL; with `keyframe_at`, the keyframe a copy from there starts at.

    `options`: libavformat options, e.g. a user URL's guarded proxy (`FetchSession.av_options()`); `fmt`: the
    demuxer to force (the sniffed one, `shared.media.inputs.demuxer`)."""
    return await asyncio.to_thread(_probe, source, keyframe_at, options, fmt)


def _probe(source: str, keyframe_at: float | None, options: dict[str, str] | None = None, fmt: str = "") -> MediaInfo:
    with opened_media(source, options, fmt) as container:
        return read_info(container, keyframe_at)


@contextmanager
def opened_media(
    source: str, options: dict[str, str] | None = None, fmt: str = ""
) -> Iterator[av.container.InputContainer]:
    """The source opened by libavformat with the media whitelists (`options` on top: e.g. a user URL's guarded
    proxy; `fmt`: a demuxer to force); its read errors as clipjet errors (a timeout is transient, unreadable
    media permanent)."""
    import av  # every use of PyAV starts with an opened container: imported here, on the first one
    import av.error

    try:
        opts = {**open_options(source), **(options or {})}
        with av.open(source, format=fmt or None, timeout=(OPEN_TIMEOUT_SEC, READ_TIMEOUT_SEC),
                     options=opts) as container:
            yield container
    except av.error.TimeoutError as exc:
        raise Transient("reading the source timed out", code="probe_timeout") from exc
    except av.error.FFmpegError as exc:
        detail = exc.strerror or type(exc).__name__
        raise SourceUnreadable(f"the source is not readable media ({detail}); upload a video or audio file") from exc


def read_info(container: av.container.InputContainer, keyframe_at: float | None) -> MediaInfo:
    """Streams and duration of an open source; with `keyframe_at`, the keyframe a copy from there starts at."""
    streams = [_facts(s) for s in container.streams]
    duration = _duration(container)
    if not any(s.kind in ("video", "audio") for s in streams) or duration is None:
        raise SourceUnreadable("the source has no audio or video stream with a known duration")
    keyframe = None
    if keyframe_at is not None and container.streams.video:
        keyframe = _keyframe_at_or_before(container, container.streams.video[0], keyframe_at)
    rate = max((_frame_rate(v) for v in container.streams.video), default=0.0)
    return MediaInfo(duration, container.format.name, streams, keyframe, rate)


def _frame_rate(video: av.VideoStream) -> float:
    rate = video.average_rate or video.guessed_rate
    return float(rate) if rate else 0.0


def _facts(stream: av.stream.Stream) -> StreamFacts:
    kind = stream.type if stream.type in STREAM_KINDS else "data"
    codec = stream.codec_context.name if stream.codec_context else "unknown"
    width = getattr(stream.codec_context, "width", None) or None
    height = getattr(stream.codec_context, "height", None) or None
    return StreamFacts(index=stream.index, kind=kind, codec=codec, width=width, height=height)  # type: ignore[arg-type]


def _duration(container: av.container.InputContainer) -> float | None:
    if container.duration:
        return container.duration / AV_TIME_BASE
    known = [float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base]
    return max(known) if known else None


def _keyframe_at_or_before(container: av.container.InputContainer, video: av.VideoStream, t: float) -> float:
    """Seek on the index to the keyframe before `t` and read that one packet's presentation time.

    A seek goes by decode time; with B-frames a keyframe's presentation time can be later, so when the
    landing keyframe is after `t` the seek is repeated from further back.
    """
    time_base: Fraction = video.time_base or Fraction(1, AV_TIME_BASE)
    for lead in SEEK_BACK_STEPS_SEC:
        target = max(0.0, t - lead)
        container.seek(int(target / time_base), stream=video, backward=True, any_frame=False)
        found = _first_keyframe(container, video, time_base)
        if found is not None and found <= t + KEYFRAME_EPSILON_SEC:
            return found
        if target == 0.0:
            if found is not None:  # t is before the first frame (e.g. WebM video at 7 ms): start there
                return found
            break
    raise SourceUnreadable("the video has no keyframe before the requested start", code="no_keyframe")


def _first_keyframe(container: av.container.InputContainer, video: av.VideoStream, time_base: Fraction) -> float | None:
    """The first keyframe from where a seek landed, read at most KEYFRAME_SCAN_SEC of media ahead (a seek
    without an index lands anywhere: the scan must not read on to the end of a long source)."""
    first: float | None = None
    for packet in container.demux(video):
        if packet.pts is None:
            if packet.size == 0:  # the end
                return None
            continue
        pts = float(packet.pts * time_base)
        if packet.is_keyframe:
            return pts
        first = pts if first is None else first
        if pts - first > KEYFRAME_SCAN_SEC:
            return None
    return None


async def timeline_start(source: str, fmt: str = "") -> float:
    """The container's start time in seconds: where `ffmpeg -ss 0` lands (0 when it has none)."""
    return await asyncio.to_thread(_timeline_start, source, fmt)


def _timeline_start(source: str, fmt: str = "") -> float:
    with opened_media(source, fmt=fmt) as container:
        return (container.start_time or 0) / AV_TIME_BASE
