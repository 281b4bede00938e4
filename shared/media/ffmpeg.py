"""Run ffmpeg with `-progress` parsed into a 0..1 callback, under a wall-clock deadline; errors become clipjet
errors.

Every run has a deadline proportional to the media it writes (FFMPEG_DEADLINE_BASE_SEC +
FFMPEG_DEADLINE_PER_MEDIA_SEC x seconds): past it, ffmpeg's process group is killed and the run fails with
`ffmpeg_deadline` (Transient: the stage's attempts bound the retries; a reader of a user's URL reports it as
the source's slowness). Progress lines do not extend it: a stalled input cannot hold a job forever.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from shared.errors import Permanent, Transient
from shared.media.inputs import guard_inputs
from shared.runtime import tracing
from shared.settings import Settings, load_settings

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


class FfmpegDeadline(Transient):
    """An ffmpeg run went past its wall-clock deadline and was killed."""

    code = "ffmpeg_deadline"


@dataclass(frozen=True)
class RunLimits:
    """The wall-clock deadline of an ffmpeg run: base + per_media x seconds of media written."""

    base_sec: float
    per_media_sec: float

    @classmethod
    def of(cls, settings: Settings) -> RunLimits:
        return cls(settings.ffmpeg_deadline_base_sec, settings.ffmpeg_deadline_per_media_sec)

    def deadline(self, media_sec: float) -> float:
        return self.base_sec + self.per_media_sec * max(0.0, media_sec)


# callers without settings at hand: the process's environment (a worker's settings come from it)
DEFAULT_LIMITS = RunLimits.of(load_settings())


@tracing.traced("ffmpeg")
async def run_ffmpeg(
    args: list[str], *, duration_sec: float, on_progress: Callable[[float], None] | None = None,
    limits: RunLimits | None = None, work_sec: float | None = None,
) -> None:
    """`ffmpeg <args>`; progress = output time / duration_sec. A non-zero exit raises MediaError.
    Every input is opened with the media whitelists (`shared.media.inputs.guard_inputs`).

    A kill from outside (signal) is Transient: another try may succeed. A run past `limits.deadline(work_sec)`
    (DEFAULT_LIMITS when None; work_sec: the media it reads, decoded lead-in included, else duration_sec) is
    killed with its process group: FfmpegDeadline.
    """
    deadline = (limits or DEFAULT_LIMITS).deadline(duration_sec if work_sec is None else work_sec)
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-progress", "pipe:1", "-nostats",
           *with_http_retries(guard_inputs(args))]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr_task = asyncio.create_task(proc.stderr.read())
    try:
        async with asyncio.timeout(deadline):
            async for line in proc.stdout:
                text = line.decode(errors="replace").strip()
                if on_progress and text.startswith(OUT_TIME_KEY) and duration_sec > 0:
                    value = text[len(OUT_TIME_KEY):]
                    if value.isdigit():
                        on_progress(min(1.0, int(value) / US_PER_SEC / duration_sec))
            code = await proc.wait()
    except TimeoutError as exc:
        await _kill(proc)
        stderr_task.cancel()
        raise FfmpegDeadline(f"ffmpeg ran past its {deadline:.0f} s deadline for {duration_sec:.1f} s of media "
                             f"and was stopped", code="ffmpeg_deadline") from exc
    except asyncio.CancelledError:
        await _kill(proc)
        raise
    raise_for_exit(code, await stderr_task, "ffmpeg failed")


async def communicate_within(
    proc: asyncio.subprocess.Process, *, duration_sec: float, limits: RunLimits | None = None
) -> tuple[bytes, bytes]:
    """(stdout, stderr) of an ffmpeg started with `start_new_session=True`, within the deadline of
    `duration_sec` of media (`limits`, DEFAULT_LIMITS when None): past it, killed with its process group."""
    deadline = (limits or DEFAULT_LIMITS).deadline(duration_sec)
    try:
        async with asyncio.timeout(deadline):
            return await proc.communicate()
    except TimeoutError as exc:
        await _kill(proc)
        raise FfmpegDeadline(f"ffmpeg ran past its {deadline:.0f} s deadline for {duration_sec:.1f} s of media "
                             f"and was stopped", code="ffmpeg_deadline") from exc
    except asyncio.CancelledError:
        await _kill(proc)
        raise


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL ffmpeg's process group (it was started in a session of its own) and reap it."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()


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
