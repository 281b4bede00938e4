"""Run ffmpeg with `-progress` parsed into a 0..1 callback; errors become clipjet errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shared.errors import Permanent, Transient
from shared.media.inputs import guard_inputs

STDERR_TAIL_CHARS = 2000
OUT_TIME_KEY = "out_time_us="
US_PER_SEC = 1_000_000
RECONNECT_DELAY_MAX_SEC = 8  # ffmpeg retries an HTTP input (5xx such as S3's 503 SlowDown, network errors) this long, s
# ffmpeg's own retries for HTTP inputs (signed S3 URLs): a throttled or dropped read is tried again, not a failed job.
HTTP_INPUT_OPTIONS = {
    "reconnect": "1", "reconnect_on_network_error": "1", "reconnect_on_http_error": "5xx",
    "reconnect_delay_max": str(RECONNECT_DELAY_MAX_SEC),
}
# stderr of an input that stayed unavailable (after the retries above): the storage's trouble, not the media's.
UNAVAILABLE_INPUT_MARKS = (
    "Server returned 5", "Connection refused", "Connection reset by peer", "Connection timed out",
)


class MediaError(Permanent):
    code = "media_error"


async def run_ffmpeg(
    args: list[str], *, duration_sec: float, on_progress: Callable[[float], None] | None = None
) -> None:
    """`ffmpeg <args>`; progress = output time / duration_sec. A non-zero exit raises MediaError.
    Every input is opened with the media whitelists (`shared.media.inputs.guard_inputs`).

    A kill from outside (signal) is Transient: another try may succeed.
    """
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-progress", "pipe:1", "-nostats",
           *with_http_retries(guard_inputs(args))]
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
    raise_for_exit(code, await stderr_task, "ffmpeg failed")


def raise_for_exit(code: int, stderr: bytes, what: str) -> None:
    """The clipjet error of an ffmpeg run that ended with `code` (nothing for 0). A kill from outside (signal)
    and an input that stayed unavailable (storage trouble, not the media's) are Transient; any other failure
    is a MediaError. `what` starts the message."""
    if code == 0:
        return
    tail = stderr.decode(errors="replace")[-STDERR_TAIL_CHARS:].strip()
    if code < 0:
        raise Transient(f"ffmpeg was killed by signal {-code}", code="ffmpeg_killed")
    if any(mark in tail for mark in UNAVAILABLE_INPUT_MARKS):
        raise Transient(f"{what}: an input stayed unavailable: {tail}", code="input_unavailable")
    raise MediaError(f"{what}: {tail or f'exit {code}'}")


def with_http_retries(args: list[str]) -> list[str]:
    """`args` with HTTP_INPUT_OPTIONS before every `-i` that reads an http(s) URL."""
    out: list[str] = []
    for index, arg in enumerate(args):
        following = args[index + 1] if index + 1 < len(args) else ""
        if arg == "-i" and following.startswith(("http://", "https://")):
            for name, value in HTTP_INPUT_OPTIONS.items():
                out += [f"-{name}", value]
        out.append(arg)
    return out
