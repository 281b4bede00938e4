"""Fetcher: locate the source, probe it, stage only the range the clip needs, and choose the route (a plain copy,
or a frame-accurate cut of an upload, with nothing to follow it is cut and its job finished here)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from shared.db import fingerprints
from shared.errors import EndPastDuration, Permanent
from shared.jobs.contracts import Artifact, ClipJobMessage, MediaPlan, StageMessage
from shared.jobs.fingerprint import request_fingerprint
from shared.jobs.jobrules import check_clip
from shared.jobs.outputs import VIDEO_ROLE
from shared.jobs.pipeline import (
    COPY_ROUTE,
    CUT_BY_FETCHER_ROUTE,
    FETCH,
    REENCODE_ROUTE,
    UPLOAD,
    installed_stages,
    route_for,
    unavailable,
)
from shared.media.bounds import WorkBounds
from shared.media.cut import STAGING_FORMATS, copy_cut, copyable_to_mp4
from shared.media.cutplan import CutDecision, probe_and_choose
from shared.media.ffmpeg import FfmpegDeadline, RunLimits
from shared.media.inputs import STAGED_DEMUXERS, demuxer
from shared.media.keyframes import CutLayout
from shared.media.probe import MediaInfo, timeline_start
from shared.media.smartcut import PieceEncodeFailed
from shared.net.fetchproxy import FetchSession, fetch_session
from shared.runtime.logs import get_logger
from shared.runtime.worker import StageDeps, finish_job_done
from shared.storage.clipstore import (
    CLIP_NAME,
    clip_result,
    copy_clip,
    copy_result_clip,
    forward_clip,
    frame_clip,
    frame_result_clip,
    is_plain_copy,
    reencode_instead,
)
from shared.storage.results import put_once, settle_result
from shared.storage.s3 import ObjectInfo, sha256_file, staging_prefix

from .batch import batch_source
from .locate import Located, Stager, locate, release_download

DURATION_TOLERANCE_SEC = 0.05  # endSec may exceed the probed duration by this much (container rounding)
PICTURE_OPTIONS = ("reframe", "poster", "thumbnails")  # request options that need the source's picture

log = get_logger("fetcher")


async def handle(job: ClipJobMessage, deps: StageDeps) -> StageMessage | None:
    """Probe the source, choose the cut path, stage the needed range, route the job.

    An identical earlier request (same source bytes, range, options) that is still kept finishes this
    job at once with its result: None, nothing more to route. A user's URL is read only through the guarded
    proxy (`shared.net.fetchproxy`); a refusal there fails the job with the refusal's code. First the request
    rules the gateway applies (`shared.jobs.jobrules`): a job published straight to NATS passes them too.
    """
    check_clip(job, deps.res.settings)
    async with fetch_session(deps.res.settings) as session:
        with session.errors():
            return await _handle(job, deps, session)


async def _handle(job: ClipJobMessage, deps: StageDeps, session: FetchSession) -> StageMessage | None:
    source = await batch_source(job, deps, session) or await locate(job, deps, session)
    try:
        return await _plan(job, deps, source)
    finally:
        release_download(deps.res.settings, source.scratch_ticket)


async def _plan(job: ClipJobMessage, deps: StageDeps, source: Located) -> StageMessage | None:
    media, staged = source.media, source.artifact
    shift, span = source.offset_sec, source.duration_sec is not None  # a batch's staged span: source time - shift
    # the probe reads the source while the request's fingerprint is recorded and looked up (it is dropped when an
    # identical earlier request's result finishes the job)
    probing = asyncio.ensure_future(probe_and_choose(
        media, job.precision, job.start_sec - shift, job.end_sec - shift, staged=staged is None or span,
        options=source.av_options,
        check=lambda found: _check_probed(job, found, source.duration_sec or found.duration_sec),
        decided=_decided_by_request(job, deps),
        bounds=WorkBounds.of(deps.res.settings),
    ))
    try:
        if await _finished_by_earlier(job, deps, source.identity):
            return None
        deps.progress.set(0.3)
        info, decision = await probing
    finally:
        await _settle(probing)
    log.info("cut_path_chosen", cut_path=decision.path, cut_reason=decision.reason)
    # a plain copy is cut here, straight from the source (one copy per clip); a yt-dlp section is staged as before
    cut_here = decision.path == "copy" and is_plain_copy(decision.reason, info.streams) and source.stage is None
    # a frame-accurate cut of media already in storage (an upload, a batch's span) too, on the layout just read
    layout = decision.layout if not cut_here and staged is not None and decision.path != "reencode" else None
    frames_here = layout is not None
    route = route_for(
        REENCODE_ROUTE if decision.path == "reencode" else CUT_BY_FETCHER_ROUTE if cut_here or frames_here
        else COPY_ROUTE, job,
    )
    if missing := unavailable(route, installed_stages(deps.res.settings.installed_stages)):
        codecs = ", ".join(sorted({s.codec for s in info.streams}))
        raise Permanent(f"this clip needs the {', '.join(missing)} stage ({decision.reason}; codecs {codecs}), "
                        f"which this installation does not run", code="stage_unavailable")
    cut_start = job.start_sec if info.keyframe_before is None else info.keyframe_before + shift
    deps.progress.set(0.6)
    if cut_here and route == (UPLOAD,):  # the clip is the result: nothing follows but storing it
        return await _finish_clip(job, cut_start, deps, source, info, decision.reason)
    if cut_here:
        plan = MediaPlan(duration_sec=info.duration_sec, container=info.container, streams=info.streams,
                         cut_start_sec=cut_start, cut_path=decision.path, cut_reason=decision.reason)
        task = StageMessage(job=job, route=[FETCH, *route], plan=plan, artifacts=[staged] if staged else [])
        return await _cut_clip(task, plan, deps, source, info)
    if staged is None:
        container = "mp4" if copyable_to_mp4(info.streams) else "matroska"
        staged, offset = await _stage_range(job, media, cut_start, info, deps, container, source.ffmpeg_args,
                                            source.stage)
    else:
        offset = shift
    plan = MediaPlan(
        duration_sec=source.duration_sec or info.duration_sec, container=info.container,
        streams=source.section_streams or info.streams, cut_start_sec=cut_start, staged_offset_sec=offset,
        cut_path=decision.path, cut_reason=decision.reason,
    )
    if layout is not None:  # nothing was staged: the media in storage is cut in place
        task = StageMessage(job=job, route=[FETCH, *route], plan=plan, artifacts=[staged])
        return await _cut_frames(task, deps, source, info, layout, finish=route == (UPLOAD,))
    return StageMessage(job=job, route=list(route), done=[FETCH], plan=plan, artifacts=[staged])


async def _finished_by_earlier(job: ClipJobMessage, deps: StageDeps, identity: str) -> bool:
    """Record the request's fingerprint; when an identical earlier request's result is still kept, finish this
    job at once with it (True)."""
    fingerprint = request_fingerprint(job, identity)
    await fingerprints.record(deps.res.db, uuid.UUID(job.id), fingerprint)
    earlier = await fingerprints.earlier_result(deps.res.db, fingerprint)
    if earlier is not None and await deps.res.storage.head(earlier[1]) is not None:
        await finish_job_done(deps.res, job.id, *earlier)
        return True
    return False


async def _settle(task: asyncio.Future[Any]) -> None:
    """A task not awaited to its end (the job ended another way, or failed first): cancelled and waited for, its
    outcome dropped (an error of it is not the job's any more). A cancel of the caller still goes through."""
    if not task.done():
        task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved: not logged as never retrieved


async def _cut_clip(
    task: StageMessage, plan: MediaPlan, deps: StageDeps, source: Located, info: MediaInfo
) -> StageMessage:
    """Stream copy the clip straight from the source into the job's clip key and pass it on (the trimmer is
    not in the route): the clip is the only copy made, and nothing is staged for another stage to read."""
    job = task.job
    with _slow_source_fails(bool(source.ffmpeg_args)):
        clip, duration, start = await copy_clip(
            deps.res.storage, job.id, source.media, deps.scratch / CLIP_NAME, start=plan.cut_start_sec,
            seek=plan.cut_start_sec - source.offset_sec, end=job.end_sec, fmt=demuxer(info.container),
            input_args=source.ffmpeg_args,
            on_progress=lambda p: deps.progress.set(0.6 + 0.3 * p), limits=RunLimits.of(deps.res.settings))
    log.info("clip_cut", cut_path="copy", planned=plan.cut_path, reason=plan.cut_reason, start=round(start, 6),
             duration=round(duration, 6))
    return forward_clip(task, FETCH, clip, duration, start, "copy")


async def _finish_clip(
    job: ClipJobMessage, cut_start: float, deps: StageDeps, source: Located, info: MediaInfo, reason: str
) -> None:
    """Stream copy the clip straight from the source to its content-hashed result key and finish the job here:
    the uploader's hop (its pull, claim, server-side copy and done) is skipped when it would only store the clip.

    A redelivery before done cuts again and finds the result stored (same bytes, same key); one after done is
    skipped by the runtime (`begin_stage`). As in the uploader, the stored result is settled once the job's end is
    written (`results.settle_result`): put again when the reaper expired an identical result between the check and
    done, deleted when the job was canceled meanwhile and no done job names it."""
    storage, path = deps.res.storage, deps.scratch / CLIP_NAME
    with _slow_source_fails(bool(source.ffmpeg_args)):
        clip, duration = await copy_result_clip(
            storage, source.media, path, start=cut_start, seek=cut_start - source.offset_sec, end=job.end_sec,
            fmt=demuxer(info.container), input_args=source.ffmpeg_args,
            on_progress=lambda p: deps.progress.set(0.6 + 0.3 * p), limits=RunLimits.of(deps.res.settings))
    log.info("clip_cut", cut_path="copy", planned="copy", reason=reason, finished=True, start=round(cut_start, 6),
             duration=round(duration, 6))
    deps.progress.set(0.95)
    finished = await finish_job_done(deps.res, job.id, clip_result(clip, duration, cut_start), clip.key)
    await _settle_clip(deps, finished, clip)


async def _cut_frames(
    task: StageMessage, deps: StageDeps, source: Located, info: MediaInfo, layout: CutLayout, *, finish: bool
) -> StageMessage | None:
    """Cut the clip frame-accurately (smart cut, or a copy when the start is a keyframe) straight from the media
    in storage, on the layout the probe read: no second layout read, no hop to another stage. `finish` (nothing
    but storing it follows): the clip is stored at its content-hashed result key and the job finished here, as a
    plain copy's is (`_finish_clip`); else it is passed on (the trimmer is not in the route)."""
    job, plan = task.job, task.plan
    assert plan is not None
    audio = any(s.kind == "audio" for s in info.streams)

    def on_progress(share: float) -> None:
        deps.progress.set(0.6 + 0.3 * share)

    try:
        if finish:
            clip, duration, start, cut_path = await frame_result_clip(
                deps.res.storage, source.media, deps.scratch / CLIP_NAME, end=job.end_sec,
                offset=source.offset_sec, audio=audio, scratch=deps.scratch, fmt=demuxer(info.container),
                layout=layout, on_progress=on_progress)
        else:
            clip, duration, start, cut_path = await frame_clip(
                deps.res.storage, job.id, source.media, deps.scratch / CLIP_NAME, start=job.start_sec,
                end=job.end_sec, offset=source.offset_sec, audio=audio, scratch=deps.scratch,
                fmt=demuxer(info.container), layout=layout, on_progress=on_progress)
    except PieceEncodeFailed as failed:  # the encoder refused a head or tail: the whole clip is re-encoded
        return reencode_instead(task, FETCH, failed, installed_stages(deps.res.settings.installed_stages))
    log.info("clip_cut", cut_path=cut_path, planned=plan.cut_path, reason=plan.cut_reason, start=round(start, 6),
             duration=round(duration, 6), finished=finish)
    if not finish:
        return forward_clip(task, FETCH, clip, duration, start, cut_path)
    deps.progress.set(0.95)
    finished = await finish_job_done(deps.res, job.id, clip_result(clip, duration, start, cut_path), clip.key)
    await _settle_clip(deps, finished, clip)
    return None


async def _settle_clip(deps: StageDeps, finished: bool, clip: ObjectInfo) -> None:
    """The clip this fetcher stored at its result key, once the job's end is written (`results.settle_result`)."""
    await settle_result(deps.res.storage, deps.res.db, finished, clip.key, VIDEO_ROLE,
                        partial(put_once, deps.res.storage, deps.scratch / CLIP_NAME, clip.key, "video/mp4",
                                clip.metadata))


@contextmanager
def _slow_source_fails(user_url: bool) -> Iterator[None]:
    """An ffmpeg run past its deadline reading a user's URL fails the job (the origin is too slow); reading our
    own storage or scratch, it stays transient (retried)."""
    try:
        yield
    except FfmpegDeadline as exc:
        if not user_url:
            raise
        raise Permanent(f"the source's server sent the range too slowly ({exc.message}); give a faster URL or "
                        f"upload the file", code="source_too_slow") from exc


def _decided_by_request(job: ClipJobMessage, deps: StageDeps) -> CutDecision | None:
    """The cut path when the request alone decides it (subtitles burned in, a reframe, forced re-encodes); else
    None: the frame layout decides."""
    if job.subs.burn_in:  # drawing subtitles into the picture re-encodes every frame anyway
        return CutDecision("reencode", "subtitles_burn_in")
    if job.reframe is not None:  # so does a new frame (crop or pad), in the same pass as any burn-in
        return CutDecision("reencode", "reframe")
    if deps.res.settings.force_cut_path == "reencode":  # benchmarks: every job through the encoder
        return CutDecision("reencode", "forced")
    return None


def _check_probed(job: ClipJobMessage, info: MediaInfo, duration_sec: float) -> None:
    """The request against the probe's facts, before anything is staged or cut."""
    _check_range(job, duration_sec)
    _check_has_video(job, info)


def _check_has_video(job: ClipJobMessage, info: MediaInfo) -> None:
    """A reframe, poster or thumbnails of a source without video fail the job here, not after a needless
    re-encode (reframe) or at the thumbs stage after the fetch and the cut (poster, thumbnails)."""
    if any(s.kind == "video" for s in info.streams):
        return
    asked = [name for name in PICTURE_OPTIONS if getattr(job, name) is not None]
    if asked:
        raise Permanent(f"{' and '.join(asked)} asked for, but the source has no video stream (audio only): "
                        f"leave {'them' if len(asked) > 1 else 'it'} out", code="no_video", field=asked[0])


def _check_range(job: ClipJobMessage, duration_sec: float) -> None:
    if job.end_sec > duration_sec + DURATION_TOLERANCE_SEC:
        raise EndPastDuration(
            f"endSec {job.end_sec:g} is past the media's duration ({duration_sec:.3f} s); "
            f"ask for a range inside it"
        )


async def _stage_range(
    job: ClipJobMessage, media: str, cut_start: float, info: MediaInfo, deps: StageDeps, container: str,
    input_args: list[str] | None = None, stager: Stager | None = None,
) -> tuple[Artifact, float]:
    """Copy [cut_start, endSec + TAIL_PAD_SEC] into the job's staging prefix; and the source time of its t=0
    (cut_start; a Matroska copy keeps the source's times and starts where its first packet is).

    Codecs MP4 does not take are staged in Matroska (the encoder re-encodes them). A yt-dlp section (`stager`)
    is written by yt-dlp itself, from cut_start."""
    end = min(info.duration_sec, job.end_sec + deps.res.settings.tail_pad_sec)
    if stager is not None:
        path, container = await stager(cut_start, end, deps.scratch), "mp4"
    else:
        path = deps.scratch / f"staged.{STAGING_FORMATS[container]}"
        with _slow_source_fails(bool(input_args)):
            await copy_cut(media, path, seek_sec=cut_start, duration_sec=end - cut_start,
                           on_progress=lambda p: deps.progress.set(0.6 + 0.3 * p), container=container,
                           input_args=input_args or [], fmt=demuxer(info.container),
                           limits=RunLimits.of(deps.res.settings))
    ext = STAGING_FORMATS[container]
    digest = await sha256_file(path)
    key = f"{staging_prefix(job.id)}source.{ext}"
    size = await deps.res.storage.put_file(key, path, f"video/{ext}", {"sha256": digest})
    offset = cut_start if container == "mp4" else await timeline_start(str(path), STAGED_DEMUXERS[f".{ext}"])
    return Artifact(stage=FETCH, role="source", key=key, size=size, sha256=digest), offset
