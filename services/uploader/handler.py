"""Uploader: promote the clip to its content-hashed result key (once per hash) and finish the job."""

from __future__ import annotations

import uuid

import msgspec

from shared.contracts import JobEvent, StageMessage
from shared.db import jobs
from shared.errors import Permanent
from shared.storage import result_key
from shared.worker import StageDeps

CLIP_FILENAME = "clip.mp4"
_encoder = msgspec.json.Encoder()


async def handle(task: StageMessage, deps: StageDeps) -> None:
    """Copy staging → results/sha256/<2>/<hash>/clip.mp4 unless that hash exists; job → done, event once."""
    video, result = task.artifact("video"), task.result
    if video is None or result is None or not video.sha256:
        raise Permanent("the upload stage needs a hashed video artifact and a result", code="invalid_message")
    storage, res = deps.res.storage, deps.res
    key = result_key(video.sha256, CLIP_FILENAME)
    if await storage.head(key) is None:
        await storage.copy(video.key, key, "video/mp4")
    deps.progress.set(0.9)
    if await jobs.complete(res.db, uuid.UUID(task.job.id), result, key, res.settings.retention_hours * 3600):
        event = JobEvent(job_id=task.job.id, status="done", result=result)
        await res.nc.publish(res.subjects.events(task.job.id), _encoder.encode(event))
