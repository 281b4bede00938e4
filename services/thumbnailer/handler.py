"""Thumbnailer: read the finished clip, write the poster (`poster` option) and the sprite sheet with its WebVTT
index (`thumbnails` option) as result files (`shared.jobs.outputs`): the uploader promotes and the job's view signs
them like the clip. A redelivered message whose files all exist reuses them."""

from __future__ import annotations

from shared.errors import Permanent
from shared.jobs.contracts import StageMessage
from shared.jobs.outputs import VIDEO_ROLE, Output, forward_outputs, stored_earlier
from shared.runtime.worker import StageDeps
from shared.storage.s3 import ObjectInfo

from .frames import displayed_size, extract_frame, sharpest_frame_sec
from .sprite import make_sprite, plan_grid

THUMBS = "thumbs"
POSTER = Output("poster", "poster.jpg", "image/jpeg")
SPRITE = Output("sprite", "sprite.jpg", "image/jpeg")
INDEX = Output("thumbnails", "thumbnails.vtt", "text/vtt")
READ_URL_TTL_SEC = 3600  # lifetime of the signed URL ffmpeg reads the clip through, s
POSTER_SEARCH_SEC = 3.0  # without poster.atSec: the sharpest frame of the clip's first this many seconds
LAST_FRAME_MARGIN_SEC = 0.1  # a poster's time is kept this far before the clip's end (its last frame starts there)


async def handle(task: StageMessage, deps: StageDeps) -> StageMessage:
    """The poster and/or thumbnails the request asks for, from the clip in the job's staging."""
    job, storage = task.job, deps.res.storage
    outputs = ((POSTER,) if job.poster is not None else ()) + ((SPRITE, INDEX) if job.thumbnails is not None else ())
    existing = await stored_earlier(storage, job.id, outputs)
    if existing is not None:
        return forward_outputs(task, THUMBS, existing, outputs)
    video, result = task.artifact(VIDEO_ROLE), task.result
    if video is None or result is None:
        raise Permanent("the thumbs stage needs the clip and its result", code="invalid_message")
    if task.plan is not None and not any(s.kind == "video" for s in task.plan.streams):
        raise Permanent("a poster or thumbnails were asked for, but the clip has no video", code="no_video")
    url = await storage.internal_url(video.key, READ_URL_TTL_SEC)
    stored: dict[str, ObjectInfo] = {}
    grid = None  # the sheet is planned (and refused if too large) before any ffmpeg run
    if job.thumbnails is not None:
        grid = plan_grid(await displayed_size(url), result.duration_sec, job.thumbnails.interval_sec,
                         job.thumbnails.width)
    if job.poster is not None:
        at = job.poster.at_sec
        if at is None:
            at = await sharpest_frame_sec(url, min(POSTER_SEARCH_SEC, result.duration_sec))
        path = deps.scratch / POSTER.filename
        await extract_frame(url, max(0.0, min(at, result.duration_sec - LAST_FRAME_MARGIN_SEC)), path)
        stored[POSTER.role] = await POSTER.store(storage, job.id, path, {"atSec": f"{at:.6f}"})
        deps.progress.set(0.4)
    if grid is not None:
        sheet, index = deps.scratch / SPRITE.filename, deps.scratch / INDEX.filename
        await make_sprite(url, sheet, grid, result.duration_sec, lambda p: deps.progress.set(0.4 + 0.5 * p))
        index.write_text(grid.webvtt(SPRITE.filename, result.duration_sec), encoding="utf-8")
        stored[SPRITE.role] = await SPRITE.store(storage, job.id, sheet)
        stored[INDEX.role] = await INDEX.store(storage, job.id, index)
    return forward_outputs(task, THUMBS, stored, outputs)
