"""The clip's audio for speech recognition: 16 kHz mono float32 straight from ffmpeg's stdout into numpy."""

from __future__ import annotations

import asyncio

import numpy as np

from shared.media.ffmpeg import RunLimits, communicate_within, raise_for_exit, with_http_retries
from shared.media.inputs import ffmpeg_input_args

SAMPLE_RATE_HZ = 16_000  # what Whisper expects
BYTES_PER_SAMPLE = 4  # f32le


async def read_audio(
    source: str, *, start_sec: float, duration_sec: float, fmt: str = "", limits: RunLimits | None = None
) -> np.ndarray:
    """Decode only [start_sec, start_sec + duration_sec) of `source` (a path or URL) as 16 kHz mono float32.

    The samples come through a pipe (no temporary WAV); ffmpeg seeks in the input, so nothing before
    `start_sec` is decoded beyond the seek's keyframe. A source without audio gives an empty array.
    `fmt`: the demuxer to force (`shared.media.inputs`); the media whitelists apply either way. The run
    has the deadline of `duration_sec` (`limits`; FfmpegDeadline past it).
    """
    seek = ["-ss", f"{start_sec:.6f}"] if start_sec > 0 else []
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", *with_http_retries([
        *ffmpeg_input_args(source, fmt), *seek, "-i", source, "-t", f"{duration_sec:.6f}",
        "-map", "0:a:0?", "-vn", "-sn", "-dn", "-ac", "1", "-ar", str(SAMPLE_RATE_HZ), "-f", "f32le", "pipe:1",
    ])]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    pcm, err = await communicate_within(proc, duration_sec=duration_sec, limits=limits)
    raise_for_exit(proc.returncode or 0, err, "ffmpeg could not read the clip's audio")
    usable = len(pcm) - len(pcm) % BYTES_PER_SAMPLE
    return np.frombuffer(pcm[:usable], dtype=np.float32).copy()
