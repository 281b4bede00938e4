"""Stopping a running job at once when its client cancels it (`POST /api/jobs/{id}/cancel`).

The gateway writes the row `canceled` first, then publishes a core NATS notice on `<prefix>.cancel.<jobId>`.
Every worker process keeps one subscription on `<prefix>.cancel.*` and a registry of the jobs it is running:
a notice cancels the handler task of that job (which kills its ffmpeg, see shared/media/ffmpeg.py, and stops a
CPU transcription at its next segment, see shared/asr/engine.py). A job is registered *before* its stage marks
it processing, so a notice cannot fall between the two: either `begin_stage` already sees `canceled` (the row
is written before the notice), or the notice finds the registered job. A lost notice (NATS down for a moment)
is caught by the heartbeat, which reads the row every HEARTBEAT_MS (shared/runtime/progress.py). A notice is acted on
only when the row says `canceled`: a stray publish on the subject cannot drop a job's work.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import asyncpg
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.db import cancels
from shared.runtime.bus import Subjects
from shared.runtime.logs import get_logger

log = get_logger("cancel")
R = TypeVar("R")


class JobCanceled(Exception):
    """The job was canceled by its client while this stage ran it: nothing more is done for it."""


class Run:
    """One message of a job being run by this process: canceled by a notice or by the heartbeat."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.canceled = False
        self._task: asyncio.Task[Any] | None = None

    def cancel(self) -> None:
        """Once: a second cancel (the heartbeat's, after the notice's) would interrupt ffmpeg's clean-up."""
        if self.canceled:
            return
        log.info("job_cancel_received", job_id=self.job_id)
        self.canceled = True
        if self._task is not None:
            self._task.cancel()

    async def run(self, work: Awaitable[R]) -> R:
        """Run the stage's handler as a task of its own that a cancel stops; JobCanceled when it did."""
        task = asyncio.ensure_future(work)
        if self.canceled:  # canceled between begin_stage and now
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            raise JobCanceled(self.job_id)
        self._task = task
        try:
            result = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.canceled and (current is None or not current.cancelling()):  # not a shutdown of the worker
                raise JobCanceled(self.job_id) from None
            raise
        except Exception:
            if self.canceled:  # the cancel surfaced as another error (e.g. a killed subprocess's)
                raise JobCanceled(self.job_id) from None
            raise
        finally:
            self._task = None
        if self.canceled:  # it finished as the cancel came: its output is not passed on
            raise JobCanceled(self.job_id)
        return result


class CancelWatch:
    """The jobs this worker process runs, and the subscription that cancels them."""

    def __init__(self, nc: NatsClient, subjects: Subjects, db: asyncpg.Pool) -> None:
        self._nc, self._db = nc, db
        self._subject = subjects.cancel("*")
        self._runs: dict[str, set[Run]] = {}
        self._sub: Subscription | None = None

    async def open(self) -> None:
        async def on_notice(msg: Msg) -> None:
            job_id = msg.subject.rsplit(".", 1)[-1]
            if job_id not in self._runs:  # not running here
                return
            try:  # a notice is only a hint: the row says whether the job was canceled
                confirmed = await cancels.is_canceled(self._db, uuid.UUID(job_id))
            except Exception as exc:  # the heartbeat reads the row again moments later
                log.warning("cancel_check_failed", job_id=job_id, error=repr(exc))
                return
            if confirmed:
                self.cancel(job_id)

        self._sub = await self._nc.subscribe(self._subject, cb=on_notice)

    def cancel(self, job_id: str) -> None:
        for run in self._runs.get(job_id, ()):
            run.cancel()

    @contextmanager
    def watching(self, job_id: str) -> Iterator[Run]:
        """Register the job for the time its message is handled here."""
        run = Run(job_id)
        self._runs.setdefault(job_id, set()).add(run)
        try:
            yield run
        finally:
            runs = self._runs.get(job_id)
            if runs is not None:
                runs.discard(run)
                if not runs:
                    del self._runs[job_id]

    async def close(self) -> None:
        if self._sub is not None:
            with suppress(Exception):
                await self._sub.unsubscribe()
