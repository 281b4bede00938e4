"""Trimmer: cut the clip out of the staged media into an MP4 with +faststart, by the path the fetcher chose."""

from __future__ import annotations

import asyncio

from shared.contracts import Artifact, ClipResult, CutPath, StageMessage
from shared.errors import Permanent
from shared.logs import get_logger
from shared.media.cut import copy_cut
from shared.media.mp4 import mp4_duration
from shared.media.probe import probe
from shared.media.smartcut import cut_frames
from shared.pipeline import TRIM
from shared.storage import ObjectInfo, sha256_file, staging_prefix
from shared.worker import StageDeps

READ_URL_TTL_SEC = 3600  # lifetime of the signed URL ffmpeg reads the staged media through, s
CUT_SHARE = 0.9  # of this stage's progress; hashing and storing the clip take the rest

log = get_logger("trimmer")


async def handle(task: StageMessage, deps: StageDeps) -> StageMessage:
    """Cut the clip by stream copy (keyframe precision, audio only) or frame-accurately (copy or smart cut);
    reuse the output if it already exists."""
    plan, source = task.plan, task.artifact("source")
    if plan is None or source is None:
        raise Permanent("the trim stage needs the fetcher's plan and staged source", code="invalid_message")
    key = f"{staging_prefix(task.job.id)}clip.mp4"
    existing = await deps.res.storage.head(key)
    if existing is not None and existing.sha256 and "duration" in existing.metadata:
        meta = existing.metadata
        start = float(meta.get("start", plan.cut_start_sec))
        return _forward(task, existing, float(meta["duration"]), start, meta.get("path", "copy"))  # type: ignore[arg-type]

    storage = deps.res.storage
    media = await storage.internal_url(source.key, READ_URL_TTL_SEC)
    path = deps.scratch / "clip.mp4"
    job, offset = task.job, plan.staged_offset_sec
    if plan.cut_reason in ("keyframe_precision", "audio_only") or not any(s.kind == "video" for s in plan.streams):
        start, cut_path = plan.cut_start_sec, "copy"
        await copy_cut(media, path, seek_sec=start - offset, duration_sec=job.end_sec - start,
                       on_progress=lambda p: deps.progress.set(CUT_SHARE * p))
    else:
        if source.key.startswith(staging_prefix(job.id)):  # staged from cut_start: its first keyframe is that time
            offset -= (await probe(media, keyframe_at=0.0)).keyframe_before or 0.0
        has_audio = any(s.kind == "audio" for s in plan.streams)
        outcome = await cut_frames(media, path, start=job.start_sec - offset, end=job.end_sec - offset,
                                   audio=has_audio, scratch=deps.scratch,
                                   on_progress=lambda p: deps.progress.set(CUT_SHARE * p))
        start, cut_path = offset + outcome.first_frame, outcome.path
    duration = await asyncio.to_thread(mp4_duration, path)
    digest = await sha256_file(path)
    metadata = {"sha256": digest, "duration": f"{duration:.6f}", "start": f"{start:.6f}", "path": cut_path}
    size = await storage.put_file(key, path, "video/mp4", metadata)
    log.info("clip_cut", cut_path=cut_path, planned=plan.cut_path, reason=plan.cut_reason, start=round(start, 6),
             duration=round(duration, 6))
    return _forward(task, ObjectInfo(key, size, metadata), duration, start, cut_path)


def _forward(task: StageMessage, clip: ObjectInfo, duration: float, start: float, cut_path: CutPath) -> StageMessage:
    result = ClipResult(
        actual_start_sec=round(start, 6), actual_end_sec=round(start + duration, 6),
        duration_sec=round(duration, 6), size=clip.size, sha256=clip.sha256, cut_path=cut_path,
    )
    artifact = Artifact(stage=TRIM, role="video", key=clip.key, size=clip.size, sha256=clip.sha256)
    return task.forward(artifact=artifact, result=result)
