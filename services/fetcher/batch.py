"""A batch's URL source is read from its origin once, for every job of the batch.

Each job of a batch (POST /api/jobs with `clips`) is still a message of its own, so redelivery, cancel, the
reaper's republish and the end events work per job as for any other. The first of the batch's jobs to reach
the fetcher takes the batch's staging turn (a PostgreSQL session advisory lock: a killed fetcher's turn ends
with its connection) and stages the union of the batch's clip ranges: the clips are merged into spans
(BATCH_MERGE_GAP_SEC), each span copied once from the keyframe before its start into object storage, and the
result recorded on the batch row. The other jobs wait for that record (within BATCH_STAGE_WAIT_SEC) and read
their span from storage, exactly as an upload is read: their own probe, cut plan and route, in source time
(`Located.offset_sec`: the source time of the span's t=0, measured on the staged copy, so every later stage
reads it as it reads an upload, without the correction `shared.storage.clipstore` makes for a job's own range). A
permanent error while staging is recorded too: the batch's other jobs fail with it without reading the origin
again. A job canceled while it stages simply ends its turn; the next job stages.

Uploads are not staged here (the upload check already copies them once for every job naming them), nor yt-dlp
pages (each job downloads its own section); a job whose batch is not its own (published straight to NATS) is
fetched on its own.
"""

from __future__ import annotations

import asyncio
import uuid

import msgspec

from shared.db import batches
from shared.db.batches import StagedSource, StagedSpan
from shared.errors import Permanent, Transient
from shared.jobs.contracts import Artifact, ClipJobMessage, UrlSource
from shared.jobs.pipeline import FETCH
from shared.media.bounds import WorkBounds, check_source
from shared.media.cut import copyable_to_mp4
from shared.media.inputs import STAGED_DEMUXERS
from shared.media.probe import probe
from shared.net.fetchproxy import FetchSession
from shared.runtime.logs import get_logger
from shared.runtime.worker import StageDeps

from .locate import PROBE_URL_TTL_SEC, Located, locate, release_download

log = get_logger("fetcher")


def merge_ranges(clips: list[tuple[float, float]], gap_sec: float) -> list[tuple[float, float]]:
    """The clips' ranges merged where they overlap or lie less than `gap_sec` apart, in source order."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(clips):
        if merged and start - merged[-1][1] < gap_sec:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


async def batch_source(job: ClipJobMessage, deps: StageDeps, session: FetchSession) -> Located | None:
    """Where this job reads its batch's staged source (staging it first when no job has); None: the job is
    fetched on its own (not in a batch, not a URL source, or a range the staged spans do not hold)."""
    if job.batch_id is None or not isinstance(job.source, UrlSource):
        return None
    batch = await batches.get(deps.res.db, uuid.UUID(job.batch_id))
    if batch is None or batch.owner != job.owner or uuid.UUID(job.id) not in batch.job_ids \
            or batch.source != msgspec.to_builtins(job.source):
        log.warning("batch_not_own", batch_id=job.batch_id)  # published straight to NATS naming another batch
        return None
    staged = batch.staged or await _wait_or_stage(batch, job, deps, session)
    span = staged.span_for(job.start_sec, job.end_sec)
    if span is None:  # e.g. past the source's end: fetched alone, which says why
        return None
    if await deps.res.storage.head(span.key) is None:
        raise Permanent(f"the batch's staged source {span.key} is gone (its other jobs have ended long ago); "
                        f"submit the clip again", code="batch_source_gone")
    url = await deps.res.storage.internal_url(span.key, PROBE_URL_TTL_SEC)
    artifact = Artifact(stage=FETCH, role="source", key=span.key, size=span.size, sha256=span.sha256)
    return Located(url, staged.identity, artifact, offset_sec=span.offset_sec, duration_sec=staged.duration_sec)


async def _wait_or_stage(
    batch: batches.Batch, job: ClipJobMessage, deps: StageDeps, session: FetchSession
) -> StagedSource:
    settings = deps.res.settings
    try:
        async with asyncio.timeout(settings.batch_stage_wait_sec), \
                batches.staging_turn(deps.res.db, batch.id, settings.batch_lock_poll_sec):
            fresh = await batches.get(deps.res.db, batch.id)
            assert fresh is not None  # batches are never deleted
            if fresh.staged is not None:
                return fresh.staged
            if fresh.stage_error is not None:
                raise Permanent(fresh.stage_error.message, code=fresh.stage_error.code)
            return await _stage(fresh, job, deps, session)
    except TimeoutError as exc:
        raise Transient(f"another job of batch {batch.id} is still staging its source; retried later",
                        code="batch_staging_slow") from exc


async def _stage(batch: batches.Batch, job: ClipJobMessage, deps: StageDeps, session: FetchSession) -> StagedSource:
    """Read the source once and stage every span of the batch's clips; recorded on the batch row."""
    from .handler import _stage_range  # the fetcher's own range staging (handler imports this module)

    settings = deps.res.settings
    located: Located | None = None
    try:
        located = await locate(job, deps, session)
        spans: list[StagedSpan] = []
        duration = 0.0
        for index, (start, end) in enumerate(merge_ranges(batch.clips, settings.batch_merge_gap_sec)):
            info = await probe(located.media, keyframe_at=start, options=located.av_options)
            check_source(info, WorkBounds.of(settings))
            duration = info.duration_sec
            if start >= duration:  # these clips are past the end: each job fails on its own range check
                continue
            cut = start if info.keyframe_before is None else info.keyframe_before
            container = "mp4" if copyable_to_mp4(info.streams) else "matroska"
            span_job = msgspec.structs.replace(job, id=str(uuid.uuid5(batch.id, f"span{index}")), end_sec=end)
            artifact, offset = await _stage_range(span_job, located.media, cut, info, deps, container,
                                                  located.ffmpeg_args)
            if container == "mp4":  # where the copy put the keyframe's timestamp (B-frame delay): as clipstore does
                staged_url = await deps.res.storage.internal_url(artifact.key, PROBE_URL_TTL_SEC)
                first = await probe(staged_url, keyframe_at=0.0, fmt=STAGED_DEMUXERS[".mp4"])
                offset -= first.keyframe_before or 0.0
            spans.append(StagedSpan(cut_start_sec=cut, end_sec=min(end, duration), offset_sec=offset,
                                    key=artifact.key, size=artifact.size, sha256=artifact.sha256))
        staged = StagedSource(identity=located.identity, duration_sec=duration, spans=spans)
    except Permanent as exc:
        await batches.set_stage_error(deps.res.db, batch.id, exc.code, exc.message)
        raise
    finally:
        if located is not None:
            release_download(settings, located.scratch_ticket)
    await batches.set_staged(deps.res.db, batch.id, staged)
    log.info("batch_staged", batch_id=str(batch.id), spans=len(spans), bytes=sum(s.size for s in spans))
    return staged
