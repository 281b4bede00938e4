"""Trimmer: cut the clip out of the staged media into an MP4 with +faststart: stream copy or smart cut."""

from __future__ import annotations

from typing import cast

from shared.clipstore import (
    CLIP_NAME,
    PATH_META,
    READ_URL_TTL_SEC,
    START_META,
    clip_key,
    copy_clip,
    forward_clip,
    is_plain_copy,
    source_time_of_zero,
    store_clip,
    stored_clip,
)
from shared.contracts import CutPath, StageMessage
from shared.errors import Permanent
from shared.logs import get_logger
from shared.media.inputs import staged_demuxer
from shared.media.smartcut import cut_frames
from shared.pipeline import TRIM
from shared.worker import StageDeps

CUT_SHARE = 0.9  # of this stage's progress; hashing and storing the clip take the rest

log = get_logger("trimmer")


async def handle(task: StageMessage, deps: StageDeps) -> StageMessage:
    """Cut the clip frame-accurately (copy or smart cut), or by stream copy (keyframe precision, audio only) for a
    message whose fetcher did not cut it itself; reuse the output if it already exists."""
    plan, source = task.plan, task.artifact("source")
    if plan is None or source is None:
        raise Permanent("the trim stage needs the fetcher's plan and staged source", code="invalid_message")
    storage, job = deps.res.storage, task.job
    media = await storage.internal_url(source.key, READ_URL_TTL_SEC)
    path = deps.scratch / CLIP_NAME
    fmt = staged_demuxer(source.key, job.id, plan.container)  # the demuxer the fetcher sniffed or staged in
    if is_plain_copy(plan.cut_reason, plan.streams):  # a message from a fetcher that did not cut it itself
        clip, duration, start = await copy_clip(
            storage, job.id, media, path, start=plan.cut_start_sec, seek=plan.cut_start_sec - plan.staged_offset_sec,
            end=job.end_sec, fmt=fmt, on_progress=lambda p: deps.progress.set(CUT_SHARE * p))
        log.info("clip_cut", cut_path="copy", planned=plan.cut_path, reason=plan.cut_reason, start=round(start, 6),
                 duration=round(duration, 6))
        return forward_clip(task, TRIM, clip, duration, start, "copy")

    key = clip_key(job.id)
    existing = await stored_clip(storage, key)
    if existing is not None:
        clip, duration = existing
        start = float(clip.metadata.get(START_META, plan.cut_start_sec))
        return forward_clip(task, TRIM, clip, duration, start, cast(CutPath, clip.metadata.get(PATH_META, "copy")))
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
