"""Run ffmpeg with `-progress` parsed into a 0..1 callback; errors become clipjet errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shared.errors import Permanent, Transient

STDERR_TAIL_CHARS = 2000
OUT_TIME_KEY = "out_time_us="
US_PER_SEC = 1_000_000


class MediaError(Permanent):
    code = "media_error"


async def run_ffmpeg(
    args: list[str], *, duration_sec: float, on_progress: Callable[[float], None] | None = None
) -> None:
    """`ffmpeg <args>`; progress = output time / duration_sec. A non-zero exit raises MediaError.

    A kill from outside (signal) is Transient: another try may succeed.
    """
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-progress", "pipe:1", "-nostats", *args]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr_task = asyncio.create_task(proc.stderr.read())
    try:
        async for line in proc.stdout:
            text = line.decode(errors="replace").strip()
            if on_progress and text.startswith(OUT_TIME_KEY) and duration_sec > 0:
                value = text[len(OUT_TIME_KEY):]
                if value.isdigit():
                    on_progress(min(1.0, int(value) / US_PER_SEC / duration_sec))
        code = await proc.wait()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    err = (await stderr_task).decode(errors="replace")[-STDERR_TAIL_CHARS:]
    if code < 0:
        raise Transient(f"ffmpeg was killed by signal {-code}", code="ffmpeg_killed")
    if code != 0:
        raise MediaError(f"ffmpeg failed: {err.strip() or f'exit {code}'}")
