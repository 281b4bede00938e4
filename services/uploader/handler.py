"""Uploader: promote the clip (and its subtitles) to content-hashed result keys (once per hash), finish the job."""

from __future__ import annotations

import msgspec

from shared.contracts import Artifact, StageMessage
from shared.db.jobs import SubtitleKeys
from shared.errors import Permanent
from shared.storage import Storage, result_key
from shared.worker import StageDeps, finish_job_done

CLIP_FILENAME = "clip.mp4"
# Subtitle files are keyed by their own sha256 (results/sha256/<2>/<hash of the file>/clip.srt): the same clip
# transcribed by another model or in another language is another file, and identical files are stored once.
SUBTITLE_FILES: dict[str, tuple[str, str]] = {
    "srt": ("clip.srt", "application/x-subrip"),
    "vtt": ("clip.vtt", "text/vtt"),
    "words": ("clip.words.json", "application/json"),
}


async def handle(task: StageMessage, deps: StageDeps) -> None:
    """Copy staging → results/sha256/<2>/<hash>/clip.mp4 (and subtitles) unless present; job → done, event once."""
    video, result = task.artifact("video"), task.result
    if video is None or result is None or not video.sha256:
        raise Permanent("the upload stage needs a hashed video artifact and a result", code="invalid_message")
    storage, res = deps.res.storage, deps.res
    if task.subtitles is not None:  # which engine made the subtitles, on the job's result
        result = msgspec.structs.replace(result, subtitles=task.subtitles)
    promoted = [(video, result_key(video.sha256, CLIP_FILENAME), "video/mp4")]
    subtitles = _subtitle_keys(task)
    if subtitles is not None:
        promoted += [
            (task.artifact(role), getattr(subtitles, role), content_type)  # type: ignore[misc]
            for role, (_, content_type) in SUBTITLE_FILES.items()
        ]
    for artifact, key, content_type in promoted:
        await _promote(storage, artifact, key, content_type)
    deps.progress.set(0.9)
    await finish_job_done(res, task.job.id, result, promoted[0][1], subtitles)
    for artifact, key, content_type in promoted:  # the reaper expired an identical result between our check
        await _promote(storage, artifact, key, content_type)  # and done: now that this job is done, it is live


def _subtitle_keys(task: StageMessage) -> SubtitleKeys | None:
    found = {role: task.artifact(role) for role in SUBTITLE_FILES}
    if not task.job.subs.enabled and not any(found.values()):
        return None
    if not all(a is not None and a.sha256 for a in found.values()):
        raise Permanent("subtitles were asked for but the transcriber's outputs are missing", code="invalid_message")
    keys = {role: result_key(a.sha256, SUBTITLE_FILES[role][0]) for role, a in found.items() if a is not None}
    return SubtitleKeys(**keys)


async def _promote(storage: Storage, artifact: Artifact, key: str, content_type: str) -> None:
    if await storage.head(key) is None:
        await storage.copy(artifact.key, key, content_type)
