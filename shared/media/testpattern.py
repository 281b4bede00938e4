"""A generated test pattern (moving picture + tone): the demo's sample, the benchmarks' and the tests' media."""

from __future__ import annotations

import subprocess
from pathlib import Path

FFMPEG_TIMEOUT_SEC = 900  # a 10-minute 720p source takes a few minutes on 2 cores
TONE_HZ = 440
AUDIO_RATE_HZ = 48_000


def make_test_pattern(
    path: Path, *, seconds: float, size: str = "640x360", fps: int = 30, gop_frames: int = 60,
    audio: bool = True, video_bitrate: str | None = None,
) -> Path:
    """H.264 with a fixed GOP (no scene-cut keyframes, no B-frames) and AAC, in MP4 with +faststart.

    Written under a temporary name and renamed, so a present file is complete: it is reused as it is.
    """
    if path.is_file() and path.stat().st_size > 0:
        return path
    args = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency={TONE_HZ}:sample_rate={AUDIO_RATE_HZ}:duration={seconds}"]
    args += [
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(gop_frames),
        "-keyint_min", str(gop_frames), "-sc_threshold", "0", "-bf", "0",
    ]
    if video_bitrate:
        args += ["-b:v", video_bitrate, "-maxrate", video_bitrate, "-bufsize", video_bitrate]
    if audio:
        args += ["-c:a", "aac", "-b:a", "128k"]
    partial = path.with_name(f".{path.name}.part.mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([*args, "-movflags", "+faststart", str(partial)], capture_output=True, text=True,
                          timeout=FFMPEG_TIMEOUT_SEC, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg could not make the test pattern: {done.stderr[-2000:]}")
    partial.replace(path)
    return path
