"""Where the frames of a cut lie: the frame at startSec, the first keyframe a copy may join at, and the last
point before endSec where the copied packets end cleanly. Read in-process with libavformat (PyAV) from the
packets' timestamps: two index seeks and a short demux around each cut point, no decoding but one frame.

Times are the media's own seconds (a staged range starts near 0; the fetcher adds its offset).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import TYPE_CHECKING

from shared.errors import SourceUnreadable
from shared.media.probe import AV_TIME_BASE, _keyframe_at_or_before, opened_media

if TYPE_CHECKING:
    import av

TIME_EPSILON_SEC = 0.001  # times this close count as equal (container rounding of startSec/endSec)
RATE_TOLERANCE = 0.02  # frame intervals within 2 % of each other are one constant frame rate
TIME_BASE_TICKS = 1.5  # ... or within this many ticks of the stream's time base (its rounding)
MATROSKA_ROUNDING_SEC = 0.0015  # ... or within Matroska's millisecond rounding, s
REORDER_LOOKAHEAD_PACKETS = 16  # packets read past a keyframe or endSec to see whether earlier frames follow
HDR_TRANSFERS = frozenset({16, 18})  # AVCOL_TRC_SMPTE2084 (PQ), AVCOL_TRC_ARIB_STD_B67 (HLG)
HDR_SIDE_DATA = frozenset({"MASTERING_DISPLAY_METADATA", "CONTENT_LIGHT_LEVEL", "DYNAMIC_HDR_PLUS"})
PROGRESSIVE_FIELD_ORDERS = frozenset({0, 1})  # AV_FIELD_UNKNOWN, AV_FIELD_PROGRESSIVE


@dataclass(frozen=True)
class VideoFormat:
    """The coding parameters a re-encoded head must match so the copied rest joins it."""

    codec: str
    stream_id: int  # the container's id of the stream (MP4 track id): the concat list names it
    stream_id_unique: bool  # positive and no other stream has it (FLV and AVI give every stream 0)
    profile: str | None
    level: int | None
    pix_fmt: str | None
    width: int
    height: int
    time_base: Fraction
    sar: Fraction | None
    color_range: int
    colorspace: int
    color_primaries: int
    color_trc: int
    rotation: int  # degrees, display matrix of the stream (0: none)
    reorder_delay: int  # frames by which decode time precedes presentation at a keyframe (B-frame depth)
    interlaced: bool = False  # coded as fields (the first frame or the stream says so)
    hdr: bool = False  # PQ/HLG transfer, or mastering-display / content-light metadata on the first frame


@dataclass(frozen=True)
class CutLayout:
    """The frames a frame-accurate cut of [start, end) takes, in the media's own seconds.

    The clip is the frames whose presentation time lies in [first_frame, end): first_frame is the frame shown
    at `start` (the last frame at or before it). Frames [first_frame, join) are re-encoded (none when the
    start is a keyframe), [join, copy_end) copied, and [copy_end, end) re-encoded again when the packets that
    end before `end` in decode order also carry frames past it (B-frames): copy_end is the last clean point.
    """

    start_keyframe: float  # the keyframe at or before start: where decoding the head begins
    first_frame: float
    join: float | None  # the first keyframe at or after first_frame, before end, after which no frame shows earlier
    copy_end: float | None  # presentation end of the copied run (None: nothing copied)
    copy_end_dts: float | None  # decode time of the first packet not copied (None: copy to the end of the media)
    end_keyframe: float  # the keyframe where decoding the re-encoded tail frames begins
    end: float
    last_frame_end: float  # presentation end of the clip's last frame
    frame_sec: float  # the typical frame interval
    variable_rate: bool
    open_gop: bool  # a keyframe near a cut point is followed by frames that show before it (leading pictures)
    video: VideoFormat

    @property
    def head_sec(self) -> float:
        return (self.join if self.join is not None else self.end) - self.first_frame

    @property
    def tail_sec(self) -> float:
        return self.end - self.copy_end if self.copy_end is not None else 0.0

    @property
    def exact_copy(self) -> bool:
        """Every frame of the clip can be copied: the start is a keyframe and the end is clean."""
        return self.join is not None and self.head_sec < TIME_EPSILON_SEC and self.tail_sec < TIME_EPSILON_SEC


@dataclass(frozen=True)
class _Packet:
    pts: float
    dts: float
    key: bool


async def cut_layout(
    source: str, start: float, end: float, options: dict[str, str] | None = None, fmt: str = ""
) -> CutLayout:
    """The layout of a frame-accurate cut of [start, end) of the first video stream of a local path or URL
    (`fmt`: the demuxer to force)."""
    return await asyncio.to_thread(_cut_layout, source, start, end, options, fmt)


def _cut_layout(
    source: str, start: float, end: float, options: dict[str, str] | None = None, fmt: str = ""
) -> CutLayout:
    with opened_media(source, options, fmt) as container:
        return layout_in(container, start, end)


def layout_in(container: av.container.InputContainer, start: float, end: float) -> CutLayout:
    """The layout of a frame-accurate cut of [start, end) of the first video stream of an open media file."""
    if not container.streams.video:
        raise SourceUnreadable("the media has no video stream", code="no_video")
    video = container.streams.video[0]
    tb: Fraction = video.time_base or Fraction(1, AV_TIME_BASE)
    start_key = _keyframe_at_or_before(container, video, start)
    head = _packets_from(container, video, start_key, tb, stop_dts=end, stop_after_key=start)
    first = _first_frame(container, video, start_key, tb)
    end_key = _keyframe_at_or_before(container, video, max(start_key, end - TIME_EPSILON_SEC))
    tail = _packets_from(container, video, end_key, tb, stop_dts=end)
    layout = _layout(head, tail, start, end, start_key, end_key, _format(video, tb, first, head))
    if not layout.variable_rate and _rates_differ(video):
        layout = replace(layout, variable_rate=True)
    return layout


async def frame_shown_at(source: str, t: float, fmt: str = "") -> float:
    """The time of the frame of the first video stream that is on screen at `t` (the last one starting at or
    before it; the first frame when `t` is before it), in a local path or URL. Both times count from the
    container's start, as ffmpeg's `-ss` does; `t` itself when there is no video. `fmt`: the demuxer to force."""
    return await asyncio.to_thread(_frame_shown_at, source, t, fmt)


def _frame_shown_at(source: str, t: float, fmt: str = "") -> float:
    with opened_media(source, fmt=fmt) as container:
        if not container.streams.video:
            return t
        video = container.streams.video[0]
        tb: Fraction = video.time_base or Fraction(1, AV_TIME_BASE)
        zero = (container.start_time or 0) / AV_TIME_BASE
        key = _keyframe_at_or_before(container, video, zero + t)
        packets = _packets_from(container, video, key, tb, stop_dts=zero + t)
        times = sorted(p.pts - zero for p in packets)
        return max((x for x in times if x <= t + TIME_EPSILON_SEC), default=times[0] if times else t)


def _packets_from(
    container: av.container.InputContainer, video: av.VideoStream, key_time: float, tb: Fraction, *,
    stop_dts: float, stop_after_key: float | None = None,
) -> list[_Packet]:
    """Packets in decode order from the keyframe at `key_time` until decode time passes `stop_dts` (then every
    later frame shows at or after it) or, with `stop_after_key`, a keyframe after the first one showing at
    or after that time; each plus a short look-ahead for the reorder checks."""
    container.seek(int(key_time / tb), stream=video, backward=True, any_frame=False)
    out: list[_Packet] = []
    after_stop = 0
    for packet in container.demux(video):
        if packet.pts is None or packet.dts is None:
            if packet.size == 0:
                break
            continue
        pts, dts = float(packet.pts * tb), float(packet.dts * tb)
        if not out and (pts < key_time - TIME_EPSILON_SEC or not packet.is_keyframe):
            continue  # the seek landed before the keyframe asked for
        out.append(_Packet(pts, dts, bool(packet.is_keyframe)))
        if stop_after_key is not None and packet.is_keyframe and pts >= stop_after_key - TIME_EPSILON_SEC:
            stop_dts = min(stop_dts, dts)
        if dts >= stop_dts - TIME_EPSILON_SEC:
            after_stop += 1
            if after_stop > REORDER_LOOKAHEAD_PACKETS:
                break
    return out


def _rates_differ(video: av.VideoStream) -> bool:
    """The container's average frame rate is not its base rate: frames come at varying intervals somewhere."""
    average, base = video.average_rate, video.base_rate or video.guessed_rate
    return bool(average and base) and abs(float(average) / float(base) - 1) > RATE_TOLERANCE


@dataclass(frozen=True)
class _FrameFacts:
    """What the first decoded frame tells that the stream's parameters do not."""

    rotation: int  # degrees, as decoded frames report it (libavformat keeps it as stream side data)
    interlaced: bool
    hdr_metadata: bool


def _first_frame(
    container: av.container.InputContainer, video: av.VideoStream, key_time: float, tb: Fraction
) -> _FrameFacts:
    """Facts of the keyframe at `key_time`, decoded."""
    container.seek(int(key_time / tb), stream=video, backward=True, any_frame=False)
    for frame in container.decode(video):
        kinds = {getattr(d.type, "name", str(d.type)) for d in frame.side_data}
        return _FrameFacts(int(frame.rotation), bool(frame.interlaced_frame), bool(kinds & HDR_SIDE_DATA))
    return _FrameFacts(0, False, False)


def _format(video: av.VideoStream, tb: Fraction, first_frame: _FrameFacts, packets: list[_Packet]) -> VideoFormat:
    cc = video.codec_context
    unique_id = video.id > 0 and sum(1 for s in video.container.streams if s.id == video.id) == 1
    first = packets[0] if packets else None
    frame = _typical_interval(packets) or (1 / float(video.guessed_rate) if video.guessed_rate else 0.0)
    delay = round((first.pts - first.dts) / frame) if first and frame else 0
    return VideoFormat(
        codec=cc.name, stream_id=video.id, stream_id_unique=unique_id, profile=cc.profile,
        level=getattr(cc, "level", None), pix_fmt=cc.pix_fmt,
        width=cc.width, height=cc.height, time_base=tb, sar=cc.sample_aspect_ratio,
        color_range=int(cc.color_range), colorspace=int(cc.colorspace), color_primaries=int(cc.color_primaries),
        color_trc=int(cc.color_trc), rotation=first_frame.rotation, reorder_delay=max(0, delay),
        interlaced=first_frame.interlaced or int(cc.field_order or 0) not in PROGRESSIVE_FIELD_ORDERS,
        hdr=first_frame.hdr_metadata or int(cc.color_trc) in HDR_TRANSFERS,
    )


def _intervals(packets: list[_Packet]) -> list[float]:
    """Intervals between the frames read, up to the last one all of whose predecessors were read too."""
    last_dts = max((p.dts for p in packets), default=0.0)
    times = sorted(p.pts for p in packets if p.pts <= last_dts + TIME_EPSILON_SEC)
    return [b - a for a, b in itertools.pairwise(times) if b - a > 0]


def _typical_interval(packets: list[_Packet]) -> float:
    gaps = sorted(_intervals(packets))
    return gaps[len(gaps) // 2] if gaps else 0.0


def _clean_keyframe(packets: list[_Packet], i: int) -> bool:
    """No packet after keyframe i in decode order shows before it (no leading pictures of an open GOP)."""
    return all(p.pts >= packets[i].pts - TIME_EPSILON_SEC for p in packets[i + 1:i + 1 + REORDER_LOOKAHEAD_PACKETS])


def _layout(
    head: list[_Packet], tail: list[_Packet], start: float, end: float, start_key: float, end_key: float,
    video: VideoFormat,
) -> CutLayout:
    if not head:
        raise SourceUnreadable("no video frames at the requested start", code="no_frames")
    shown = sorted(p.pts for p in head if p.pts < end - TIME_EPSILON_SEC)
    at_or_before = [t for t in shown if t <= start + TIME_EPSILON_SEC]
    first = at_or_before[-1] if at_or_before else (shown[0] if shown else start_key)
    join = next((p.pts for i, p in enumerate(head) if p.key and first - TIME_EPSILON_SEC <= p.pts
                 < end - TIME_EPSILON_SEC and _clean_keyframe(head, i)), None)
    frame = _typical_interval(head + tail)
    gaps = _intervals(head) + _intervals(tail)
    # intervals rounded to the time base or to Matroska's milliseconds (30 fps: 33, 33, 34 ms; kept when the
    # fetcher stages it as MP4) are not a varying rate
    rounding = max(TIME_BASE_TICKS * float(video.time_base), MATROSKA_ROUNDING_SEC)
    variable = bool(gaps) and (max(gaps) - min(gaps)) > max(RATE_TOLERANCE * frame, rounding)
    in_clip = sorted(p.pts for p in tail if p.pts < end - TIME_EPSILON_SEC)
    last_end = (in_clip[-1] + frame) if in_clip else end
    open_gop = any(p.key and not _clean_keyframe(packets, i) for packets in (head, tail)
                   for i, p in enumerate(packets))
    if not _clean_keyframe(tail, 0):
        join = None  # the copy could not end cleanly before the end keyframe's leading pictures
    copy_end, copy_end_dts = _clean_end(tail, end) if join is not None else (None, None)
    return CutLayout(
        start_keyframe=start_key, first_frame=first, join=join, copy_end=copy_end, copy_end_dts=copy_end_dts,
        end_keyframe=end_key, end=end, last_frame_end=min(last_end, end + frame), frame_sec=frame,
        variable_rate=variable, open_gop=open_gop, video=video,
    )


def _clean_end(tail: list[_Packet], end: float) -> tuple[float, float | None]:
    """(presentation end, decode time of the first packet left out) of the longest decode-order run from the
    end keyframe whose frames all show before `end` and before every frame after the run."""
    limit = end - TIME_EPSILON_SEC
    best: tuple[float, float | None] = (tail[0].pts, tail[0].dts)
    running_max = float("-inf")
    for j, packet in enumerate(tail):
        running_max = max(running_max, packet.pts)
        if running_max >= limit:
            break
        rest = tail[j + 1:]
        rest_min = min((p.pts for p in rest), default=float("inf"))
        if running_max < rest_min:
            best = (min(rest_min, end), rest[0].dts if rest else None)
    return best
