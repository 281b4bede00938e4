"""`/api/jobs`: submit a clip job, list the caller's jobs, and read one job's state."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter

from shared.contracts import ClipResult, JobAccepted, JobList, JobRequest, JobStatus, JobView, ResultUrls
from shared.db import jobs
from shared.errors import BadRequest
from shared.scrub import scrub

from .auth import Caller, authenticate, authenticated
from .body import strict_json
from .cancel import cancel_job, readable_job
from .openapi import SECURITY, error_responses
from .state import Gateway
from .submit import submit_job

CLIP_DOWNLOAD_NAME = "clip.mp4"
SUBTITLE_COLUMNS = {"srt": ("result_srt_key", "clip.srt"), "vtt": ("result_vtt_key", "clip.vtt"),
                    "words": ("result_words_key", "clip.words.json")}  # ResultUrls field → (column, download name)
IDEMPOTENCY_KEY_MAX_CHARS = 200
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"  # visible ASCII only (no spaces, controls or NUL: it is stored as text)
LIST_DEFAULT, LIST_MAX = 20, 100  # jobs per page of GET /api/jobs
CURSOR_MAX_CHARS = 200


class JobController(Controller):
    path = "/api/jobs"
    tags = ["jobs"]
    before_request = authenticate
    security = SECURITY

    @post("/", operation_id="createJob", status_code=202, before_request=authenticated(strict_json(JobRequest)),
          responses=error_responses(400, 401, 403, 413, 415, 422, 429, 503))
    async def create_job(
        self, data: JSONBody[JobRequest], gw: NamedDependency[Gateway], caller: NamedDependency[Caller],
        idempotency_key: Annotated[str | None, HeaderParameter(
            name="Idempotency-Key", required=False, min_length=1, max_length=IDEMPOTENCY_KEY_MAX_CHARS,
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="Repeat a request safely: the same key and body return the same job.",
        )] = None,
    ) -> Response[JobAccepted]:
        """Queue a clip job; poll `GET /api/jobs/{id}` (its `Location`) for its progress and result."""
        accepted = await submit_job(gw, data, idempotency_key, caller)
        return Response(accepted, status_code=202, headers={"Location": f"{self.path}/{accepted.id}"})

    @get("/", operation_id="listJobs", responses=error_responses(401, 422, 429, 503))
    async def list_jobs(
        self, gw: NamedDependency[Gateway], caller: NamedDependency[Caller],
        status: Annotated[JobStatus | None, QueryParameter(description="Only jobs in this state")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=LIST_MAX, description="Jobs per page")] = LIST_DEFAULT,
        cursor: Annotated[str | None, QueryParameter(
            max_length=CURSOR_MAX_CHARS, description="`nextCursor` of the previous page")] = None,
    ) -> JobList:
        """The caller's jobs, newest first, a page at a time."""
        owner = None if caller.admin or caller.owner is None else caller.owner
        async with gw.breakers.db:
            rows = await jobs.list_jobs(gw.res.db, owner, status, _decode_cursor(cursor), limit + 1)
        page = [await job_view(gw, row) for row in rows[:limit]]
        last = rows[limit - 1] if len(rows) > limit else None
        return JobList(jobs=page, next_cursor=_encode_cursor(last["created_at"], last["id"]) if last else None)

    @get("/{job_id:str}", operation_id="getJob", responses=error_responses(401, 404, 429, 503))
    async def get_job(
        self, gw: NamedDependency[Gateway], caller: NamedDependency[Caller],
        job_id: Annotated[str, PathParameter(description="The job's id")],
    ) -> JobView:
        """A job's status, stage, progress and, once done, signed URLs of its files."""
        return await job_view(gw, await readable_job(gw, caller, job_id))

    @post("/{job_id:str}/cancel", operation_id="cancelJob", status_code=200,
          responses=error_responses(401, 404, 409, 429, 503))
    async def cancel(
        self, gw: NamedDependency[Gateway], caller: NamedDependency[Caller],
        job_id: Annotated[str, PathParameter(description="The job's id")],
    ) -> JobView:
        """Cancel a queued or processing job: it ends `canceled` at once (its end event is published); a stage
        running it stops within moments and uploads nothing. 409 `job_already_ended` when it had ended."""
        return await job_view(gw, await cancel_job(gw, job_id, caller))


async def job_view(gw: Gateway, row: Any) -> JobView:
    """What a client sees of a job row (signed URLs of its files once done)."""
    result = msgspec.convert(row["result"], ClipResult) if row["result"] else None
    urls = None
    if row["status"] == "done" and row["result_video_key"]:
        video, left = await gw.signed.get(row["result_video_key"], CLIP_DOWNLOAD_NAME)
        subtitles: dict[str, str] = {}
        for field, (column, filename) in SUBTITLE_COLUMNS.items():
            if row[column]:
                subtitles[field], lasts = await gw.signed.get(row[column], filename)
                left = min(left, lasts)
        urls = ResultUrls(video=video, expires_in_sec=left, **subtitles)
    return JobView(
        id=str(row["id"]), status=row["status"], priority=row["priority"], stage=row["stage"],
        progress=round(float(row["progress"]), 4), attempts=row["attempts"],
        created_at=row["created_at"].isoformat(), updated_at=row["updated_at"].isoformat(),
        request=(request := _request_of(row["request"])), metadata=request.metadata if request else None,
        error_code=row["error_code"], error_message=scrub(row["error_message"] or "") or None,
        result=result, urls=urls,
    )


def _request_of(stored: dict[str, Any]) -> JobRequest | None:
    """The job's request; None for a message refused off the bus because it did not fit the contract."""
    try:
        return msgspec.convert({k: v for k, v in stored.items() if k not in ("id", "owner")}, JobRequest)
    except msgspec.ValidationError:
        return None


def _encode_cursor(created_at: datetime, job_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{job_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not cursor:
        return None
    try:
        created, _, job_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition("|")
        at = datetime.fromisoformat(created)
        if at.tzinfo is None:
            raise ValueError("no time zone")
        return at, uuid.UUID(job_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadRequest("cursor is not one this API gave out; start again without it", code="invalid_field",
                         field="cursor") from exc


