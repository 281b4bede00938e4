"""Frame-accurate cuts at close to stream-copy cost ("smart cut").

The frames before the first keyframe inside the clip (the head) are re-encoded with the copied stream's
coding parameters, the rest is stream-copied, and both are joined by ffmpeg's concat demuxer without a
re-encode: the head file, then the media itself with `inpoint` at that keyframe and `outpoint` at the last
point where the copied packets end cleanly. When B-frames make the packets before endSec also carry frames
after it, the last one or two frames are re-encoded too, so the clip ends at endSec exactly. H.264 joins
carry their own SPS/PPS in-band (the concat demuxer's `auto_convert`), so the copied part decodes with its
own parameters. Audio is stream-copied straight from the media over [first frame, endSec] and muxed with
the joined video: its timestamps stay the source's, so it is in sync to the sample (no AAC priming of a
re-encoded head in between).

HEVC and VP9 heads and tails are made by the encoders and with the arguments of `shared.media.codecs`. HEVC's
copied run is first remuxed on its own with its VPS/SPS/PPS put in-band (`hevc_mp4toannexb`, which the concat
demuxer applies to H.264 only), and the clip is tagged `hev1`: each piece decodes with its own parameter sets.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.jobs.contracts import CutPath
from shared.media.avcut import Piece, SetupRefused, cut_in_process, in_process_blocker
from shared.media.codecs import (
    SPLICE_ENCODERS,
    available_encoders,
    encoder_args,
    needs_in_band_headers,
    splice_blocker,
)
from shared.media.cut import packet_end_clamp
from shared.media.ffmpeg import HTTP_INPUT_OPTIONS, US_PER_SEC, MediaError, run_ffmpeg
from shared.media.inputs import FILE_PROTOCOLS, FORMAT_WHITELIST, protocols_for
from shared.media.keyframes import TIME_EPSILON_SEC, CutLayout, VideoFormat, cut_layout
from shared.runtime.logs import get_logger

# codec → the encoder a matching head is made with (H.264, HEVC, VP9: `shared.media.codecs`)
SMART_ENCODERS = SPLICE_ENCODERS
HEVC_JOIN_TAG = "hev1"  # parameter sets in-band, and they differ between the pieces of a HEVC clip
HEVC_IN_BAND_BSF = "hevc_mp4toannexb"  # the copied run's parameter sets before each of its keyframes
MID_SHARE = 0.5  # of the join's progress, the remux of a HEVC copied run (the join itself copies the same data)
# x264 preset and tune of re-encoded frames: a head is at most one GOP, so x264's start and per-frame cost are most
# of a smart cut's price. ultrafast (+ zerolatency: no lookahead to fill) took 0.35 s CPU for a 54-frame 720p head
# where veryfast took 0.87 s; at the same CRF its frames are larger (about 2x) and no worse (PSNR 59.7 dB vs 49.3
# dB on the benchmark's source; bench/smartcut_steps.py). B-frames and profile still follow the copied stream.
HEAD_PRESET = "ultrafast"
HEAD_TUNE = "zerolatency"
# a segment that decodes at most this much video runs decoder and x264 on one thread each: a 30-frame 720p head took
# 0.23 s CPU so, 0.35 s with ffmpeg's thread pools (their start and sync cost more than they save on so few frames;
# head and tail still run side by side). Longer ones (long GOPs) keep ffmpeg's threads for their wall time.
SINGLE_THREAD_WORK_SEC = 2.5
HEAD_CRF = 16  # quality of re-encoded frames: visually lossless next to the copied ones (PSNR well over 35 dB)
MAX_REORDER_DELAY = 2  # B-frame reorder depth a re-encoded head can match (x264 with B-pyramid)
ENCODE_COST_PER_SEC = 12.0  # a second re-encoded costs about this many seconds copied (progress weights)
X264_PROFILES = {
    "Baseline": "baseline", "Constrained Baseline": "baseline", "Main": "main", "High": "high",
    "High 10": "high10", "High 4:2:2": "high422", "High 4:4:4 Predictive": "high444",
}
# the concat list is clipjet's own file; each entry's nested open is restricted by `option` lines: our pieces
# (MP4 written here) as local files, the media with its own protocols and its sniffed demuxer
CONCAT_DEMUXER = "concat"
PIECE_DEMUXER = "mov"  # the head and tail pieces are MP4 written here
H264_LEVEL_DIVISOR = 10  # H.264 level_idc 31 is level 3.1


log = get_logger("smartcut")


class PieceEncodeFailed(MediaError):
    """The encoder refused a head or tail of this stream: the clip can still be made by a full re-encode (the
    cutting stages route it there, cut reason PIECE_ENCODE_FAILED)."""


PIECE_ENCODE_FAILED = "head_encode_failed"  # the cut reason of a smart cut that fell back to a full re-encode


@dataclass(frozen=True)
class CutOutcome:
    """What a frame-accurate cut produced, in the media's own seconds."""

    first_frame: float
    end: float
    path: CutPath  # "copy": every frame copied; "smart": some frames re-encoded


async def cut_frames(
    source: str, output: Path, *, start: float, end: float, audio: bool, scratch: Path,
    on_progress: Callable[[float], None] | None = None, fmt: str = "",
) -> CutOutcome:
    """Frame-accurate cut of [start, end) of `source`: the layout read from the media itself, then `frame_cut`.
    `fmt`: the demuxer every open of `source` forces (the sniffed one)."""
    layout = await cut_layout(source, start, end, fmt=fmt)
    if layout.join is None or layout.copy_end is None:
        raise MediaError("no clean keyframe inside the clip: it needs a full re-encode")
    if not layout.exact_copy:
        blocker = splice_blocker(layout.video, await asyncio.to_thread(available_encoders))
        if blocker is not None:
            raise MediaError(f"frames of this {layout.video.codec} clip need a re-encode that cannot join a copy "
                             f"here ({blocker})")
    return await frame_cut(source, output, layout, audio=audio, scratch=scratch, on_progress=on_progress, fmt=fmt)


async def frame_cut(
    source: str, output: Path, layout: CutLayout, *, audio: bool, scratch: Path,
    on_progress: Callable[[float], None] | None = None, fmt: str = "", in_process: bool = True,
) -> CutOutcome:
    """Cut [layout.first_frame, layout.end) of `source` (a path or URL, read with the demuxer `fmt`) into an MP4
    with +faststart: H.264 from MP4/MOV in one PyAV pass (`shared.media.avcut`), the rest (and `in_process`
    False) with ffmpeg: head and tail encodes, then the concat join."""
    report = on_progress or (lambda _: None)
    join = layout.join
    if join is None or layout.copy_end is None:
        raise ValueError("a frame-accurate cut needs a keyframe inside the clip")
    pieces: list[tuple[str, float, float, Path]] = []  # (kind, start, end, file)
    if layout.head_sec > TIME_EPSILON_SEC:
        pieces.append(("head", layout.first_frame, join, scratch / "head.mp4"))
    if layout.tail_sec > TIME_EPSILON_SEC:
        pieces.append(("tail", layout.copy_end, layout.end, scratch / "tail.mp4"))
    clip_sec = layout.end - layout.first_frame
    encode_cost = ENCODE_COST_PER_SEC * sum(b - a for _, a, b, _ in pieces)
    total = encode_cost + clip_sec
    weights = [ENCODE_COST_PER_SEC * (b - a) / total for _, a, b, _ in pieces]
    shares = [0.0] * len(pieces)

    def piece_progress(i: int, p: float) -> None:
        shares[i] = weights[i] * p
        report(sum(shares))

    if in_process and in_process_blocker(layout.video, fmt) is None:
        segments = [Piece(a, b, layout.start_keyframe if kind == "head" else layout.end_keyframe)
                    for kind, a, b, _ in pieces]
        try:
            await cut_in_process(source, output, layout, segments, audio=audio, head_options=x264_options(layout.video),
                                 single_thread=all(s.end - s.decode_from <= SINGLE_THREAD_WORK_SEC for s in segments),
                                 on_progress=report, fmt=fmt)
            return CutOutcome(layout.first_frame, layout.last_frame_end, "smart" if pieces else "copy")
        except SetupRefused as refused:  # the encoder or muxer refused the stream before anything was cut
            log.info("smart_cut_by_ffmpeg", reason=refused.message)
    # head and tail are independent encodes (each decodes from its own keyframe): run them side by side; when one
    # fails the other is stopped, and the first failure is raised as it is (MediaError, FfmpegDeadline, ...)
    try:
        async with asyncio.TaskGroup() as group:
            for i, (kind, a, b, path) in enumerate(pieces):
                group.create_task(encode_segment(
                    source, path, layout.video,
                    decode_from=layout.start_keyframe if kind == "head" else layout.end_keyframe,
                    start=a, end=b, frame_sec=layout.frame_sec,
                    on_progress=lambda p, i=i: piece_progress(i, p), fmt=fmt))
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    done = sum(weights)
    mid: Path | None = None
    in_band = bool(pieces) and needs_in_band_headers(layout.video.codec)
    if in_band and layout.copy_end - join > TIME_EPSILON_SEC:
        mid = scratch / "copied.mp4"
        await _in_band_copy(source, mid, layout, scratch, fmt=fmt,
                            on_progress=lambda p: report(done + (1 - done) * MID_SHARE * p))
        done += (1 - done) * MID_SHARE
    listing = scratch / "join.ffconcat"
    listing.write_text(_concat_list(source, layout, pieces, fmt, copied=mid))
    await _join(listing, source, output, layout, audio=audio,
                on_progress=lambda p: report(done + (1 - done) * p), fmt=fmt, hevc_tag=in_band)
    return CutOutcome(layout.first_frame, layout.last_frame_end, "smart" if pieces else "copy")


async def encode_segment(
    source: str, output: Path, video: VideoFormat, *, decode_from: float, start: float, end: float,
    frame_sec: float, on_progress: Callable[[float], None] | None = None, fmt: str = "",
) -> None:
    """Re-encode the frames showing in [start, end), decoded from the keyframe at `decode_from`, with the
    stream's own codec parameters and time base; the first frame is at 0 and keeps its source interval."""
    quarter = frame_sec / 4  # `start` is a frame's own time; `end` excludes a frame showing at it
    seek = decode_seek(decode_from, frame_sec)
    trim = (f"trim=start={start - seek - quarter:.6f}:end={end - seek - TIME_EPSILON_SEC:.6f},"
            "setpts=PTS-STARTPTS")
    threads = ["-threads", "1"] if end - seek <= SINGLE_THREAD_WORK_SEC else []
    args = ["-noautorotate", *(["-f", fmt] if fmt else []), *threads, "-noaccurate_seek", "-ss", f"{seek:.6f}",
            "-i", source, "-map", "0:v:0", "-an", "-sn", "-dn",
            "-vf", trim, "-fps_mode", "passthrough", *_encoder_args(video), *threads, *_timescale(video),
            "-streamid", f"0:{video.stream_id}", "-use_stream_ids_as_track_ids", "1",
            "-f", "mp4", "-y", str(output)]
    try:
        await run_ffmpeg(args, duration_sec=end - start, on_progress=on_progress, work_sec=end - seek)
    except MediaError as exc:
        raise PieceEncodeFailed(exc.message) from exc


def decode_seek(keyframe: float, frame_sec: float) -> float:
    """The `-ss` (with -noaccurate_seek) that makes ffmpeg start decoding at `keyframe` and not earlier.

    ffmpeg's input seek lands on the last keyframe at or before it: a quarter frame past the keyframe, so that
    one and not the one before (a seek a hair before it decoded a whole extra GOP: a one-frame tail decoded
    3.3 s of video). -noaccurate_seek keeps the frames from the keyframe on, their times relative to this
    seek; the segment's trim filter alone picks the frames it encodes."""
    return keyframe + frame_sec / 4


def _encoder_args(video: VideoFormat) -> list[str]:
    if video.codec != "h264":
        return encoder_args(video)
    args = ["-c:v", SMART_ENCODERS[video.codec]]
    if video.pix_fmt:
        args += ["-pix_fmt", video.pix_fmt]
    for option, value in (("-color_range", video.color_range), ("-colorspace", video.colorspace),
                          ("-color_primaries", video.color_primaries), ("-color_trc", video.color_trc)):
        if value and value != 2:  # 0 / 2: unspecified
            args += [option, str(value)]
    for name, value in x264_options(video).items():
        args += [f"-{name}:v" if name in ("profile", "level") else f"-{name}", value]
    return args


def x264_options(video: VideoFormat) -> dict[str, str]:
    """libx264's options for H.264 heads and tails matching `video` (the ffmpeg path's and PyAV's alike)."""
    options = {"preset": HEAD_PRESET, "tune": HEAD_TUNE, "crf": str(HEAD_CRF)}
    profile = X264_PROFILES.get(video.profile or "")
    if profile:
        options["profile"] = profile
    if video.level and video.level > 0:
        options["level"] = f"{video.level / H264_LEVEL_DIVISOR:g}"
    options["x264-params"] = _bframes(video.reorder_delay)
    return options


def _bframes(delay: int) -> str:
    """x264 B-frame settings whose reorder delay equals the copied stream's, so decode times join monotonically."""
    if delay <= 0:
        return "bframes=0"
    if delay == 1:
        return "bframes=1:b-pyramid=0"
    return "bframes=3:b-pyramid=2"


def _timescale(video: VideoFormat) -> list[str]:
    tb = video.time_base
    return ["-video_track_timescale", str(tb.denominator)] if tb.numerator == 1 else []


def _quote(path: str) -> str:
    return "'" + path.replace("'", "'\\''") + "'"


def _piece(path: Path) -> list[str]:
    """A head or tail piece's lines: a local MP4 written here, opened as one."""
    return [f"file {_quote(str(path.resolve()))}", f"option format_whitelist {PIECE_DEMUXER}",
            f"option protocol_whitelist {FILE_PROTOCOLS}"]


def _concat_list(
    source: str, layout: CutLayout, pieces: list[tuple[str, float, float, Path]], fmt: str = "",
    copied: Path | None = None,
) -> str:
    """ffconcat: head, the copied run of the media itself (or `copied`, that run remuxed here), tail; each with
    its exact duration, each opened with only its own demuxer and protocols (the media: `fmt`, its sniffed
    demuxer)."""
    assert layout.join is not None and layout.copy_end is not None
    lines = _list_header(layout)
    for kind, a, b, path in pieces:
        if kind == "head":
            lines += [*_piece(path), f"duration {b - a:.6f}"]
    if copied is not None:
        lines += [*_piece(copied), f"duration {layout.copy_end - layout.join:.6f}"]
    elif layout.copy_end - layout.join > TIME_EPSILON_SEC:
        lines += _source_entry(source, layout, fmt)
    for kind, a, b, path in pieces:
        if kind == "tail":
            lines += [*_piece(path), f"duration {b - a:.6f}"]
    return "\n".join(lines) + "\n"


def _list_header(layout: CutLayout) -> list[str]:
    # one declared stream, matched by id: the media's audio stays out of the concat (its first timestamps
    # would otherwise shift the input's start time and with it the video against the audio)
    return ["ffconcat version 1.0", "stream", f"exact_stream_id {layout.video.stream_id}"]


def _source_entry(source: str, layout: CutLayout, fmt: str) -> list[str]:
    """The concat entry of the copied run of the media itself: [join, copy_end)."""
    assert layout.join is not None and layout.copy_end is not None
    # inpoint rounded up to the microsecond: a seek a hair before the keyframe would land on the one before;
    # outpoint (a decode time: packets from it on are left out) a quarter frame before the first one left out
    entry = source if "://" in source else str(Path(source).resolve())  # the list's own folder is not ours
    lines = [f"file {_quote(entry)}", f"inpoint {math.ceil(layout.join * US_PER_SEC) / US_PER_SEC:.6f}",
             f"option format_whitelist {fmt or FORMAT_WHITELIST}",
             f"option protocol_whitelist {protocols_for(entry)}"]
    if entry.startswith(("http://", "https://")):  # the concat demuxer opens it: retry reads as ffmpeg -i does
        lines += [f"option {name} {value}" for name, value in HTTP_INPUT_OPTIONS.items()]
    if layout.copy_end_dts is not None:
        lines.append(f"outpoint {layout.copy_end_dts - layout.frame_sec / 4:.6f}")
    lines.append(f"duration {layout.copy_end - layout.join:.6f}")
    return lines


async def _in_band_copy(
    source: str, output: Path, layout: CutLayout, scratch: Path, *, on_progress: Callable[[float], None],
    fmt: str = "",
) -> None:
    """Remux the copied run of a HEVC stream into an MP4 whose keyframes carry the stream's VPS/SPS/PPS in-band,
    so that in the joined clip it decodes with its own parameter sets, not the re-encoded head's."""
    assert layout.join is not None and layout.copy_end is not None
    listing = scratch / "copied.ffconcat"
    listing.write_text("\n".join([*_list_header(layout), *_source_entry(source, layout, fmt)]) + "\n")
    protocols = ",".join(dict.fromkeys([FILE_PROTOCOLS, *protocols_for(source).split(",")]))
    args = ["-f", CONCAT_DEMUXER, "-safe", "0", "-protocol_whitelist", protocols, "-format_whitelist", CONCAT_DEMUXER,
            "-i", str(listing), "-map", "0:v:0", "-c", "copy", "-bsf:v", HEVC_IN_BAND_BSF, "-tag:v", HEVC_JOIN_TAG,
            *_timescale(layout.video), "-streamid", f"0:{layout.video.stream_id}", "-use_stream_ids_as_track_ids",
            "1", "-f", "mp4", "-y", str(output)]
    await run_ffmpeg(args, duration_sec=layout.copy_end - layout.join, on_progress=on_progress)


async def _join(
    listing: Path, source: str, output: Path, layout: CutLayout, *, audio: bool,
    on_progress: Callable[[float], None], fmt: str = "", hevc_tag: bool = False,
) -> None:
    """Concat the video pieces by stream copy and mux the source's audio over the same range. The list itself is
    read as a local concat list only (`-safe 0`: its entries are absolute paths and the media's URL). `hevc_tag`:
    the pieces carry their own parameter sets in-band, and the clip says so (`hev1`)."""
    protocols = ",".join(dict.fromkeys([FILE_PROTOCOLS, *protocols_for(source).split(",")]))
    args = ["-f", CONCAT_DEMUXER, "-safe", "0", "-protocol_whitelist", protocols, "-format_whitelist", CONCAT_DEMUXER,
            "-i", str(listing)]
    if audio:
        args += [*(["-f", fmt] if fmt else []), "-ss", f"{layout.first_frame:.6f}", "-to", f"{layout.end:.6f}",
                 "-i", source]
    args += ["-map", "0:v:0"] + (["-map", "1:a?", "-copypriorss:a", "0"] if audio else [])
    # the copied run's last packet keeps its own duration, which a hostile file sets to hours: ended at endSec
    clip_sec = layout.end - layout.first_frame
    args += ["-c", "copy", *(["-tag:v", HEVC_JOIN_TAG] if hevc_tag else []), *_timescale(layout.video)]
    args += ["-t", f"{clip_sec:.6f}", *packet_end_clamp(clip_sec)]
    if layout.video.rotation:
        args += ["-metadata:s:v:0", f"rotate={layout.video.rotation}"]
    args += ["-movflags", "+faststart", "-f", "mp4", "-y", str(output)]
    await run_ffmpeg(args, duration_sec=layout.end - layout.first_frame, on_progress=on_progress)
