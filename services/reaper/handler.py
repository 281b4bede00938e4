"""The reaper: one pass every REAPER_INTERVAL_SEC puts right what no stage worker will.

A pass runs these steps in order, each bounded by REAPER_BATCH rows and each crash-safe (a pass that dies
half-way leaves work the next pass finds again):

1. outbox     queued rows the gateway wrote but never published → published to `<prefix>.fetch.<priority>`
              (same Nats-Msg-Id as the gateway's), `published_at` set, a `republished` event; row by row, a
              row that can never be published fails its job, one failing otherwise waits (outbox.py);
2. expiry     done jobs past `expires_at` → their result objects deleted unless a live done job shares the
              content-hashed key, then → `expired` (event `expired`);
3. stuck      jobs silent past every redelivery whose message is gone → published again from the entry stage (at
              most LOST_REPUBLISH_MAX times), then failed `stuck` (past its last delivery but still there → failed
              `max_deliveries_exceeded`), announced on `<prefix>.events.<id>` (lost.py);
4. staging    objects under `staging/<jobId>/` of ended jobs deleted, once (`jobs.staging_cleaned_at`);
   batch_staging  a batch's shared source spans deleted once every job of the batch ended (batches.py);
5. partitions the next days' partitions created, old unneeded ones dropped (see partitions.py).

Replicas are safe: a pass runs under a PostgreSQL advisory lock per schema, and a replica that finds it taken
skips its pass. Between passes every replica listens for JetStream's MAX_DELIVERIES advisories (poison.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field

import structlog

from shared.db import jobs
from shared.runtime.logs import get_logger
from shared.runtime.ops import ready_while_connected
from shared.runtime.resources import Resources
from shared.storage.s3 import staging_prefix

from .batches import clean_batch_staging
from .lost import fail_stuck
from .outbox import republish_outbox
from .partitions import drop_old_partitions, ensure_partitions
from .poison import watch_max_deliveries
from .queuedepth import queue_depth_loop
from .ratelimits import prune_rate_windows
from .uploads import reap_uploads

log = get_logger("reaper")
TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext('clipjet-reaper:' || current_schema()))"
UNLOCK = "SELECT pg_advisory_unlock(hashtext('clipjet-reaper:' || current_schema()))"


@dataclass
class ReapReport:
    """What one pass did (all zero and `skipped` when another replica held the pass lock)."""

    skipped: bool = False
    republished: int = 0  # outbox rows published
    outbox_failed: int = 0  # outbox rows that can never be published: their jobs failed (invalid_message)
    outbox_errors: int = 0  # outbox rows that failed this pass for another reason: tried again next pass
    expired: int = 0  # done jobs → expired
    results_deleted: int = 0  # result objects deleted (no live job shared them)
    stuck_failed: int = 0  # silent jobs failed as `stuck` (or `max_deliveries_exceeded`)
    lost_republished: int = 0  # silent jobs whose message was gone, published again from their entry stage
    staging_cleaned: int = 0  # ended jobs whose staging prefix was emptied
    staging_objects_deleted: int = 0
    batch_staging_cleaned: int = 0  # batches whose staged source spans were deleted (every job of theirs ended)
    partitions_created: int = 0
    partitions_dropped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # steps that raised (logged; retried next pass)

    def counts(self) -> dict[str, object]:
        """The report as log fields."""
        return {name: value for name, value in vars(self).items() if value}


async def expire_results(res: Resources, report: ReapReport) -> None:
    """Objects first, status second: a pass that dies in between leaves the job done, and the next finishes it."""
    for row in await jobs.expiry_due(res.db, res.settings.reaper_batch):
        for role, key in jobs.result_files(row).items():
            if key and not await jobs.result_key_in_use(res.db, key, role):
                report.results_deleted += await res.storage.delete(key)
        if await jobs.expire(res.db, row["id"], row["created_at"]):
            report.expired += 1


async def clean_staging(res: Resources, report: ReapReport) -> None:
    for row in await jobs.staging_due(res.db, res.settings.reaper_batch):
        report.staging_objects_deleted += await res.storage.delete_prefix(staging_prefix(str(row["id"])))
        await jobs.mark_staging_cleaned(res.db, row["id"], row["created_at"])
        report.staging_cleaned += 1


async def keep_partitions(res: Resources, report: ReapReport) -> None:
    report.partitions_created = await ensure_partitions(res.db, res.settings.partition_days_ahead)
    report.partitions_dropped = await drop_old_partitions(res.db, res.settings.retention_hours)


Step = Callable[[Resources, ReapReport], Awaitable[None]]
STEPS: tuple[tuple[str, Step], ...] = (
    ("outbox", republish_outbox),
    ("expiry", expire_results),
    ("stuck", fail_stuck),  # before staging, so a job failed now has its staging cleaned in the same pass
    ("staging", clean_staging),
    ("batch_staging", clean_batch_staging),  # a batch's shared source spans, once all its jobs ended (batches.py)
    ("uploads", reap_uploads),  # old uploads no job uses, and old unfinished multipart uploads (uploads.py)
    ("rate_limits", prune_rate_windows),  # the gateway's rate-limit windows older than the sliding window
    ("partitions", keep_partitions),  # last: a partition is dropped only once the steps above left it nothing
)


async def reap_once(res: Resources) -> ReapReport:
    """One pass of every step, unless another replica's pass holds the lock (then `skipped`)."""
    started = time.perf_counter()
    structlog.contextvars.clear_contextvars()
    report = ReapReport()
    async with res.db.acquire() as lock_conn:
        if not await lock_conn.fetchval(TRY_LOCK):
            report.skipped = True
            log.debug("reaper_pass_skipped", reason="another replica holds the pass lock")
            return report
        try:
            for name, step in STEPS:
                try:
                    await step(res, report)
                except Exception as exc:  # one step's trouble (S3 or NATS down) must not starve the others
                    report.errors.append(name)
                    log.error("reaper_step_failed", step=name, error=repr(exc), exc_info=True)
        finally:
            await lock_conn.fetchval(UNLOCK)
    counts = report.counts()
    (log.info if counts else log.debug)("reaper_pass", ms=round((time.perf_counter() - started) * 1000, 1), **counts)
    return report


async def run_reaper(res: Resources, stop: asyncio.Event) -> None:
    """A pass every REAPER_INTERVAL_SEC until `stop` is set (a pass under way finishes first)."""
    log.info("reaper_started", interval_sec=res.settings.reaper_interval_sec)
    advisories = await watch_max_deliveries(res)
    depth = asyncio.create_task(queue_depth_loop(res, stop))
    ready_while_connected(res.nc)
    while not stop.is_set():
        try:
            await reap_once(res)
        except Exception as exc:  # PostgreSQL unreachable for the lock: try again next interval
            log.error("reaper_pass_failed", error=repr(exc))
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=res.settings.reaper_interval_sec)
    depth.cancel()
    with suppress(asyncio.CancelledError):
        await depth
    with suppress(Exception):
        await advisories.unsubscribe()
    log.info("reaper_stopped")
