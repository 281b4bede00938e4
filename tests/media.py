"""Test media made on the spot with ffmpeg, and ffprobe readers for assertions."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from shared.media.testpattern import make_test_pattern

FFMPEG_TIMEOUT_SEC = 120


def make_video(path: Path, *, seconds: float, audio: bool = True) -> Path:
    """640x360 30 fps H.264 (a keyframe every 2 s, no B-frames) with AAC: see make_test_pattern."""
    return make_test_pattern(path, seconds=seconds, audio=audio)


def probe(path_or_url: str | Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path_or_url)],
        check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC,
    )
    return json.loads(out.stdout)


def codecs(info: dict) -> dict[str, str]:
    return {s["codec_type"]: s["codec_name"] for s in info["streams"]}


def keyframe_times(path: Path) -> list[float]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags",
         "-of", "csv=p=0", str(path)],
        check=True, capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_SEC,
    )
    return [float(t) for t, _, f in (line.partition(",") for line in out.stdout.splitlines()) if "K" in f]


def frame_md5(path: Path, at_sec: float | None = None) -> str:
    """MD5 of the decoded pixels of the first video frame at or after `at_sec` (the first frame when None)."""
    seek = ["-ss", f"{at_sec:.6f}"] if at_sec is not None else []
    out = subprocess.run(
        ["ffmpeg", "-v", "error", *seek, "-i", str(path), "-map", "0:v:0", "-frames:v", "1",
         "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"],
        check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC,
    )
    assert out.stdout, "no frame decoded"
    return hashlib.md5(out.stdout).hexdigest()


def video_frame_count(path: Path) -> int:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
         "stream=nb_read_packets", "-of", "csv=p=0", str(path)],
        check=True, capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_SEC,
    )
    return int(out.stdout.strip())


def make_source(
    path: Path, *, seconds: float, fps: str = "30", gop: int = 30, bframes: int = 2, codec: str = "libx264",
    audio: bool = True, video: bool = True, open_gop: bool = False, vfr: bool = False, rotate: int = 0,
    size: str = "320x180", pix_fmt: str = "", altref: bool = False,
) -> Path:
    """A small test source for cut tests: fixed GOP (no scene-cut keyframes), chosen B-frames, seeded pink
    noise as audio (so a shift in time shows), MP4 unless the name says otherwise. `pix_fmt`: HEVC/VP9 pixel
    format (e.g. 10-bit); `altref`: VP9 with alt-ref (hidden) frames, in superframes."""
    args = ["ffmpeg", "-v", "error", "-y"]
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"anoisesrc=d={seconds}:c=pink:r=48000:seed=7:a=0.5"]
    if video and vfr:  # 30 fps for 2 s, then every third frame: 10 fps
        args += ["-vf", r"select='lt(n\,60)+not(mod(n\,3))'", "-fps_mode", "vfr"]
    if video and codec == "libx265":
        gop_open = 1 if open_gop else 0
        args += ["-c:v", "libx265", "-preset", "ultrafast", "-tag:v", "hvc1", "-x265-params",
                 f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:open-gop={gop_open}:log-level=error"]
        args += ["-pix_fmt", pix_fmt] if pix_fmt else []
    elif video and codec == "libvpx-vp9":
        speed = ["-deadline", "good", "-cpu-used", "5", "-auto-alt-ref", "1", "-lag-in-frames", "16"] if altref \
            else ["-deadline", "realtime", "-cpu-used", "8"]
        args += ["-c:v", "libvpx-vp9", *speed, "-g", str(gop), "-b:v", "300k"]
        args += ["-pix_fmt", pix_fmt] if pix_fmt else []
    elif video:
        params = "open-gop=1" if open_gop else "open-gop=0"
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-g", str(gop), "-keyint_min", str(gop),
                 "-sc_threshold", "0", "-bf", str(bframes), "-pix_fmt", "yuv420p", "-x264-params", params]
    if video and rotate:
        args += ["-metadata:s:v:0", f"rotate={rotate}"]
    if audio:
        args += ["-c:a", "libopus" if path.suffix == ".webm" else "aac", "-b:a", "96k"]
    subprocess.run([*args, "-shortest", str(path)], check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC)
    return path


def make_media(
    path: Path, *, seconds: float, video: str | None, audio: str | None, size: str = "320x240", fps: str = "25",
    gop_frames: int = 50, extra: tuple[str, ...] = (),
) -> Path:
    """A test pattern with any ffmpeg video/audio encoder (None: no such stream) in the container of `path`."""
    if path.is_file():
        return path
    args = ["ffmpeg", "-v", "error", "-y"]
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    if video:
        args += ["-c:v", video, "-g", str(gop_frames), "-pix_fmt", "yuv420p"]
    if audio:
        args += ["-c:a", audio]
    subprocess.run([*args, *extra, str(path)], check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC)
    return path


def stream_of(info: dict, kind: str) -> dict:
    return next(s for s in info["streams"] if s["codec_type"] == kind)
