"""Smart cut of an H.264 MP4/MOV in one PyAV pass: the source read once, no ffmpeg process.

What `shared.media.smartcut`'s ffmpeg path does with three processes (head encode, tail encode, concat join)
and three opens of the source, done here in-process on one open: the video packets from the keyframe before
the clip are demuxed once; those before the join keyframe are decoded and the frames from `first_frame` on are
encoded by libx264 (PyAV's own) with the copied stream's parameters (`head_options`, the same x264 settings as
the ffmpeg path); the packets of [join, copy_end) are copied as they are; the frames of the tail [copy_end, end)
are decoded from the end keyframe (only the packets whose frames show before `end`) and encoded by a second
x264; audio packets of [first_frame, end) are copied in the same demux. Everything is muxed into one MP4 whose
t=0 is the clip's first frame, as the join writes it.

Joining H.264 of two encoders: the clip's sample entry keeps the source's avcC; the re-encoded pieces carry
x264's SPS/PPS in-band before each of their keyframes (x264 repeats them without a global header), and the
join keyframe of the copied run gets the source's SPS/PPS in-band in front of it (what the concat demuxer's
`h264_mp4toannexb` did): each piece decodes with its own parameter sets.

`in_process_blocker` says which cuts this path does not take (other codecs and containers, a pixel format or
audio codec PyAV's encoder or MP4 muxer does not take): those keep the ffmpeg path. A cut stopped by a failed
setup (the encoder or muxer refusing the stream before anything is written) also goes there, logged.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from shared.media.ffmpeg import DEFAULT_LIMITS, FfmpegDeadline, MediaError
from shared.media.keyframes import TIME_EPSILON_SEC, CutLayout, VideoFormat
from shared.media.probe import opened_media
from shared.runtime import tracing
from shared.settings import load_settings

if TYPE_CHECKING:
    import av

IN_PROCESS_DEMUXERS = frozenset({"mov", "mp4", "m4a", "3gp", "3g2", "mj2"})  # mov's names: per-stream seeks
IN_PROCESS_AUDIO = frozenset({"aac", "mp3", "opus", "ac3", "eac3", "alac"})  # copied into MP4 as they are
START_CODE = b"\x00\x00\x01"
PROGRESS_EVERY_SEC = 0.25  # progress reported at most this often
MIB = 1024 * 1024
IN_PROCESS_CUT_SPAN = "smartcut"  # the tracing span of one in-process cut (an ffmpeg run's is "ffmpeg")
# a piece's decoded frames are held until it is encoded: a piece needing more than this (a long GOP, a large
# frame) is cut by the ffmpeg path, whose memory does not grow with the piece
BUFFER_BUDGET_BYTES = int(load_settings().smart_cut_buffer_mib * MIB)
# once the video is read, the demux stops this far past endSec even if an audio stream has not reached it (an
# audio stream ending before the clip): mov's demuxer keeps the streams' decode times within ~1 s of each other
AUDIO_LAG_SEC = 2.0
STOP_WAIT_SEC = 2.0  # a cancelled cut waits this long for its thread to stop before the cancel goes on


class SetupRefused(MediaError):
    """PyAV's encoder or the MP4 muxer refused this stream before anything was cut: the ffmpeg path cuts it."""


@dataclass(frozen=True)
class Piece:
    """Frames re-encoded: those showing in [start, end), decoded from the keyframe at `decode_from`."""

    start: float
    end: float
    decode_from: float


@dataclass(frozen=True)
class _Timing:
    """An input stream's time base, as a float too, and the clip's start and end in its ticks."""

    tb: Fraction
    tick_sec: float
    shift: int  # the clip's first frame: subtracted from every timestamp
    end: int  # the clip's end on the output timeline (from 0)


@dataclass
class _Segment:
    """One re-encoded piece while the demux runs: its decoder input range and its encoder."""

    piece: Piece
    encoder: av.VideoCodecContext
    durations: dict[int, int] = field(default_factory=dict)  # frame pts → its interval, in the stream's ticks
    frames: list[av.VideoFrame] = field(default_factory=list)  # decoded frames to encode once the copy is done


def in_process_blocker(video: VideoFormat, fmt: str) -> str | None:
    """Why this cut is not made in-process (it then takes the ffmpeg path), or None. `fmt`: the demuxer forced
    on the source ("" when not known yet: checked once it is open)."""
    if video.codec != "h264":
        return "codec"  # HEVC, VP9: libx265 / libvpx-vp9 through ffmpeg (`shared.media.codecs`)
    if fmt and fmt not in IN_PROCESS_DEMUXERS:
        return "container"
    if not _x264_takes(video.pix_fmt):
        return "pix_fmt"
    return None


def _x264_takes(pix_fmt: str | None) -> bool:
    import av

    try:
        formats = av.Codec("libx264", "w").video_formats or ()
    except av.error.FFmpegError:  # a PyAV build without libx264
        return False
    return pix_fmt is not None and pix_fmt in {f.name for f in formats}


@tracing.traced(IN_PROCESS_CUT_SPAN)
async def cut_in_process(
    source: str, output: Path, layout: CutLayout, pieces: list[Piece], *, audio: bool,
    head_options: dict[str, str], single_thread: bool, on_progress: Callable[[float], None], fmt: str = "",
) -> None:
    """Cut [layout.first_frame, layout.end) of `source` into `output` in one pass (see the module's docstring).
    `head_options`: libx264's options for re-encoded frames. SetupRefused: nothing was cut, the caller may take
    the ffmpeg path. A run past the deadline an ffmpeg run of the same work would have is FfmpegDeadline."""
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def report(p: float) -> None:
        loop.call_soon_threadsafe(on_progress, p)

    buffered = _buffer_bytes(layout, pieces)
    if buffered > BUFFER_BUDGET_BYTES:
        raise SetupRefused(f"the re-encoded frames would hold {buffered // MIB} MiB (budget "
                           f"{BUFFER_BUDGET_BYTES // MIB} MiB): cut by ffmpeg")
    work_sec = layout.end - min(layout.start_keyframe, layout.first_frame)
    deadline = time.monotonic() + DEFAULT_LIMITS.deadline(work_sec)
    cut = _Cut(source, output, layout, pieces, audio, head_options, single_thread, fmt, report, stop, deadline)
    task = asyncio.ensure_future(asyncio.to_thread(cut.run))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()  # the thread stops at its next packet or frame (its "stopped" error retrieved here)
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        await asyncio.wait({task}, timeout=STOP_WAIT_SEC)  # bounded: the cancel is not held up by a stuck read
        raise


def _buffer_bytes(layout: CutLayout, pieces: list[Piece]) -> int:
    """The most memory one piece's decoded frames take while held for its encode (one piece at a time)."""
    import av

    video = layout.video
    if not pieces or not video.pix_fmt or video.width <= 0 or video.height <= 0 or layout.frame_sec <= 0:
        return 0
    try:
        frame_bytes = sum(p.buffer_size for p in av.VideoFrame(video.width, video.height, video.pix_fmt).planes)
    except (ValueError, av.error.FFmpegError):  # a pixel format PyAV does not know: the encoder refuses it
        return 0
    frames = max(round((p.end - p.start) / layout.frame_sec) + 1 for p in pieces)
    return frames * frame_bytes


class _Cut:
    """One in-process cut, run on a worker thread."""

    def __init__(
        self, source: str, output: Path, layout: CutLayout, pieces: list[Piece], audio: bool,
        head_options: dict[str, str], single_thread: bool, fmt: str, report: Callable[[float], None],
        stop: threading.Event, deadline: float,
    ) -> None:
        self.source, self.output, self.layout, self.pieces = source, output, layout, pieces
        self.audio, self.head_options, self.single_thread, self.fmt = audio, head_options, single_thread, fmt
        self.parameter_sets, self.nal_length, self.tb = b"", 4, Fraction(1, 1_000_000)
        self.report, self.stop, self.deadline = report, stop, deadline
        self.last_report = 0.0
        self.timings: dict[int, _Timing] = {}
        self.last_dts: dict[int, int] = {}  # output stream index → the last decode time muxed there

    def run(self) -> None:
        import av

        with opened_media(self.source, fmt=self.fmt) as media:
            if not self.fmt and not set(media.format.name.split(",")) & IN_PROCESS_DEMUXERS:
                raise SetupRefused(f"container {media.format.name} is cut by ffmpeg")
            try:
                out = av.open(str(self.output), "w", format="mp4", options=self._mux_options())
            except av.error.FFmpegError as exc:
                raise MediaError(f"cannot write the clip ({exc.strerror})") from exc
            with out:
                self._cut(media, out)

    def _mux_options(self) -> dict[str, str]:
        options = {"movflags": "+faststart"}
        tb = self.layout.video.time_base
        if tb.numerator == 1:
            options["video_track_timescale"] = str(tb.denominator)
        return options

    def _cut(self, media: av.container.InputContainer, out: av.container.OutputContainer) -> None:
        import av

        video_in = media.streams.video[0]
        audio_in = [s for s in media.streams.audio
                    if self.audio and s.codec_context.codec.canonical_name in IN_PROCESS_AUDIO]
        if self.audio and len(audio_in) != len(media.streams.audio):
            raise SetupRefused("an audio codec MP4 does not take as it is: cut by ffmpeg")
        tb: Fraction = video_in.time_base or Fraction(1, 1_000_000)
        self.tb = tb
        self.parameter_sets, self.nal_length = _parameter_sets(video_in.codec_context.extradata or b"")
        try:
            video_out = out.add_stream_from_template(video_in)
            video_out.time_base = tb
            audio_out = {s.index: out.add_stream_from_template(s) for s in audio_in}
            for s in audio_in:
                audio_out[s.index].time_base = s.time_base
            for source_stream, stream in ((video_in, video_out), *((s, audio_out[s.index]) for s in audio_in)):
                language = source_stream.metadata.get("language")
                if language:  # as ffmpeg copies it (a player's track choice)
                    stream.metadata["language"] = language
            segments = [_Segment(p, self._encoder(tb)) for p in self.pieces]
            out.start_encoding()
        except av.error.FFmpegError as exc:
            raise SetupRefused(f"PyAV refused the stream ({exc.strerror})") from exc
        try:
            self._demux(media, out, video_in, video_out, audio_out, segments, tb)
        except av.error.FFmpegError as exc:
            raise MediaError(f"the in-process cut failed ({exc.strerror or type(exc).__name__})") from exc

    def _encoder(self, tb: Fraction) -> av.VideoCodecContext:
        import av

        video = self.layout.video
        encoder = av.CodecContext.create("libx264", "w")
        encoder.width, encoder.height, encoder.pix_fmt = video.width, video.height, video.pix_fmt
        encoder.time_base = tb
        if video.sar:
            encoder.sample_aspect_ratio = video.sar
        for name in ("color_range", "colorspace", "color_primaries", "color_trc"):
            value = getattr(video, name)
            if value and value != 2:  # 0 / 2: unspecified
                setattr(encoder, name, value)
        if self.single_thread:
            encoder.thread_count = 1
        encoder.options = dict(self.head_options)
        encoder.open()
        return encoder

    def _demux(
        self, media: av.container.InputContainer, out: av.container.OutputContainer, video_in: av.VideoStream,
        video_out: av.VideoStream, audio_out: dict[int, av.AudioStream], segments: list[_Segment], tb: Fraction,
    ) -> None:
        """One demux from the keyframe before the clip: head frames decoded, [join, copy_end) copied, tail frames
        decoded from the end keyframe, audio of [first_frame, end) copied; stops once all of it is read."""
        layout = self.layout
        assert layout.join is not None and layout.copy_end is not None
        zero, clip_sec = layout.first_frame, layout.end - layout.first_frame
        head = next((s for s in segments if s.piece.end == layout.join), None)
        tail = next((s for s in segments if s is not head), None)
        copying = layout.copy_end - layout.join > TIME_EPSILON_SEC  # until the first packet left out
        copy_to_dts = None if layout.copy_end_dts is None else layout.copy_end_dts - layout.frame_sec / 4
        decoder = video_in.codec_context
        if self.single_thread:
            decoder.thread_count = 1
        else:  # a long GOP: frame threads, as ffmpeg decodes it (the drains wait for the frames in flight)
            decoder.thread_type = "AUTO"
        in_band = self.parameter_sets
        tick_sec = float(tb)
        decoding = head  # the segment the video packets go to the decoder for
        joined = started = False
        tail_left = tail is not None
        audio_left = set(audio_out)
        media.seek(int(layout.start_keyframe / tb), stream=video_in, backward=True, any_frame=False)
        streams = [video_in, *(s for s in media.streams.audio if s.index in audio_out)]
        for packet in media.demux(*streams):
            self._check()
            if packet.pts is None or packet.dts is None:
                continue  # the demuxer's end-of-stream packets and packets without times
            at = packet.dts * self._timing(packet).tick_sec  # where the demux is
            if joined and not copying and not tail_left and at >= layout.end + AUDIO_LAG_SEC:
                break  # the video is read and the audio left (if any) ended before endSec
            if packet.stream.type == "audio":
                at = packet.pts * self._timing(packet).tick_sec
                if at >= layout.end - TIME_EPSILON_SEC / 10:
                    audio_left.discard(packet.stream.index)
                elif at >= zero:
                    self._mux_copy(out, packet, audio_out[packet.stream.index])
            elif joined and not copying and not tail_left:
                pass  # every video packet the clip needs is read: audio only from here on
            else:
                pts, dts = packet.pts * tick_sec, packet.dts * tick_sec
                if not started and (pts < layout.start_keyframe - TIME_EPSILON_SEC or not packet.is_keyframe):
                    continue  # the seek landed before the keyframe asked for
                started = True
                if not joined and packet.is_keyframe and abs(pts - layout.join) <= TIME_EPSILON_SEC:
                    joined = True
                    if head is not None:  # every frame before the join keyframe precedes it in decode order
                        self._drain(decoder, head)
                        self._encode(head, out, video_out, zero, clip_sec)
                        decoder.flush_buffers()
                    decoding = None
                if joined and copying:
                    if dts >= (layout.end if copy_to_dts is None else copy_to_dts) - TIME_EPSILON_SEC / 10:
                        copying = False  # the first packet left out (to the media's end: decoded at endSec, as -t)
                    elif pts < layout.end - TIME_EPSILON_SEC:  # not a frame a bad timestamp puts past endSec
                        self._mux_copy(out, packet, video_out, prefix=in_band)
                        in_band = b""  # the join keyframe's: later keyframes are the source's own sequence
                if joined and tail_left and decoding is None and tail is not None and packet.is_keyframe \
                        and abs(pts - tail.piece.decode_from) <= TIME_EPSILON_SEC:
                    decoding = tail
                if decoding is tail and tail is not None and dts >= layout.end - TIME_EPSILON_SEC:
                    self._drain(decoder, tail)  # later packets hold only frames showing at or after endSec
                    decoding, tail_left = None, False
                if decoding is not None:
                    self._decode(decoder, packet, decoding)
                self._progress(dts - zero, clip_sec)
            if joined and not copying and not tail_left and not audio_left:
                break
        if decoding is not None:  # the media ended first
            self._drain(decoder, decoding)
            if decoding is head:
                self._encode(head, out, video_out, zero, clip_sec)
        if tail is not None:
            self._encode(tail, out, video_out, zero, clip_sec)
        if not started:
            raise MediaError("no video frames at the clip's start")

    def _check(self) -> None:
        if self.stop.is_set():
            raise MediaError("the cut was stopped")
        if time.monotonic() > self.deadline:
            raise FfmpegDeadline("the in-process smart cut ran past its deadline")

    def _progress(self, done_sec: float, clip_sec: float) -> None:
        now = time.monotonic()
        if now - self.last_report >= PROGRESS_EVERY_SEC and clip_sec > 0:
            self.last_report = now
            self.report(max(0.0, min(1.0, done_sec / clip_sec)))

    def _decode(self, decoder: av.VideoCodecContext, packet: av.Packet, segment: _Segment) -> None:
        for frame in decoder.decode(packet):
            self._keep(frame, segment)

    def _drain(self, decoder: av.VideoCodecContext, segment: _Segment) -> None:
        for frame in decoder.decode(None):
            self._keep(frame, segment)

    def _keep(self, frame: av.VideoFrame, segment: _Segment) -> None:
        self._check()
        if frame.pts is None:
            return
        at = float(frame.pts * self.tb)
        if segment.piece.start - self.layout.frame_sec / 4 <= at < segment.piece.end - TIME_EPSILON_SEC:
            segment.frames.append(frame)

    def _encode(
        self, segment: _Segment, out: av.container.OutputContainer, video_out: av.VideoStream, zero: float,
        clip_sec: float,
    ) -> None:
        """Encode the segment's frames (their times from the clip's first frame) and mux the packets."""
        import av

        tb = self.tb  # the encoders' and the source's: the muxer rescales to its own
        shift = round(zero / tb)
        frames = sorted(segment.frames, key=lambda f: f.pts)
        for i, frame in enumerate(frames):
            self._check()
            following = frames[i + 1].pts if i + 1 < len(frames) else None
            interval = (following - frame.pts) if following is not None else (frame.duration or 0)
            frame.pts -= shift
            frame.time_base = tb
            frame.pict_type = av.video.frame.PictureType.NONE  # x264 places its own keyframe: the first frame
            segment.durations[frame.pts] = interval or round(self.layout.frame_sec / tb)
            for packet in segment.encoder.encode(frame):
                self._mux_encoded(out, packet, video_out, segment, clip_sec)
        segment.frames.clear()
        for packet in segment.encoder.encode(None):
            self._check()
            self._mux_encoded(out, packet, video_out, segment, clip_sec)

    def _mux_encoded(
        self, out: av.container.OutputContainer, packet: av.Packet, video_out: av.VideoStream, segment: _Segment,
        clip_sec: float,
    ) -> None:
        import av

        tb = self.tb  # the encoders' and the source's: the muxer rescales to its own
        duration = segment.durations.get(packet.pts, 0)
        data = _length_prefixed(bytes(packet), self.nal_length)
        muxed = av.Packet(data)
        muxed.pts, muxed.dts, muxed.time_base = packet.pts, packet.dts, tb
        muxed.duration = _clamped(duration, packet.pts, clip_sec, tb)
        muxed.is_keyframe = packet.is_keyframe
        muxed.stream = video_out
        self._mux(out, muxed)

    def _timing(self, packet: av.Packet) -> _Timing:
        """The time facts of the packet's input stream (computed once a stream: Fractions are slow per packet)."""
        index = packet.stream.index
        timing = self.timings.get(index)
        if timing is None:
            tb = packet.time_base
            zero = self.layout.first_frame
            timing = self.timings[index] = _Timing(
                tb, float(tb), round(zero / tb), round((self.layout.end - zero) / tb))
        return timing

    def _mux_copy(
        self, out: av.container.OutputContainer, packet: av.Packet, stream: av.stream.Stream, *,
        prefix: bytes = b"",
    ) -> None:
        import av

        timing = self._timing(packet)
        if prefix:
            muxed = av.Packet(prefix + bytes(packet))
            muxed.is_keyframe = packet.is_keyframe
        else:
            muxed = packet
        pts = packet.pts - timing.shift
        muxed.pts, muxed.dts, muxed.time_base = pts, packet.dts - timing.shift, timing.tb
        duration = packet.duration or 0
        if duration > 0:  # ended by the clip's end (`cut.packet_end_clamp`): a hostile file's packet lasting
            muxed.duration = min(duration, max(1, timing.end - pts))  # hours must not make the clip that long
        muxed.stream = stream
        self._mux(out, muxed)

    def _mux(self, out: av.container.OutputContainer, packet: av.Packet) -> None:
        """Mux with decode times made increasing as the ffmpeg CLI makes them (a VFR source's copied run can
        start at the decode time the head's last frame got): a dts at or before the stream's last one becomes
        the last one + 1, its pts at least that."""
        index = packet.stream.index
        floor = self.last_dts.get(index)
        if floor is not None and packet.dts is not None and packet.dts <= floor:
            packet.dts = floor + 1
            if packet.pts is not None and packet.pts < packet.dts:
                packet.pts = packet.dts
        if packet.dts is not None:
            self.last_dts[index] = packet.dts
        out.mux(packet)


def _clamped(duration: int, pts: int, clip_sec: float, tb: Fraction) -> int:
    """A packet's duration ended by the clip's end (`cut.packet_end_clamp`: a hostile file's packet lasting
    hours must not make the clip that long)."""
    limit = max(1, round(clip_sec / tb) - pts)
    return min(duration, limit) if duration > 0 else 0


def _nal_units(annexb: bytes) -> Iterator[bytes]:
    """The NAL units of an Annex B byte stream (start codes of 3 or 4 bytes; trailing zeros are not part of a
    NAL unit)."""
    starts = []
    at = annexb.find(START_CODE)
    while at >= 0:
        starts.append(at + len(START_CODE))
        at = annexb.find(START_CODE, at + len(START_CODE))
    for i, begin in enumerate(starts):
        end = starts[i + 1] - len(START_CODE) if i + 1 < len(starts) else len(annexb)
        unit = annexb[begin:end].rstrip(b"\x00")
        if unit:
            yield unit


def _length_prefixed(annexb: bytes, length: int) -> bytes:
    """An encoder's Annex B packet as an MP4 sample: each NAL unit after its length (`length` bytes)."""
    return b"".join(len(u).to_bytes(length, "big") + u for u in _nal_units(annexb))


def _parameter_sets(avcc: bytes) -> tuple[bytes, int]:
    """The SPS and PPS of an avcC record as length-prefixed NAL units to put in front of a keyframe, and the
    length of a NAL unit's length field in the stream's samples. SetupRefused when `avcc` is not one (Annex B
    in MP4, no extradata): the ffmpeg path cuts it."""
    if len(avcc) < 7 or avcc[0] != 1:
        raise SetupRefused("the H.264 stream has no avcC record: cut by ffmpeg")
    units: list[bytes] = []
    at = 5
    for count_mask in (0x1F, 0xFF):  # SPS count (low 5 bits), then PPS count
        if at >= len(avcc):
            break
        count = avcc[at] & count_mask
        at += 1
        for _ in range(count):
            size = int.from_bytes(avcc[at:at + 2], "big")
            units.append(avcc[at + 2:at + 2 + size])
            at += 2 + size
    length = (avcc[4] & 0x3) + 1
    return b"".join(len(u).to_bytes(length, "big") + u for u in units), length
