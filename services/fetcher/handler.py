"""Fetcher: locate the source, probe it, stage only the range the clip needs, and choose the route."""

from __future__ import annotations

import uuid

from shared.contracts import Artifact, ClipJobMessage, MediaPlan, StageMessage
from shared.db import fingerprints
from shared.errors import EndPastDuration, Permanent
from shared.fetchproxy import FetchSession, fetch_session
from shared.fingerprint import request_fingerprint
from shared.media.cut import copy_cut, copyable_to_mp4
from shared.media.probe import MediaInfo, probe
from shared.pipeline import COPY_ROUTE, FETCH
from shared.storage import sha256_file, staging_prefix
from shared.worker import StageDeps, finish_job_done

from .locate import Located, Stager, locate, release_download

DURATION_TOLERANCE_SEC = 0.05  # endSec may exceed the probed duration by this much (container rounding)


async def handle(job: ClipJobMessage, deps: StageDeps) -> StageMessage | None:
    """Probe the source, find the keyframe the copy starts at, stage the needed range, route the job.

    An identical earlier request (same source bytes, range, options) that is still kept finishes this
    job at once with its result: None, nothing more to route. A user's URL is read only through the guarded
    proxy (`shared.fetchproxy`); a refusal there fails the job with the refusal's code.
    """
    async with fetch_session(deps.res.settings) as session:
        with session.errors():
            return await _handle(job, deps, session)


async def _handle(job: ClipJobMessage, deps: StageDeps, session: FetchSession) -> StageMessage | None:
    source = await locate(job, deps, session)
    try:
        return await _plan(job, deps, source)
    finally:
        release_download(deps.res.settings, source.scratch_ticket)


async def _plan(job: ClipJobMessage, deps: StageDeps, source: Located) -> StageMessage | None:
    media, staged, identity = source.media, source.artifact, source.identity
    fingerprint = request_fingerprint(job, identity)
    await fingerprints.record(deps.res.db, uuid.UUID(job.id), fingerprint)
    earlier = await fingerprints.earlier_result(deps.res.db, fingerprint)
    if earlier is not None and await deps.res.storage.head(earlier[1]) is not None:
        await finish_job_done(deps.res, job.id, *earlier)
        return None
    deps.progress.set(0.3)
    info = await probe(media, keyframe_at=job.start_sec, options=source.av_options)
    _check_range(job, info)
    if not copyable_to_mp4(info.streams):
        codecs = ", ".join(sorted({s.codec for s in info.streams}))
        raise Permanent(f"re-encoding is not available yet; codecs {codecs} cannot be copied into MP4",
                        code="reencode_unavailable")
    cut_start = job.start_sec if info.keyframe_before is None else info.keyframe_before
    deps.progress.set(0.6)
    if staged is None:
        staged = await _stage_range(job, media, cut_start, info, deps, source.ffmpeg_args, source.stage)
        offset = cut_start
    else:
        offset = 0.0
    plan = MediaPlan(
        duration_sec=info.duration_sec, container=info.container, streams=source.section_streams or info.streams,
        cut_start_sec=cut_start, staged_offset_sec=offset,
    )
    return StageMessage(job=job, route=list(COPY_ROUTE), done=[FETCH], plan=plan, artifacts=[staged])


def _check_range(job: ClipJobMessage, info: MediaInfo) -> None:
    if job.end_sec > info.duration_sec + DURATION_TOLERANCE_SEC:
        raise EndPastDuration(
            f"endSec {job.end_sec:g} is past the media's duration ({info.duration_sec:.3f} s); "
            f"ask for a range inside it"
        )


async def _stage_range(
    job: ClipJobMessage, media: str, cut_start: float, info: MediaInfo, deps: StageDeps,
    input_args: list[str] | None = None, stager: Stager | None = None,
) -> Artifact:
    """Copy [cut_start, endSec + TAIL_PAD_SEC] into the job's staging prefix; its t=0 is cut_start."""
    end = min(info.duration_sec, job.end_sec + deps.res.settings.tail_pad_sec)
    if stager is not None:
        path = await stager(cut_start, end, deps.scratch)
    else:
        path = deps.scratch / "staged.mp4"
        await copy_cut(media, path, seek_sec=cut_start, duration_sec=end - cut_start,
                       on_progress=lambda p: deps.progress.set(0.6 + 0.3 * p), input_args=input_args or [])
    digest = await sha256_file(path)
    key = f"{staging_prefix(job.id)}source.mp4"
    size = await deps.res.storage.put_file(key, path, "video/mp4", {"sha256": digest})
    return Artifact(stage=FETCH, role="source", key=key, size=size, sha256=digest)
