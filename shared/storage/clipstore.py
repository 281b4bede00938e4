"""The clip a cutting stage (fetcher, trimmer, encoder) made: stored once in the job's staging prefix, then forwarded
(or, a clip with nothing to follow, stored at its result key at once: `copy_result_clip`, `frame_result_clip`).

Both stages store the same way and forward the same `video` artifact and `ClipResult`, so a redelivered
message whose clip is already stored short-circuits to the same message.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import msgspec

from shared.errors import Permanent, Transient
from shared.jobs.contracts import Artifact, ClipResult, CutPath, MediaPlan, StageMessage, StreamFacts
from shared.jobs.pipeline import REENCODE_ROUTE, route_for, unavailable
from shared.media.cut import copy_cut
from shared.media.ffmpeg import RunLimits
from shared.media.inputs import STAGED_DEMUXERS
from shared.media.keyframes import CutLayout
from shared.media.mp4 import mp4_duration
from shared.media.probe import probe
from shared.media.smartcut import PIECE_ENCODE_FAILED, PieceEncodeFailed, cut_frames, frame_cut
from shared.runtime.logs import get_logger
from shared.storage.results import CLIP_FILENAME, put_once
from shared.storage.s3 import ObjectInfo, Storage, result_key, sha256_file, staging_prefix

READ_URL_TTL_SEC = 3600  # lifetime of the signed URL ffmpeg reads the staged media through, s
DURATION_META = "duration"  # object metadata: the clip's duration in seconds
SHORT_CLIP_TOLERANCE_SEC = 0.15  # a clip may end this much before endSec (frame and audio-packet rounding)
LONG_CLIP_TOLERANCE_SEC = 1.0  # a clip may end this much after endSec (a copy's last frames and audio packets)
START_META = "start"  # object metadata: the clip's first frame in source seconds
PATH_META = "path"  # object metadata: the cut path that made the clip
WRITE_META = "write"  # object metadata: a random id of the write that stored the clip (a rewrite changes it)
PLAIN_COPY_REASONS = frozenset({"keyframe_precision", "audio_only"})  # cut reasons whose clip is one stream copy
CLIP_NAME = "clip.mp4"  # the clip's name in the job's staging prefix and in a stage's scratch folder

log = get_logger("clipstore")


def clip_key(job_id: str) -> str:
    """Where a cutting stage (fetcher, trimmer, encoder) stores the job's clip: one key per job, whichever cut it."""
    return f"{staging_prefix(job_id)}{CLIP_NAME}"


def is_plain_copy(cut_reason: str, streams: list[StreamFacts]) -> bool:
    """Whether the clip is one stream copy from the keyframe at or before startSec to endSec, with no head or tail
    work (keyframe precision, audio only, no video): the stage that can read the source cuts it right away."""
    return cut_reason in PLAIN_COPY_REASONS or not any(s.kind == "video" for s in streams)


async def copy_clip(
    storage: Storage, job_id: str, media: str, path: Path, *, start: float, seek: float, end: float, fmt: str,
    input_args: Sequence[str] = (), on_progress: Callable[[float], None] | None = None,
    limits: RunLimits | None = None,
) -> tuple[ObjectInfo, float, float]:
    """The plain-copy clip of `job_id` stored at `clip_key`, its duration and its first frame in source seconds.

    `media` is stream copied from `seek` (its own time of the keyframe at `start`, in source seconds) to `end`
    into `path` and stored with its start and cut path as metadata; a clip an earlier delivery stored there is
    reused as it is (with the start it recorded)."""
    key = clip_key(job_id)
    existing = await stored_clip(storage, key)
    if existing is not None:
        clip, duration = existing
        return clip, duration, float(clip.metadata.get(START_META, start))
    await copy_cut(media, path, seek_sec=seek, duration_sec=end - start, on_progress=on_progress, fmt=fmt,
                   input_args=input_args, limits=limits)
    clip, duration = await store_clip(storage, key, path, covers_sec=end - start,
                                      extra={START_META: f"{start:.6f}", PATH_META: "copy"})
    return clip, duration, start


async def frame_clip(
    storage: Storage, job_id: str, media: str, path: Path, *, start: float, end: float, offset: float,
    audio: bool, scratch: Path, fmt: str, layout: CutLayout | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> tuple[ObjectInfo, float, float, CutPath]:
    """The frame-accurate clip of `job_id` stored at `clip_key`, its duration, its first frame in source seconds
    and its cut path ("copy" or "smart").

    [start, end) (source seconds) of `media` (whose t=0 is source time `offset`, read with the demuxer `fmt`)
    is cut into `path` (`shared.media.smartcut`) with `layout` when the caller read it already on the same
    media (the fetcher's probe), else with the layout read now; a clip an earlier delivery stored is reused."""
    key = clip_key(job_id)
    existing = await stored_clip(storage, key)
    if existing is not None:
        clip, duration = existing
        return (clip, duration, float(clip.metadata.get(START_META, start)),
                cast(CutPath, clip.metadata.get(PATH_META, "copy")))
    if layout is None:
        outcome = await cut_frames(media, path, start=start - offset, end=end - offset, audio=audio, scratch=scratch,
                                   on_progress=on_progress, fmt=fmt)
    else:
        outcome = await frame_cut(media, path, layout, audio=audio, scratch=scratch, on_progress=on_progress, fmt=fmt)
    first = offset + outcome.first_frame
    clip, duration = await store_clip(storage, key, path, covers_sec=end - first,
                                      extra={START_META: f"{first:.6f}", PATH_META: outcome.path})
    return clip, duration, first, outcome.path


async def frame_result_clip(
    storage: Storage, media: str, path: Path, *, end: float, offset: float, audio: bool, scratch: Path, fmt: str,
    layout: CutLayout, on_progress: Callable[[float], None] | None = None,
) -> tuple[ObjectInfo, float, float, CutPath]:
    """The frame-accurate clip stored straight at its content-hashed result key (`results.put_once`: not written
    again when an identical clip is there), its duration, its first frame in source seconds and its cut path: for
    a job whose cut is its last step.

    Cut as `frame_clip` cuts with a layout the caller read (`layout`, on `media`, whose t=0 is source time
    `offset`); nothing goes to the job's staging prefix."""
    outcome = await frame_cut(media, path, layout, audio=audio, scratch=scratch, on_progress=on_progress, fmt=fmt)
    first = offset + outcome.first_frame
    metadata, duration = await checked_clip(path, covers_sec=end - first,
                                            extra={START_META: f"{first:.6f}", PATH_META: outcome.path})
    return await _put_result(storage, path, metadata), duration, first, outcome.path


async def _put_result(storage: Storage, path: Path, metadata: dict[str, str]) -> ObjectInfo:
    """The checked clip at `path` put at its content-hashed result key, unless an identical clip is there."""
    key = result_key(metadata["sha256"], CLIP_FILENAME)
    await put_once(storage, path, key, "video/mp4", metadata)
    size = (await asyncio.to_thread(path.stat)).st_size
    return ObjectInfo(key, size, metadata)


async def source_time_of_zero(media: str, plan: MediaPlan, source: Artifact, job_id: str) -> float:
    """The source time of t=0 in the media a cutting stage reads (`media`: the `source` artifact's URL).

    An MP4 range the fetcher staged from `plan.cut_start_sec` starts with that keyframe, wherever the copy put
    its timestamp (B-frame delay can move it off 0): read it there. Matroska staging and uploads read in place
    keep the offset the plan gives."""
    offset = plan.staged_offset_sec
    if source.key.startswith(staging_prefix(job_id)) and source.key.endswith(".mp4"):
        offset -= (await probe(media, keyframe_at=0.0, fmt=STAGED_DEMUXERS[".mp4"])).keyframe_before or 0.0
    return offset


async def stored_clip(storage: Storage, key: str) -> tuple[ObjectInfo, float] | None:
    """The clip already stored at `key` by an earlier delivery, with its duration; None when there is none."""
    existing = await storage.head(key)
    if existing is None or not existing.sha256 or DURATION_META not in existing.metadata:
        return None
    return existing, float(existing.metadata[DURATION_META])


async def store_clip(
    storage: Storage, key: str, path: Path, *, covers_sec: float, extra: dict[str, str] | None = None
) -> tuple[ObjectInfo, float]:
    """Put the MP4 at `path` under `key` with its sha256, duration, a write id (WRITE_META) and `extra` as metadata
    (`checked_clip`)."""
    metadata, duration = await checked_clip(path, covers_sec=covers_sec, extra=extra)
    size = await storage.put_file(key, path, "video/mp4", metadata)
    return ObjectInfo(key, size, metadata), duration


async def checked_clip(
    path: Path, *, covers_sec: float, extra: dict[str, str] | None = None
) -> tuple[dict[str, str], float]:
    """The metadata the MP4 at `path` is stored with (its sha256, duration, a write id and `extra`), and its
    duration, once it is checked against what it must cover.

    `covers_sec`: what the clip must last (from its first frame to endSec). ffmpeg can take a failed read of
    its input for the input's end and still exit 0: a clip shorter than that is a transient failure (the stage
    runs again), never a stored result. A clip longer than that (a media's timestamps or durations claiming
    hours) is never stored either: `output_too_long`, permanent."""
    duration = await asyncio.to_thread(mp4_duration, path)
    if duration < covers_sec - SHORT_CLIP_TOLERANCE_SEC:
        raise Transient(f"the cut came out {duration:.3f} s long instead of {covers_sec:.3f} s (an input read "
                        f"failed part-way)", code="short_output")
    if duration > covers_sec + LONG_CLIP_TOLERANCE_SEC:
        raise Permanent(f"the cut came out {duration:.3f} s long instead of {covers_sec:.3f} s: the media's "
                        f"timestamps claim more than it holds; re-encode it with regular timestamps and upload it",
                        code="output_too_long")
    metadata = {"sha256": await sha256_file(path), DURATION_META: f"{duration:.6f}",
                WRITE_META: secrets.token_hex(8), **(extra or {})}
    return metadata, duration


async def copy_result_clip(
    storage: Storage, media: str, path: Path, *, start: float, seek: float, end: float, fmt: str,
    input_args: Sequence[str] = (), on_progress: Callable[[float], None] | None = None,
    limits: RunLimits | None = None,
) -> tuple[ObjectInfo, float]:
    """The plain-copy clip stored straight at its content-hashed result key (`results.put_once`: not written
    again when an identical clip is there), and its duration: for a job whose cut is its last step.

    Cut and checked as `copy_clip` does; nothing goes to the job's staging prefix."""
    await copy_cut(media, path, seek_sec=seek, duration_sec=end - start, on_progress=on_progress, fmt=fmt,
                   input_args=input_args, limits=limits)
    metadata, duration = await checked_clip(path, covers_sec=end - start,
                                            extra={START_META: f"{start:.6f}", PATH_META: "copy"})
    return await _put_result(storage, path, metadata), duration


def forward_clip(
    task: StageMessage, stage: str, clip: ObjectInfo, duration: float, start: float, cut_path: CutPath = "copy"
) -> StageMessage:
    """`task` passed on with the clip as its `video` artifact and what it covers, in source seconds."""
    result = clip_result(clip, duration, start, cut_path)
    artifact = Artifact(stage=stage, role="video", key=clip.key, size=clip.size, sha256=clip.sha256)
    return task.forward(artifact=artifact, result=result)


def clip_result(clip: ObjectInfo, duration: float, start: float, cut_path: CutPath = "copy") -> ClipResult:
    """What the stored clip covers, in source seconds, with its size and hash: the job's result."""
    return ClipResult(
        actual_start_sec=round(start, 6), actual_end_sec=round(start + duration, 6),
        duration_sec=round(duration, 6), size=clip.size, sha256=clip.sha256, cut_path=cut_path,
    )


def reencode_instead(task: StageMessage, stage: str, failure: PieceEncodeFailed, installed: tuple[str, ...]
                     ) -> StageMessage:
    """`task` routed from `stage` (a cutting stage whose smart cut's head or tail encode was refused) to the full
    re-encode, cut reason PIECE_ENCODE_FAILED, with the same staged source; `failure` raised again when this
    installation runs no encode stage."""
    plan = task.plan
    route = route_for(REENCODE_ROUTE, task.job)
    if plan is None or unavailable(route, installed):
        raise failure
    log.warning("smart_cut_fell_back", job_id=task.job.id, stage=stage, reason=PIECE_ENCODE_FAILED,
                error=failure.message[-300:])
    plan = msgspec.structs.replace(plan, cut_path="reencode", cut_reason=PIECE_ENCODE_FAILED)
    done = [*task.done, stage] if stage not in task.done else task.done
    return StageMessage(job=task.job, route=list(route), done=done, plan=plan, artifacts=task.artifacts)
