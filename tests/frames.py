"""Frame-by-frame comparison of a clip against a decode of its source over the same range, and A/V sync.

Exactness by ffmpeg `framemd5` of decoded pictures, re-encoded frames by ffmpeg's `psnr` filter, sync by
cross-correlating the clip's decoded audio with the source's (test sources carry seeded noise, not a tone,
so a shift cannot hide behind a period).
"""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

FFMPEG_TIMEOUT_SEC = 120
SYNC_RATE_HZ = 4000  # audio decoded at this rate for the correlation (0.25 ms resolution)
SYNC_WINDOW_SEC = 0.25  # clip audio compared
SYNC_MAX_LAG_SEC = 0.06  # shifts searched either way
PTS_TOLERANCE_SEC = 0.002


@dataclass(frozen=True)
class Frame:
    """One decoded picture: its time from the start of what was decoded, and the MD5 of its pixels."""

    pts: float
    md5: str


def _ffmpeg(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", *args], capture_output=True, text=True,
                          timeout=FFMPEG_TIMEOUT_SEC, check=True)


def _range_filter(start: float | None, end: float | None) -> str:
    """Frames whose presentation time lies in [start, end), renumbered from 0."""
    if start is None or end is None:
        return "setpts=PTS-STARTPTS"
    return f"trim=start={start:.6f}:end={end:.6f},setpts=PTS-STARTPTS"


def decoded_frames(path: Path, start: float | None = None, end: float | None = None) -> list[Frame]:
    """Every decoded video frame of `path` (or those showing in [start, end)), in presentation order."""
    out = _ffmpeg(["-v", "error", "-i", str(path), "-map", "0:v:0", "-vf", _range_filter(start, end),
                   "-fps_mode", "passthrough", "-pix_fmt", "yuv420p", "-f", "framemd5", "-"]).stdout
    frames = []
    for line in out.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        stream, _dts, pts, _dur, _size, md5 = (f.strip() for f in line.split(","))
        if stream == "0":
            frames.append(Frame(float(pts), md5))
    tb = _framemd5_timebase(out)
    return [Frame(f.pts * tb, f.md5) for f in frames]


def _framemd5_timebase(out: str) -> float:
    for line in out.splitlines():
        if line.startswith("#tb 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            return int(num) / int(den)
    raise AssertionError("framemd5 printed no time base")


def psnr_per_frame(clip: Path, source: Path, start: float, end: float) -> list[float]:
    """PSNR (dB, luma and chroma averaged) of each clip frame against the source's frames showing in
    [start, end), paired in order (the n-th with the n-th: a repeated or missing frame shifts every later pair;
    check the frame times apart — a re-encode may round them, which must not pair a frame with its neighbour)."""
    stats = clip.with_suffix(".psnr.log")
    graph = (f"[0:v]format=yuv420p,settb=1/1000,setpts=N[a];[1:v]{_range_filter(start, end)},"
             f"format=yuv420p,settb=1/1000,setpts=N[b];[a][b]psnr=stats_file={stats}")
    _ffmpeg(["-v", "error", "-i", str(clip), "-i", str(source), "-lavfi", graph, "-f", "null", "-"])
    values = []
    for line in stats.read_text().splitlines():
        field = next(f for f in line.split() if f.startswith("psnr_avg:"))
        value = field.split(":", 1)[1]
        values.append(float("inf") if value == "inf" else float(value))
    return values


def decode_errors(path: Path) -> str:
    """What `ffmpeg -v error -i clip -f null -` prints (nothing for a clean file)."""
    done = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
                          capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_SEC, check=False)
    return (done.stdout + done.stderr).strip() or ("" if done.returncode == 0 else f"exit {done.returncode}")


def _pcm(path: Path, start: float | None, seconds: float) -> list[int]:
    seek = ["-ss", f"{start:.6f}"] if start is not None else []
    out = subprocess.run(
        ["ffmpeg", "-v", "error", *seek, "-i", str(path), "-t", f"{seconds:.6f}", "-map", "0:a:0", "-ac", "1",
         "-ar", str(SYNC_RATE_HZ), "-f", "s16le", "-"], capture_output=True, check=True, timeout=FFMPEG_TIMEOUT_SEC,
    ).stdout
    return list(struct.unpack(f"<{len(out) // 2}h", out))


def audio_lag(clip: Path, source: Path, source_start: float) -> float:
    """Seconds by which the clip's first decoded audio sample comes after source time `source_start`:
    the clip audio at its first sample is the source audio at source_start + lag."""
    a = _pcm(clip, None, SYNC_WINDOW_SEC)
    lead = min(SYNC_MAX_LAG_SEC, source_start)
    b = _pcm(source, source_start - lead, SYNC_WINDOW_SEC + lead + SYNC_MAX_LAG_SEC)
    n, lags = len(a), int((lead + SYNC_MAX_LAG_SEC) * SYNC_RATE_HZ)
    best_lag, best = 0, float("-inf")
    for k in range(0, min(lags, len(b) - n) + 1):
        score = sum(x * y for x, y in zip(a, b[k:k + n], strict=False))
        if score > best:
            best, best_lag = score, k
    return best_lag / SYNC_RATE_HZ - lead
