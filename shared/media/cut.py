"""Cut points and stream-copy cuts shared by the stages that stage and trim media."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shared.contracts import StreamFacts
from shared.errors import Permanent
from shared.media.ffmpeg import run_ffmpeg
from shared.media.probe import keyframes

MP4_VIDEO_CODECS = frozenset({"h264", "hevc", "av1", "mpeg4", "vp9"})  # stream-copied into MP4 as they are
MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "opus", "flac", "ac3", "eac3", "alac"})
KEYFRAME_EPSILON_SEC = 0.0005  # a keyframe this close after startSec counts as "at" it (timestamp rounding)


def copyable_to_mp4(streams: list[StreamFacts]) -> bool:
    """True when every audio and video stream can be stream-copied into MP4."""
    media = [s for s in streams if s.kind in ("video", "audio")]
    return bool(media) and all(
        s.codec in (MP4_VIDEO_CODECS if s.kind == "video" else MP4_AUDIO_CODECS) for s in media
    )


def keyframe_window(t: float, search_sec: float) -> tuple[float, float]:
    """Where to look for the keyframe a cut at `t` starts from."""
    return max(0.0, t - search_sec), t + KEYFRAME_EPSILON_SEC


async def keyframe_at_or_before(source: str, t: float, found: list[float]) -> float:
    """The last keyframe at or before `t`: from `found` (a probe of the window), else a scan from the start."""
    candidates = [k for k in found if k <= t + KEYFRAME_EPSILON_SEC]
    if not candidates:
        candidates = await keyframes(source, 0.0, t + KEYFRAME_EPSILON_SEC)
    if not candidates:
        raise Permanent("the video has no keyframe before the requested start", code="no_keyframe")
    return candidates[-1]


async def copy_cut(
    source: str, output: Path, *, seek_sec: float, duration_sec: float,
    on_progress: Callable[[float], None] | None = None,
) -> None:
    """Stream-copy `duration_sec` of audio and video from `seek_sec` (a keyframe) into an MP4 with +faststart."""
    args = ["-ss", f"{seek_sec:.6f}"] if seek_sec > 0 else []
    args += [
        "-i", source, "-t", f"{duration_sec:.6f}", "-map", "0:v?", "-map", "0:a?", "-c", "copy",
        "-movflags", "+faststart", "-f", "mp4", "-y", str(output),
    ]
    await run_ffmpeg(args, duration_sec=duration_sec, on_progress=on_progress)
