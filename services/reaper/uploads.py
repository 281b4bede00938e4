"""Reaper step `uploads`: uploads nobody uses are deleted after UPLOAD_RETENTION_HOURS.

An object under `uploads/` older than the retention is deleted unless a queued or processing job names its key,
or a job used it within the retention (`upload_checks.last_used_at`); its checked copies (`sources/…`) and its
check row go with it. Unfinished multipart uploads started before the retention are aborted (no job can use
them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.db import uploads
from shared.runtime.logs import get_logger
from shared.runtime.resources import Resources
from shared.storage.upload_keys import UPLOAD_PREFIX
from shared.storage.upload_store import abort_multipart, copy_prefix, multipart_before, objects_before

SECONDS_PER_HOUR = 3600

log = get_logger("reaper")


@dataclass
class UploadReap:
    """What one `uploads` step did."""

    deleted: int = 0  # upload objects deleted
    copies_deleted: int = 0  # their checked copies deleted
    kept: int = 0  # old upload objects kept (a live job names them, or a job used them recently)
    aborted: int = 0  # unfinished multipart uploads aborted


async def reap_uploads(res: Resources, _report: object) -> None:
    """The reaper's `uploads` step (its counts are logged)."""
    await sweep_uploads(res)


async def sweep_uploads(res: Resources) -> UploadReap:
    """Delete old unused uploads and abort old unfinished multipart uploads, REAPER_BATCH of each at most."""
    settings = res.settings
    cutoff = datetime.now(UTC) - timedelta(seconds=settings.upload_retention_hours * SECONDS_PER_HOUR)
    done = UploadReap()
    old = await objects_before(res.storage, UPLOAD_PREFIX, cutoff, settings.reaper_batch)
    kept = await uploads.kept_keys(res.db, old, cutoff) if old else set()
    for key in old:
        if key in kept:
            done.kept += 1
            continue
        done.deleted += await res.storage.delete(key)
        done.copies_deleted += await res.storage.delete_prefix(copy_prefix(key))
        await uploads.forget(res.db, key)
    for key, upload_id in await multipart_before(res.storage, UPLOAD_PREFIX, cutoff, settings.reaper_batch):
        await abort_multipart(res.storage, key, upload_id)
        done.aborted += 1
    if done.deleted or done.aborted:
        log.info("uploads_reaped", deleted=done.deleted, copies_deleted=done.copies_deleted, kept=done.kept,
                 aborted=done.aborted)
    return done
