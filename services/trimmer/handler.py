"""Trimmer: cut the clip out of the staged media into an MP4 with +faststart: stream copy or smart cut."""

from __future__ import annotations

from typing import cast

from shared.clipstore import (
    PATH_META,
    READ_URL_TTL_SEC,
    START_META,
    forward_clip,
    source_time_of_zero,
    store_clip,
    stored_clip,
)
from shared.contracts import CutPath, StageMessage
from shared.errors import Permanent
from shared.logs import get_logger
from shared.media.cut import copy_cut
from shared.media.inputs import staged_demuxer
from shared.media.smartcut import cut_frames
from shared.pipeline import TRIM
from shared.storage import staging_prefix
from shared.worker import StageDeps

CUT_SHARE = 0.9  # of this stage's progress; hashing and storing the clip take the rest

log = get_logger("trimmer")


async def handle(task: StageMessage, deps: StageDeps) -> StageMessage:
    """Cut the clip by stream copy (keyframe precision, audio only) or frame-accurately (copy or smart cut);
    reuse the output if it already exists."""
    plan, source = task.plan, task.artifact("source")
    if plan is None or source is None:
        raise Permanent("the trim stage needs the fetcher's plan and staged source", code="invalid_message")
    storage = deps.res.storage
    key = f"{staging_prefix(task.job.id)}clip.mp4"
    existing = await stored_clip(storage, key)
    if existing is not None:
        clip, duration = existing
        start = float(clip.metadata.get(START_META, plan.cut_start_sec))
        return forward_clip(task, TRIM, clip, duration, start, cast(CutPath, clip.metadata.get(PATH_META, "copy")))

    media = await storage.internal_url(source.key, READ_URL_TTL_SEC)
    path = deps.scratch / "clip.mp4"
    job = task.job
    fmt = staged_demuxer(source.key, job.id, plan.container)  # the demuxer the fetcher sniffed or staged in
    cut_path: CutPath
    if plan.cut_reason in ("keyframe_precision", "audio_only") or not any(s.kind == "video" for s in plan.streams):
        start, cut_path = plan.cut_start_sec, "copy"
        await copy_cut(media, path, seek_sec=start - plan.staged_offset_sec, duration_sec=job.end_sec - start,
                       on_progress=lambda p: deps.progress.set(CUT_SHARE * p), fmt=fmt)
    else:
        offset = await source_time_of_zero(media, plan, source, job.id)
        has_audio = any(s.kind == "audio" for s in plan.streams)
        outcome = await cut_frames(media, path, start=job.start_sec - offset, end=job.end_sec - offset,
                                   audio=has_audio, scratch=deps.scratch,
                                   on_progress=lambda p: deps.progress.set(CUT_SHARE * p), fmt=fmt)
        start, cut_path = offset + outcome.first_frame, outcome.path
    clip, duration = await store_clip(storage, key, path, covers_sec=job.end_sec - start,
                                      extra={START_META: f"{start:.6f}", PATH_META: cut_path})
    log.info("clip_cut", cut_path=cut_path, planned=plan.cut_path, reason=plan.cut_reason, start=round(start, 6),
             duration=round(duration, 6))
    return forward_clip(task, TRIM, clip, duration, start, cut_path)
