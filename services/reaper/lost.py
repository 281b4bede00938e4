"""The reaper's stuck step: jobs no worker reports on. A job whose message is gone (a NATS crash lost a publish
the server had acknowledged, or the message was removed) is published again from its entry stage, from the job
row, which is the source of truth: every stage is idempotent, so the stages it had passed short-circuit. That
happens at most LOST_REPUBLISH_MAX times per job (event `message_republished`, with its number and the new
stream sequence); only then is the job failed `stuck`. A message past its last delivery fails the job with
`max_deliveries_exceeded` (its advisory was missed); a message still waiting for a worker is left alone.

Where the message is: the stream sequence the runtime records (`stage_started.seq`, `stage_finished.seq`, and
`message_republished.seq`), checked to still hold this job's message (after a crash the server may give a lost
sequence number to a new message); a job only the gateway published (no sequence recorded) has lost its message
when its entry consumer holds no message at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
import msgspec

from shared.db import jobs
from shared.errors import Permanent
from shared.jobs.contracts import ClipJobMessage, Priority
from shared.jobs.pipeline import ENTRY_STAGE
from shared.runtime import bus
from shared.runtime.logs import get_logger
from shared.runtime.outage import is_outage
from shared.runtime.resources import Resources
from shared.runtime.worker import finish_job_failed

from .poison import MAX_DELIVERIES_CODE, MessageState, fail_exhausted, message_state

if TYPE_CHECKING:
    from .handler import ReapReport

log = get_logger("reaper")
REPUBLISHED_EVENT = "message_republished"

# Queued or processing, and silent for $1 s: no heartbeat (or, never taken, no publish) since. A queued job the
# gateway never published is the outbox's (published_at NULL and never taken).
SILENT_JOBS = """
SELECT id, created_at, status, stage, priority, request,
       extract(epoch FROM now() - COALESCE(last_heartbeat_at, published_at))::float8 AS silent_sec,
       (SELECT count(*) FROM job_events e WHERE e.job_id = j.id AND e.type = 'message_republished') AS republished
FROM jobs j
WHERE status IN ('queued', 'processing')
  AND COALESCE(last_heartbeat_at, published_at) < now() - make_interval(secs => $1)
ORDER BY COALESCE(last_heartbeat_at, published_at) LIMIT $2
"""
# The republished job counts as heard from now: it is silent again only STUCK_AFTER_SEC after this.
TOUCH = "UPDATE jobs SET last_heartbeat_at = now(), updated_at = now() WHERE id = $1 AND created_at = $2"


def stuck_after_sec(res: Resources) -> float:
    """Silence after which a job is checked: STUCK_AFTER_SEC, but never before every redelivery
    (QUEUE_VISIBILITY_SEC each, MAX_ATTEMPTS deliveries) is over."""
    settings = res.settings
    return max(settings.stuck_after_sec, settings.queue_visibility_sec * settings.max_attempts)


class _EntryQueues:
    """Whether an entry consumer holds any message (pending or unacked), read once per priority and pass."""

    def __init__(self, res: Resources) -> None:
        self._res = res
        self._held: dict[Priority, bool] = {}

    async def holds_any(self, priority: Priority) -> bool:
        if priority not in self._held:
            consumer = bus.consumer_name(ENTRY_STAGE, priority)
            info = await self._res.js.consumer_info(self._res.settings.nats_stream, consumer)
            self._held[priority] = info.num_pending + info.num_ack_pending > 0
        return self._held[priority]


async def fail_stuck(res: Resources, report: ReapReport) -> None:
    """Silent jobs: republished when their message is gone, failed when they cannot be (see the module doc)."""
    silent_limit = stuck_after_sec(res)
    entry = _EntryQueues(res)
    for row in await res.db.fetch(SILENT_JOBS, silent_limit, res.settings.reaper_batch):
        try:
            await _check(res, report, row, silent_limit, entry)
        except Exception as exc:  # one row's trouble must not keep the others waiting; an outage ends the step
            if is_outage(exc):
                raise
            log.error("stuck_check_failed", job_id=str(row["id"]), error=repr(exc))


async def _check(
    res: Resources, report: ReapReport, row: asyncpg.Record, silent_limit: float, entry: _EntryQueues
) -> None:
    job_id = str(row["id"])
    state, seq = await message_state(res, row["id"])
    if state is MessageState.UNKNOWN and row["stage"] is None and row["republished"] == 0:
        # only the gateway published it: gone once its entry queue holds nothing at all
        state = MessageState.WAITING if await entry.holds_any(row["priority"]) else MessageState.GONE
    if state is MessageState.WAITING:
        return
    if state is MessageState.EXHAUSTED and seq is not None:  # its advisory was missed
        await fail_exhausted(res, seq, res.settings.max_attempts, f"{row['stage']}")
        report.stuck_failed += 1
        log.warning("job_stuck", job_id=job_id, stage=row["stage"], code=MAX_DELIVERIES_CODE)
        return
    if row["republished"] < res.settings.lost_republish_max and await _republish(res, row, seq):
        report.lost_republished += 1
        return
    message = (
        f"no worker reported on this job for {row['silent_sec']:.0f} s (stage {row['stage']}), longer than "
        f"every redelivery of its message takes ({silent_limit:.0f} s), and its message was published again "
        f"{row['republished']} times; submit it again"
    )
    await finish_job_failed(res, job_id, Permanent(message, code="stuck"))
    report.stuck_failed += 1
    log.warning("job_stuck", job_id=job_id, stage=row["stage"], silent_sec=round(row["silent_sec"]))


async def _republish(res: Resources, row: asyncpg.Record, lost_seq: int | None) -> bool:
    """Publish the job again to its entry subject (a Nats-Msg-Id of its own per republish); False when the
    stored request is not a job (then it is failed as stuck)."""
    try:
        job = msgspec.convert(row["request"], ClipJobMessage)
    except msgspec.ValidationError:
        return False
    number = row["republished"] + 1
    subject = res.subjects.stage(ENTRY_STAGE, job.priority)
    ack = await bus.publish(res.js, subject, msgspec.json.encode(job), f"{job.id}:{ENTRY_STAGE}:lost{number}",
                            job.id)
    await jobs.record_event(res.db, row["id"], REPUBLISHED_EVENT, {
        "stage": ENTRY_STAGE, "seq": ack.seq, "number": number, "lostSeq": lost_seq, "atStage": row["stage"],
    })
    await res.db.execute(TOUCH, row["id"], row["created_at"])
    log.warning("lost_message_republished", job_id=job.id, at_stage=row["stage"], number=number, seq=ack.seq)
    return True

