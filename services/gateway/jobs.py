"""`/api/jobs`: submit a clip job and read its state."""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody, PathParameter

from shared import bus
from shared.bus import BacklogGauge
from shared.contracts import (
    ClipJobMessage,
    ClipResult,
    JobAccepted,
    JobRequest,
    JobView,
    ResultUrls,
    UploadSource,
)
from shared.db import idempotency, jobs
from shared.errors import BadRequest, NotFound, QueueFull
from shared.ids import parse_job_id, uuid7
from shared.resources import Resources
from shared.settings import Settings

from .uploads import UPLOAD_PREFIX

_encoder = msgspec.json.Encoder()
CLIP_DOWNLOAD_NAME = "clip.mp4"
IDEMPOTENCY_KEY_MAX_CHARS = 200


def validate_request(data: JobRequest, settings: Settings) -> None:
    """Refuse what no worker could do, with a stable code each."""
    if data.start_sec < 0:
        raise BadRequest("startSec must be 0 or more", code="start_negative", field="startSec")
    if data.end_sec <= data.start_sec:
        raise BadRequest("endSec must be greater than startSec", code="end_before_start", field="endSec")
    if data.end_sec - data.start_sec > settings.max_clip_seconds:
        raise BadRequest(
            f"the clip is {data.end_sec - data.start_sec:g} s; the longest allowed is {settings.max_clip_seconds:g} s",
            code="clip_too_long", field="endSec",
        )


class JobController(Controller):
    path = "/api/jobs"
    tags = ["jobs"]

    @post("/", operation_id="createJob", status_code=202)
    async def create_job(
        self, data: JSONBody[JobRequest], res: NamedDependency[Resources], backlog: NamedDependency[BacklogGauge],
        idempotency_key: Annotated[str | None, HeaderParameter(
            name="Idempotency-Key", required=False, min_length=1, max_length=IDEMPOTENCY_KEY_MAX_CHARS,
            description="Repeat a request safely: the same key and body return the same job.",
        )] = None,
    ) -> JobAccepted:
        """Queue a clip job; poll `GET /api/jobs/{id}` for its progress and result."""
        validate_request(data, res.settings)
        if isinstance(data.source, UploadSource):
            await _check_upload(res, data.source.key)
        job = ClipJobMessage(id=str(uuid7()), **msgspec.structs.asdict(data))
        async with res.db.acquire() as conn, conn.transaction():
            if idempotency_key is not None:
                digest = hashlib.sha256(_encoder.encode(data)).hexdigest()
                earlier = await idempotency.claim(conn, idempotency_key, digest, uuid.UUID(job.id))
                if earlier is not None:
                    return await _replay(res, earlier, digest)
            await jobs.insert_job(conn, job)
        if await backlog.over_limit():
            await _defer(res, job)
        await bus.publish_job(res.js, res.subjects, job)
        await jobs.mark_published(res.db, uuid.UUID(job.id))
        return JobAccepted(id=job.id, status="queued")

    @get("/{job_id:str}", operation_id="getJob")
    async def get_job(
        self, res: NamedDependency[Resources], job_id: Annotated[str, PathParameter(description="The job's id")]
    ) -> JobView:
        """A job's status, stage, progress and, once done, signed URLs of its files."""
        uid = parse_job_id(job_id)
        row = await jobs.get_job(res.db, uid) if uid else None
        if row is None:
            raise NotFound(f"no job with id {job_id!r}", code="job_not_found")
        result = msgspec.convert(row["result"], ClipResult) if row["result"] else None
        urls = None
        if row["status"] == "done" and row["result_video_key"]:
            ttl = res.settings.signed_url_ttl_sec
            video = await res.storage.signed_get_url(row["result_video_key"], ttl, CLIP_DOWNLOAD_NAME)
            urls = ResultUrls(video=video, expires_in_sec=ttl)
        request = row["request"]
        return JobView(
            id=str(row["id"]), status=row["status"], priority=row["priority"], stage=row["stage"],
            progress=round(float(row["progress"]), 4), attempts=row["attempts"],
            created_at=row["created_at"].isoformat(), updated_at=row["updated_at"].isoformat(),
            request=msgspec.convert({k: v for k, v in request.items() if k != "id"}, JobRequest),
            error_code=row["error_code"], error_message=row["error_message"], result=result, urls=urls,
        )


async def _defer(res: Resources, job: ClipJobMessage) -> None:
    """Over the queue limit: the row stays unpublished (the reaper publishes it once the queues drain)."""
    await jobs.record_event(res.db, uuid.UUID(job.id), "deferred", {"reason": "queue_full"})
    retry_after = res.settings.backpressure_retry_after_sec
    raise QueueFull(
        f"the queues are full; job {job.id} is saved and will start when they drain. Poll it, or retry new "
        f"requests after {retry_after} s", retry_after_sec=retry_after, job_id=job.id,
    )


async def _replay(res: Resources, earlier: idempotency.Earlier, digest: str) -> JobAccepted:
    """The job an Idempotency-Key already made, when the body is the same one."""
    if earlier.request_sha256 != digest:
        raise BadRequest(
            "this Idempotency-Key was used with another request body; use a new key for a new request",
            code="idempotency_key_reused",
        )
    row = await jobs.get_job(res.db, earlier.job_id)
    return JobAccepted(id=str(earlier.job_id), status=row["status"] if row else "queued")


async def _check_upload(res: Resources, key: str) -> None:
    if not key.startswith(UPLOAD_PREFIX) or await res.storage.head(key) is None:
        raise BadRequest(
            f"no upload at key {key!r}; get a slot from POST /api/uploads and PUT the file first",
            code="upload_not_found", field="source.key",
        )
