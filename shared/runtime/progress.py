"""A stage's progress: handlers set it, a heartbeat task writes it to the job row and to NATS."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from contextlib import suppress

import msgspec
from nats.aio.msg import Msg

from shared.db import jobs
from shared.jobs.contracts import ProgressEvent
from shared.runtime.logs import get_logger
from shared.runtime.resources import Resources

log = get_logger("progress")
_encoder = msgspec.json.Encoder()
WRITE_MAX_SEC = 2.0  # longest a heartbeat's row write may wait (an outage): in_progress() must go on, s
VISIBILITY_SHARE = 4  # ... and never longer than QUEUE_VISIBILITY_SEC / this
PCT_DIGITS = 4  # a ProgressEvent's pct is rounded to this many decimals (and published when that changes)


class Progress:
    """Progress of one stage (0..1), mapped onto the whole job by the stages done and still to come."""

    def __init__(self, stage: str, stages_done: int, stages_total: int) -> None:
        self.stage = stage
        self._done = stages_done
        self._total = max(1, stages_total)
        self.stage_pct = 0.0

    def set(self, pct: float) -> None:
        self.stage_pct = max(self.stage_pct, min(1.0, max(0.0, pct)))

    @property
    def job_pct(self) -> float:
        return (self._done + self.stage_pct) / self._total


async def heartbeat_loop(
    res: Resources, msg: Msg, job_id: str, progress: Progress, on_canceled: Callable[[], None] | None = None
) -> None:
    """Every HEARTBEAT_MS (on a fixed schedule, not drifting by the writes' own time): tell JetStream we are
    alive, write progress, stage and `last_heartbeat_at` to the job row (the reaper's sign of life, so it is
    written even while progress stands still), and publish a ProgressEvent when progress moved.

    A row found `canceled` calls `on_canceled`: the fallback when the cancel notice (shared/runtime/cancel.py) was
    lost."""
    period = res.settings.heartbeat_ms / 1000
    write_timeout = max(period, min(WRITE_MAX_SEC, res.settings.queue_visibility_sec / VISIBILITY_SHARE))
    uid = uuid.UUID(job_id)
    subject = res.subjects.progress(job_id)
    last = -1.0
    failing = False
    due = time.monotonic()
    while True:
        due += period
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        due = max(due, time.monotonic() - period)  # after a stall, do not fire a burst of late beats
        with suppress(Exception):
            await msg.in_progress()
        pct = progress.job_pct
        shown = round(pct, PCT_DIGITS)
        try:
            status = await asyncio.wait_for(jobs.heartbeat(res.db, uid, progress.stage, pct), write_timeout)
            if status == "canceled" and on_canceled is not None:
                on_canceled()
            if shown != last:
                event = ProgressEvent(job_id=job_id, pct=shown, stage=progress.stage)
                await res.nc.publish(subject, _encoder.encode(event))
                last = shown
            failing = False
        except Exception as exc:  # a missed heartbeat write must not kill the work
            if not failing:  # once per run of failures (an outage would log every period)
                log.warning("heartbeat_failed", error=str(exc))
            failing = True
