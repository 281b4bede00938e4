"""Trimmer: cut the clip out of the staged media into an MP4 with +faststart: stream copy or smart cut.

Jobs whose source sits in storage already (uploads, a batch's staged span) are cut by the fetcher, on the layout it
probed; the trimmer cuts the ranges the fetcher staged from a URL or a page, and messages of older fetchers."""

from __future__ import annotations

from shared.errors import Permanent
from shared.jobs.contracts import StageMessage
from shared.jobs.pipeline import TRIM, installed_stages
from shared.media.inputs import staged_demuxer
from shared.media.smartcut import PieceEncodeFailed
from shared.runtime.logs import get_logger
from shared.runtime.worker import StageDeps
from shared.storage.clipstore import (
    CLIP_NAME,
    READ_URL_TTL_SEC,
    copy_clip,
    forward_clip,
    frame_clip,
    is_plain_copy,
    reencode_instead,
    source_time_of_zero,
)

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

    offset = await source_time_of_zero(media, plan, source, job.id)
    try:
        clip, duration, start, cut_path = await frame_clip(
            storage, job.id, media, path, start=job.start_sec, end=job.end_sec, offset=offset,
            audio=any(s.kind == "audio" for s in plan.streams), scratch=deps.scratch, fmt=fmt,
            on_progress=lambda p: deps.progress.set(CUT_SHARE * p))
    except PieceEncodeFailed as failed:  # the encoder refused a head or tail: the whole clip is re-encoded
        return reencode_instead(task, TRIM, failed, installed_stages(deps.res.settings.installed_stages))
    log.info("clip_cut", cut_path=cut_path, planned=plan.cut_path, reason=plan.cut_reason, start=round(start, 6),
             duration=round(duration, 6))
    return forward_clip(task, TRIM, clip, duration, start, cut_path)
