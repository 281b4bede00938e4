"""Trimmer: stream-copy the clip out of the staged media into an MP4 with +faststart."""

from __future__ import annotations

from shared.clipstore import READ_URL_TTL_SEC, forward_clip, store_clip, stored_clip
from shared.contracts import StageMessage
from shared.errors import Permanent
from shared.media.cut import copy_cut
from shared.pipeline import TRIM
from shared.storage import staging_prefix
from shared.worker import StageDeps


async def handle(task: StageMessage, deps: StageDeps) -> StageMessage:
    """Cut [keyframe at/before startSec, endSec] by stream copy; reuse the output if it already exists."""
    plan, source = task.plan, task.artifact("source")
    if plan is None or source is None:
        raise Permanent("the trim stage needs the fetcher's plan and staged source", code="invalid_message")
    key = f"{staging_prefix(task.job.id)}clip.mp4"
    storage = deps.res.storage
    existing = await stored_clip(storage, key)
    if existing is not None:
        return forward_clip(task, TRIM, *existing, plan.cut_start_sec)

    media = await storage.internal_url(source.key, READ_URL_TTL_SEC)
    path = deps.scratch / "clip.mp4"
    await copy_cut(
        media, path, seek_sec=plan.cut_start_sec - plan.staged_offset_sec,
        duration_sec=task.job.end_sec - plan.cut_start_sec, on_progress=lambda p: deps.progress.set(0.9 * p),
    )
    clip, duration = await store_clip(storage, key, path)
    return forward_clip(task, TRIM, clip, duration, plan.cut_start_sec)
