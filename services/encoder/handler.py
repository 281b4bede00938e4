"""Encoder: cut [startSec, endSec] frame-accurately out of the staged media into an H.264 MP4 (+faststart).

The video is re-encoded (hardware H.264 when the node has a working one, else libx264) unless it is already
an MP4 codec and the cut starts on a keyframe, where a copy is exact (never for a reframe or a burn-in: their
filters run in this one pass, the reframe's first); audio is copied when MP4 takes it, else encoded to AAC.
At most MAX_PARALLEL_ENCODERS_PER_NODE encodes run at once on a node.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from shared.errors import Permanent
from shared.jobs.contracts import MediaPlan, StageMessage
from shared.jobs.pipeline import ENCODE
from shared.media.burnin import burn_in_filter_for
from shared.media.cut import MP4_VIDEO_CODECS
from shared.media.encode import encode_clip
from shared.media.hwenc import VideoEncoder, detect_video_encoder
from shared.media.inputs import staged_demuxer
from shared.media.keyframes import frame_shown_at
from shared.media.probe import KEYFRAME_EPSILON_SEC
from shared.media.reframe import reframe_filters
from shared.media.slots import encode_slot, threads_per_encode
from shared.runtime.metrics import encode_running, record_video_encoder
from shared.runtime.resources import Resources
from shared.runtime.worker import StageDeps
from shared.storage.clipstore import (
    READ_URL_TTL_SEC,
    START_META,
    forward_clip,
    source_time_of_zero,
    store_clip,
    stored_clip,
)
from shared.storage.s3 import staging_prefix

ENCODE_SHARE = 0.95  # of this stage's progress: the ffmpeg pass; storing the clip is the rest
CLIP_NAME = "encoded.mp4"


@asynccontextmanager
async def pick_encoder(res: Resources) -> AsyncIterator[VideoEncoder]:
    """StageSpec.open_local of the encoder: the H.264 encoder picked by test encodes once per process, before
    the first pull (logged, and in the `clipjet_video_encoder` metric)."""
    encoder = await asyncio.to_thread(detect_video_encoder, res.settings.video_encoder)
    record_video_encoder(encoder.name, encoder.hardware)
    yield encoder


def video_copy_is_exact(task: StageMessage, plan: MediaPlan, max_leadin_sec: float = float("inf")) -> bool:
    """True when copying the video gives the clip asked for: an MP4 codec and a start on a keyframe
    (or a job that asked for keyframe precision, whose keyframe is at most `max_leadin_sec` before startSec:
    MAX_KEYFRAME_LEADIN_SEC, past which the clip is cut frame-accurately)."""
    videos = [s for s in plan.streams if s.kind == "video"]
    if len(videos) != 1 or videos[0].codec not in MP4_VIDEO_CODECS:
        return False
    leadin = task.job.start_sec - plan.cut_start_sec
    on_keyframe = abs(leadin) <= KEYFRAME_EPSILON_SEC
    return on_keyframe or (task.job.precision == "keyframe" and leadin <= max_leadin_sec)


class NoEncoder(RuntimeError):
    """The stage was run without the H.264 encoder `pick_encoder` opens (a wiring bug, never the job's fault)."""


async def handle(task: StageMessage, deps: StageDeps) -> StageMessage:
    """Encode the clip; reuse the output when an earlier delivery already stored it.

    Refuses (NoEncoder) to run without the process's encoder in `deps.local`: a missing one must not quietly
    turn a re-encode into a stream copy."""
    if not isinstance(deps.local, VideoEncoder):
        raise NoEncoder(f"the encode stage needs its VideoEncoder in deps.local (StageSpec.open_local = "
                        f"pick_encoder), got {type(deps.local).__name__}")
    plan, source = task.plan, task.artifact("source")
    if plan is None or source is None:
        raise Permanent("the encode stage needs the fetcher's plan and staged source", code="invalid_message")
    settings, storage = deps.res.settings, deps.res.storage
    redraws = task.job.subs.burn_in or task.job.reframe is not None  # every frame is drawn anew
    copy_video = not redraws and video_copy_is_exact(task, plan, settings.max_keyframe_leadin_sec)
    start = plan.cut_start_sec if copy_video else task.job.start_sec
    key = f"{staging_prefix(task.job.id)}{CLIP_NAME}"
    existing = await stored_clip(storage, key)
    if existing is not None:
        clip, duration = existing
        return forward_clip(task, ENCODE, clip, duration, float(clip.metadata.get(START_META, start)), "reencode")

    media = await storage.internal_url(source.key, READ_URL_TTL_SEC)
    fmt = staged_demuxer(source.key, task.job.id, plan.container)  # the demuxer the fetcher sniffed or staged in
    origin = await source_time_of_zero(media, plan, source, task.job.id)
    # a re-encode starts with the frame on screen at startSec (as the trimmer's cuts), sought by its own time
    first = start if copy_video else origin + await frame_shown_at(media, start - origin, fmt)
    burn_in = await burn_in_filter_for(task, storage, deps.scratch, settings)  # input -ss: frames start at 0
    filters = [*reframe_filters(task.job.reframe), *([burn_in] if burn_in else [])]  # cues laid out on the new frame
    encoder = None if copy_video else deps.local
    path = deps.scratch / CLIP_NAME
    slots = settings.max_parallel_encoders_per_node
    async with encode_slot(settings.scratch_dir, slots):
        with encode_running():
            await encode_clip(
                media, path, seek_sec=first - origin, duration_sec=task.job.end_sec - first,
                streams=plan.streams, encoder=encoder, threads=threads_per_encode(slots),
                extra_filters=filters,
                on_progress=lambda p: deps.progress.set(ENCODE_SHARE * p), fmt=fmt,
            )
    clip, duration = await store_clip(storage, key, path, covers_sec=task.job.end_sec - first,
                                      extra={START_META: f"{first:.6f}"})
    deps.progress.set(1.0)
    return forward_clip(task, ENCODE, clip, duration, first, "reencode")  # the first frame's own time
