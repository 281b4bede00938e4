"""Fetcher: locate the source, probe it, stage only the range the clip needs, and choose the route."""

from __future__ import annotations

import uuid

from shared.contracts import (
    Artifact,
    ClipJobMessage,
    MediaPlan,
    StageMessage,
    UploadSource,
    UrlSource,
    YoutubeSource,
)
from shared.db import fingerprints
from shared.errors import EndPastDuration, Permanent, SourceUnreadable
from shared.fetch import fetch_to_file
from shared.fingerprint import request_fingerprint
from shared.logs import get_logger
from shared.media.cut import STAGING_FORMATS, copy_cut, copyable_to_mp4
from shared.media.cutplan import CutDecision, choose_cut
from shared.media.probe import MediaInfo, probe, timeline_start
from shared.pipeline import COPY_ROUTE, FETCH, REENCODE_ROUTE, unavailable, with_subtitles
from shared.storage import sha256_file, staging_prefix
from shared.worker import StageDeps, finish_job_done

DURATION_TOLERANCE_SEC = 0.05  # endSec may exceed the probed duration by this much (container rounding)
PROBE_URL_TTL_SEC = 3600  # lifetime of the signed URL the probe and ffmpeg read an upload through, s

log = get_logger("fetcher")


async def handle(job: ClipJobMessage, deps: StageDeps) -> StageMessage | None:
    """Probe the source, find the keyframe the copy starts at, stage the needed range, route the job.

    An identical earlier request (same source bytes, range, options) that is still kept finishes this
    job at once with its result: None, nothing more to route.
    """
    media, staged, identity = await _locate(job, deps)
    fingerprint = request_fingerprint(job, identity)
    await fingerprints.record(deps.res.db, uuid.UUID(job.id), fingerprint)
    earlier = await fingerprints.earlier_result(deps.res.db, fingerprint)
    if earlier is not None and await deps.res.storage.head(earlier[1]) is not None:
        await finish_job_done(deps.res, job.id, *earlier)
        return None
    deps.progress.set(0.3)
    info = await probe(media, keyframe_at=job.start_sec)
    _check_range(job, info)
    if job.subs.burn_in:  # drawing subtitles into the picture re-encodes every frame anyway
        decision = CutDecision("reencode", "subtitles_burn_in")
    elif deps.res.settings.force_cut_path == "reencode":  # benchmarks: every job through the encoder
        decision = CutDecision("reencode", "forced")
    else:
        decision = await choose_cut(media, info.streams, job.precision, job.start_sec, job.end_sec,
                                    staged=staged is None)
    log.info("cut_path_chosen", cut_path=decision.path, cut_reason=decision.reason)
    route = with_subtitles(REENCODE_ROUTE if decision.path == "reencode" else COPY_ROUTE,
                           job.subs.enabled, job.subs.burn_in)
    if missing := unavailable(route):
        codecs = ", ".join(sorted({s.codec for s in info.streams}))
        raise Permanent(f"this clip needs the {', '.join(missing)} stage ({decision.reason}; codecs {codecs}), "
                        f"which this installation does not run", code="stage_unavailable")
    cut_start = job.start_sec if info.keyframe_before is None else info.keyframe_before
    deps.progress.set(0.6)
    if staged is None:
        container = "mp4" if copyable_to_mp4(info.streams) else "matroska"
        staged, offset = await _stage_range(job, media, cut_start, info, deps, container)
    else:
        offset = 0.0
    plan = MediaPlan(
        duration_sec=info.duration_sec, container=info.container, streams=info.streams,
        cut_start_sec=cut_start, staged_offset_sec=offset, cut_path=decision.path, cut_reason=decision.reason,
    )
    return StageMessage(job=job, route=list(route), done=[FETCH], plan=plan, artifacts=[staged])


async def _locate(job: ClipJobMessage, deps: StageDeps) -> tuple[str, Artifact | None, str]:
    """Where the probe and ffmpeg read the source, the artifact when it already sits in storage, and
    the source's identity for the request fingerprint (its bytes, not its name)."""
    storage = deps.res.storage
    match job.source:
        case UploadSource(key=key):
            found = await storage.head(key)
            if found is None:
                raise SourceUnreadable(f"no upload at key {key!r}; upload the file first", code="upload_not_found")
            artifact = Artifact(stage=FETCH, role="source", key=key, size=found.size, sha256=found.sha256)
            identity = f"upload:etag={found.etag}:size={found.size}"
            return await storage.internal_url(key, PROBE_URL_TTL_SEC), artifact, identity
        case UrlSource(url=url):
            path = deps.scratch / "download"
            fetched = await fetch_to_file(url, path, deps.res.settings)
            if fetched.validator:
                identity = f"url:{fetched.url}:validator={fetched.validator}:size={fetched.size}"
            else:
                identity = f"sha256:{await sha256_file(path)}"
            return str(path), None, identity
        case YoutubeSource():
            raise Permanent("YouTube sources are not available yet; upload the file or give its URL",
                            code="source_type_unavailable")


def _check_range(job: ClipJobMessage, info: MediaInfo) -> None:
    if job.end_sec > info.duration_sec + DURATION_TOLERANCE_SEC:
        raise EndPastDuration(
            f"endSec {job.end_sec:g} is past the media's duration ({info.duration_sec:.3f} s); "
            f"ask for a range inside it"
        )


async def _stage_range(
    job: ClipJobMessage, media: str, cut_start: float, info: MediaInfo, deps: StageDeps, container: str
) -> tuple[Artifact, float]:
    """Copy [cut_start, endSec + TAIL_PAD_SEC] into the job's staging prefix; and the source time of its t=0
    (cut_start; a Matroska copy keeps the source's times and starts where its first packet is).

    Codecs MP4 does not take are staged in Matroska (the encoder re-encodes them)."""
    end = min(info.duration_sec, job.end_sec + deps.res.settings.tail_pad_sec)
    ext = STAGING_FORMATS[container]
    path = deps.scratch / f"staged.{ext}"
    await copy_cut(media, path, seek_sec=cut_start, duration_sec=end - cut_start,
                   on_progress=lambda p: deps.progress.set(0.6 + 0.3 * p), container=container)
    digest = await sha256_file(path)
    key = f"{staging_prefix(job.id)}source.{ext}"
    size = await deps.res.storage.put_file(key, path, f"video/{ext}", {"sha256": digest})
    offset = cut_start if container == "mp4" else await timeline_start(str(path))
    return Artifact(stage=FETCH, role="source", key=key, size=size, sha256=digest), offset
