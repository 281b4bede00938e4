"""Uploader: promote the clip to its content-hashed result key (once per hash) and finish the job."""

from __future__ import annotations

from shared.contracts import StageMessage
from shared.errors import Permanent
from shared.storage import result_key
from shared.worker import StageDeps, finish_job_done

CLIP_FILENAME = "clip.mp4"


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
    await finish_job_done(res, task.job.id, result, key)
    if await storage.head(key) is None:  # the reaper expired an identical clip between our check and done:
        await storage.copy(video.key, key, "video/mp4")  # now that this job is done, the key is live again
