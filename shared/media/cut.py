"""Cut points and stream-copy cuts shared by the stages that stage and trim media."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from shared.jobs.contracts import StreamFacts
from shared.media.ffmpeg import RunLimits, run_ffmpeg

MP4_VIDEO_CODECS = frozenset({"h264", "hevc", "av1", "mpeg4", "vp9"})  # stream-copied into MP4 as they are
# ffmpeg 5.1's mp4 muxer takes these without `-strict` (FLAC needs it: experimental there; Vorbis and PCM
# are refused or unplayable in MP4), so they are copied; other audio is encoded to AAC.
MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "opus", "ac3", "eac3", "alac"})
STAGING_FORMATS = {"mp4": "mp4", "matroska": "mkv"}  # container a range is staged in → file extension
MIN_PACKET_TICKS = 1  # a clamped last packet keeps at least this duration, in its stream's time base


def packet_end_clamp(duration_sec: float, *, from_zero: bool = True) -> list[str]:
    """Output options that end every copied packet by `duration_sec` (`from_zero`: output times start at 0;
    else no packet lasts longer than that): `-t`/`-to` drop packets that start later, but the last one kept
    carries its own duration, which a hostile file sets to hours (a timestamp gap): the copy lasts that long."""
    limit = f"max({MIN_PACKET_TICKS},{duration_sec:.6f}/TB-PTS)" if from_zero else f"{duration_sec:.6f}/TB"
    # pts and dts named as they are: ffmpeg 5.1's setts otherwise gives every packet its dts as pts
    return ["-bsf", f"setts=pts=PTS:dts=DTS:duration='min(DURATION,{limit})'"]


def copyable_to_mp4(streams: list[StreamFacts]) -> bool:
    """True when every audio and video stream can be stream-copied into MP4."""
    media = [s for s in streams if s.kind in ("video", "audio")]
    return bool(media) and all(
        s.codec in (MP4_VIDEO_CODECS if s.kind == "video" else MP4_AUDIO_CODECS) for s in media
    )


async def copy_cut(
    source: str, output: Path, *, seek_sec: float, duration_sec: float,
    on_progress: Callable[[float], None] | None = None, container: str = "mp4", input_args: Sequence[str] = (),
    fmt: str = "",
    limits: RunLimits | None = None,
) -> None:
    """Stream-copy `duration_sec` of audio and video from `seek_sec` (a keyframe) into an MP4 with +faststart.

    `container="matroska"`: into Matroska, which takes codecs MP4 does not, keeping the source's timestamps
    (`-copyts`): its demuxer may land on an earlier keyframe than asked, and without an edit list the copy's
    t=0 would be wherever the first packet is; with the source's times the file says where it starts.
    `input_args`: options for reading `source`, e.g. a user URL's guarded proxy (`FetchSession.ffmpeg_input_args`);
    `fmt`: the demuxer to read it with (the sniffed one).
    No packet of the copy lasts past `duration_sec` (`packet_end_clamp`); `limits`: the run's deadline.
    """
    copyts = container != "mp4"
    args = [*input_args, *(["-f", fmt] if fmt else [])]
    args += ["-copyts"] if copyts else []
    args += ["-ss", f"{seek_sec:.6f}"] if seek_sec > 0 else []
    args += [
        "-i", source, *(["-to", f"{seek_sec + duration_sec:.6f}"] if copyts else ["-t", f"{duration_sec:.6f}"]),
        "-map", "0:v?", "-map", "0:a?", "-c", "copy",
        *packet_end_clamp(duration_sec, from_zero=not copyts),
        *(["-movflags", "+faststart"] if container == "mp4" else []), "-f", container, "-y", str(output),
    ]
    await run_ffmpeg(args, duration_sec=duration_sec, on_progress=on_progress, limits=limits)
