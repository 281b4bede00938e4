"""One ffmpeg pass that cuts [seek, seek + duration] frame-accurately into an MP4, re-encoding only what must be.

Per stream: the video is re-encoded to H.264 (a frame-accurate start needs new frames from the cut on) unless
the caller says its copy is exact (the cut starts on a keyframe); each audio stream is copied when MP4 takes
its codec, else encoded to AAC. Extra video filters (e.g. `subtitles=` for a burn-in) join the same pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from shared.jobs.contracts import StreamFacts
from shared.media.cut import MP4_AUDIO_CODECS
from shared.media.ffmpeg import run_ffmpeg
from shared.media.hwenc import VideoEncoder

AAC_BITRATE = "160k"  # audio that MP4 does not take is encoded to AAC at this rate
X264_THREADS_PER_CORE = 1.5  # x264's own default ratio of threads to cores, applied to this encode's share
# a re-encode seeks this far ahead of the first frame's time (less than any frame interval), so that rounding
# of the times cannot drop that frame and a frame starting at the end of the clip falls clearly after it, s
FRAME_SEEK_LEAD_SEC = 0.001


def audio_codec_args(streams: Sequence[StreamFacts]) -> list[str]:
    """`-c:a:<i>` per audio stream, in input order: copy when MP4 takes the codec, else AAC."""
    args: list[str] = []
    for i, stream in enumerate(s for s in streams if s.kind == "audio"):
        if stream.codec in MP4_AUDIO_CODECS:
            args += [f"-c:a:{i}", "copy"]
        else:
            args += [f"-c:a:{i}", "aac", f"-b:a:{i}", AAC_BITRATE]
    return args


def video_codec_args(
    encoder: VideoEncoder | None, threads: int, extra_filters: Sequence[str] = ()
) -> list[str]:
    """Encode with `encoder` after `extra_filters`; None: copy the video as it is (no filters possible)."""
    if encoder is None:
        if extra_filters:
            raise ValueError("video filters need a re-encode, not a copy")
        return ["-c:v", "copy"]
    args = ["-vf", ",".join([*extra_filters, *encoder.upload_filters]), "-c:v", encoder.name, *encoder.args]
    if encoder.threaded:
        args += ["-threads:v", str(max(1, round(threads * X264_THREADS_PER_CORE)))]
    return args


def encode_args(
    source: str, output: Path, *, seek_sec: float, duration_sec: float, streams: Sequence[StreamFacts],
    encoder: VideoEncoder | None, threads: int, extra_filters: Sequence[str] = (), fmt: str = "",
) -> list[str]:
    """The ffmpeg arguments (after the global ones) of `encode_clip` (`fmt`: the demuxer to read `source` with)."""
    has_video = any(s.kind == "video" for s in streams)
    args = [*(encoder.input_args if encoder and has_video else ()), "-threads", str(threads)]
    seek = seek_sec - FRAME_SEEK_LEAD_SEC if encoder is not None else seek_sec
    args += ["-ss", f"{seek:.6f}"] if seek > 0 else []
    args += [*(["-f", fmt] if fmt else []), "-i", source, "-t", f"{duration_sec:.6f}"]
    args += ["-map", "0:V:0?", "-map", "0:a?"]
    if has_video:
        args += ["-filter_threads", str(threads), *video_codec_args(encoder, threads, extra_filters)]
    args += audio_codec_args(streams)
    return [*args, "-movflags", "+faststart", "-f", "mp4", "-y", str(output)]


async def encode_clip(
    source: str, output: Path, *, seek_sec: float, duration_sec: float, streams: Sequence[StreamFacts],
    encoder: VideoEncoder | None, threads: int, extra_filters: Sequence[str] = (),
    on_progress: Callable[[float], None] | None = None, fmt: str = "",
) -> None:
    """Cut `duration_sec` from `seek_sec` of `source` into an MP4 (+faststart); the first frame is the one at
    `seek_sec` (ffmpeg decodes from the keyframe before and drops the frames ahead of it).

    A re-encode must seek to a frame's own time (`keyframes.frame_shown_at`): from a time between frames,
    ffmpeg's constant-rate output fills the gap up to the next frame by showing that frame twice.

    `encoder` None copies the video (only exact when `seek_sec` is a keyframe); `threads` is this encode's
    share of the node's cores; `extra_filters` run before the encoder's own (e.g. `subtitles=...`); `fmt`: the
    demuxer to read `source` with (the sniffed one).
    """
    args = encode_args(source, output, seek_sec=seek_sec, duration_sec=duration_sec, streams=streams,
                       encoder=encoder, threads=threads, extra_filters=extra_filters, fmt=fmt)
    await run_ffmpeg(args, duration_sec=duration_sec, on_progress=on_progress)
