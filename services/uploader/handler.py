"""Uploader: promote the clip and every result file beside it to content-hashed result keys (once per hash),
finish the job."""

from __future__ import annotations

from functools import partial

import msgspec

from shared.errors import Permanent
from shared.jobs.contracts import Artifact, StageMessage
from shared.jobs.outputs import VIDEO_ROLE, result_artifacts
from shared.runtime.worker import StageDeps, finish_job_done
from shared.storage.results import CLIP_FILENAME, promote, settle_result
from shared.storage.s3 import result_key
from shared.subtitles.outputs import SUBTITLE_OUTPUTS

# Result files are keyed by their own sha256 (results/sha256/<2>/<hash of the file>/clip.srt): the same clip
# transcribed by another model or in another language is another file, and identical files are stored once.
# A transcriber older than result files' names (a message in flight across an upgrade) sent these roles bare:
_UNNAMED = {output.role: output for output in SUBTITLE_OUTPUTS}


async def handle(task: StageMessage, deps: StageDeps) -> None:
    """Copy staging → results/sha256/<2>/<hash>/clip.mp4 (and each result file) unless present; job → done,
    event once."""
    video, result = task.artifact(VIDEO_ROLE), task.result
    if video is None or result is None or not video.sha256:
        raise Permanent("the upload stage needs a hashed video artifact and a result", code="invalid_message")
    storage, res = deps.res.storage, deps.res
    if task.subtitles is not None:  # which engine made the subtitles, on the job's result
        result = msgspec.structs.replace(result, subtitles=task.subtitles)
    promoted = [(video, result_key(video.sha256, CLIP_FILENAME), "video/mp4")]
    for artifact in _result_files(task):
        if not artifact.sha256:
            raise Permanent(f"the {artifact.role} file from {artifact.stage} has no hash", code="invalid_message")
        promoted.append((artifact, result_key(artifact.sha256, artifact.filename), artifact.content_type))
    for artifact, key, content_type in promoted:
        await promote(storage, artifact.key, key, content_type)
    deps.progress.set(0.9)
    files = {artifact.role: key for artifact, key, _ in promoted[1:]}
    finished = await finish_job_done(res, task.job.id, result, promoted[0][1], files)
    for artifact, key, content_type in promoted:
        await settle_result(storage, res.db, finished, key, artifact.role,
                            partial(promote, storage, artifact.key, key, content_type))


def _result_files(task: StageMessage) -> list[Artifact]:
    named = [
        msgspec.structs.replace(a, filename=_UNNAMED[a.role].filename, content_type=_UNNAMED[a.role].content_type)
        for a in task.artifacts if not a.filename and a.role in _UNNAMED
    ]
    return result_artifacts(msgspec.structs.replace(task, artifacts=[*named, *task.artifacts]))

