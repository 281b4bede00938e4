"""`/api/jobs`: submit a clip job and read its state."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody, PathParameter

from shared.contracts import ClipResult, JobAccepted, JobRequest, JobView, ResultUrls
from shared.db import jobs
from shared.errors import NotFound
from shared.ids import parse_job_id
from shared.scrub import scrub

from .body import strict_json
from .formats import shown
from .state import Gateway
from .submit import submit_job

CLIP_DOWNLOAD_NAME = "clip.mp4"
SUBTITLE_COLUMNS = {"srt": ("result_srt_key", "clip.srt"), "vtt": ("result_vtt_key", "clip.vtt"),
                    "words": ("result_words_key", "clip.words.json")}  # ResultUrls field → (column, download name)
IDEMPOTENCY_KEY_MAX_CHARS = 200
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"  # visible ASCII only (no spaces, controls or NUL: it is stored as text)


class JobController(Controller):
    path = "/api/jobs"
    tags = ["jobs"]

    @post("/", operation_id="createJob", status_code=202, before_request=strict_json(JobRequest))
    async def create_job(
        self, data: JSONBody[JobRequest], gw: NamedDependency[Gateway],
        idempotency_key: Annotated[str | None, HeaderParameter(
            name="Idempotency-Key", required=False, min_length=1, max_length=IDEMPOTENCY_KEY_MAX_CHARS,
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="Repeat a request safely: the same key and body return the same job.",
        )] = None,
    ) -> JobAccepted:
        """Queue a clip job; poll `GET /api/jobs/{id}` for its progress and result."""
        return await submit_job(gw, data, idempotency_key)

    @get("/{job_id:str}", operation_id="getJob")
    async def get_job(
        self, gw: NamedDependency[Gateway], job_id: Annotated[str, PathParameter(description="The job's id")]
    ) -> JobView:
        """A job's status, stage, progress and, once done, signed URLs of its files."""
        uid, res = parse_job_id(job_id), gw.res
        if uid is None:
            raise NotFound(f"no job with id {shown(job_id)}: job ids are UUIDs", code="job_not_found")
        async with gw.breakers.db:
            row = await jobs.get_job(res.db, uid)
        if row is None:
            raise NotFound(f"no job with id {uid}", code="job_not_found")
        result = msgspec.convert(row["result"], ClipResult) if row["result"] else None
        urls = None
        if row["status"] == "done" and row["result_video_key"]:
            ttl = res.settings.signed_url_ttl_sec
            video = await res.storage.signed_get_url(row["result_video_key"], ttl, CLIP_DOWNLOAD_NAME)
            urls = ResultUrls(video=video, expires_in_sec=ttl, **await _subtitle_urls(gw, row, ttl))
        return JobView(
            id=str(row["id"]), status=row["status"], priority=row["priority"], stage=row["stage"],
            progress=round(float(row["progress"]), 4), attempts=row["attempts"],
            created_at=row["created_at"].isoformat(), updated_at=row["updated_at"].isoformat(),
            request=_request_of(row["request"]),
            error_code=row["error_code"], error_message=scrub(row["error_message"] or "") or None,
            result=result, urls=urls,
        )


def _request_of(stored: dict[str, Any]) -> JobRequest | None:
    """The job's request; None for a message refused off the bus because it did not fit the contract."""
    try:
        return msgspec.convert({k: v for k, v in stored.items() if k != "id"}, JobRequest)
    except msgspec.ValidationError:
        return None


async def _subtitle_urls(gw: Gateway, row: Any, ttl: int) -> dict[str, str]:
    """Signed URLs of the job's subtitle files, for those it has."""
    return {
        field: await gw.res.storage.signed_get_url(row[column], ttl, filename)
        for field, (column, filename) in SUBTITLE_COLUMNS.items() if row[column]
    }
