"""Trimmer: stream-copy the clip out of the staged media into an MP4 with +faststart."""

from __future__ import annotations

import asyncio

from shared.contracts import Artifact, ClipResult, StageMessage
from shared.errors import Permanent
from shared.media.cut import copy_cut
from shared.media.mp4 import mp4_duration
from shared.pipeline import TRIM
from shared.storage import ObjectInfo, sha256_file, staging_prefix
from shared.worker import StageDeps

READ_URL_TTL_SEC = 3600  # lifetime of the signed URL ffmpeg reads the staged media through, s


async def handle(task: StageMessage, deps: StageDeps) -> StageMessage:
    """Cut [keyframe at/before startSec, endSec] by stream copy; reuse the output if it already exists."""
    plan, source = task.plan, task.artifact("source")
    if plan is None or source is None:
        raise Permanent("the trim stage needs the fetcher's plan and staged source", code="invalid_message")
    key = f"{staging_prefix(task.job.id)}clip.mp4"
    existing = await deps.res.storage.head(key)
    if existing is not None and existing.sha256 and "duration" in existing.metadata:
        return _forward(task, existing, float(existing.metadata["duration"]), plan.cut_start_sec)

    storage = deps.res.storage
    media = await storage.internal_url(source.key, READ_URL_TTL_SEC)
    path = deps.scratch / "clip.mp4"
    await copy_cut(
        media, path, seek_sec=plan.cut_start_sec - plan.staged_offset_sec,
        duration_sec=task.job.end_sec - plan.cut_start_sec, on_progress=lambda p: deps.progress.set(0.9 * p),
    )
    duration = await asyncio.to_thread(mp4_duration, path)
    digest = await sha256_file(path)
    metadata = {"sha256": digest, "duration": f"{duration:.6f}"}
    size = await storage.put_file(key, path, "video/mp4", metadata)
    return _forward(task, ObjectInfo(key, size, metadata), duration, plan.cut_start_sec)


def _forward(task: StageMessage, clip: ObjectInfo, duration: float, start: float) -> StageMessage:
    result = ClipResult(
        actual_start_sec=round(start, 6), actual_end_sec=round(start + duration, 6),
        duration_sec=round(duration, 6), size=clip.size, sha256=clip.sha256,
    )
    artifact = Artifact(stage=TRIM, role="video", key=clip.key, size=clip.size, sha256=clip.sha256)
    return task.forward(artifact=artifact, result=result)
