"""`/api/jobs`: submit a clip job, list the caller's jobs, and read one job's state."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter

from shared.db import jobs
from shared.errors import BadRequest, NotFound
from shared.jobs.contracts import (
    BatchAccepted,
    BatchRequest,
    JobAccepted,
    JobList,
    JobRequest,
    JobStatus,
    JobSubmission,
    JobView,
)
from shared.jobs.jobview import job_view as shared_job_view
from shared.jobs.linked import linkable, linked

from .auth import Caller, authenticate, authenticated, caller_of
from .batches import strict_submission, submit_batch
from .body import checked_body
from .cancel import cancel_job, readable_job
from .openapi import SECURITY, error_responses
from .state import Gateway, gateway_of
from .submit import submit_job

IDEMPOTENCY_KEY_MAX_CHARS = 200
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"  # visible ASCII only (no spaces, controls or NUL: it is stored as text)
LIST_DEFAULT, LIST_MAX = 20, 100  # jobs per page of GET /api/jobs
CURSOR_MAX_CHARS = 200
LINKED_MAX_BYTES = 1 << 20  # an index file served with its siblings linked is this small at most
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"


JOBS_PATH = "/api/jobs"


class JobController(Controller):
    path = JOBS_PATH
    tags = ["jobs"]
    before_request = authenticate
    security = SECURITY

    @post("/", operation_id="createJob", status_code=202, before_request=authenticated(strict_submission),
          responses=error_responses(400, 401, 403, 413, 415, 422, 429, 503))
    async def create_job(
        self, request: Request[Any, Any, Any], data: JSONBody[JobSubmission],
        idempotency_key: Annotated[str | None, HeaderParameter(
            name=IDEMPOTENCY_KEY_HEADER, required=False, min_length=1, max_length=IDEMPOTENCY_KEY_MAX_CHARS,
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="Repeat a request safely: the same key and body return the same job.",
        )] = None,
    ) -> Response[JobAccepted | BatchAccepted]:
        """Queue a clip job; poll `GET /api/jobs/{id}` (its `Location`) for its progress and result. With `clips`
        instead of startSec/endSec: one job per clip under one batch (`GET /api/batches/{id}`, its `Location`)."""
        gw, caller = gateway_of(request.app.state), caller_of(request)  # not injected: a hot path (BENCHMARKS.md)
        body: JobRequest | BatchRequest = checked_body(request)  # strict_submission's value (`data` is the same)
        accepted, location = await accept(gw, body, idempotency_key, caller)
        return Response(accepted, status_code=202, headers={"Location": location})

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
        self, request: Request[Any, Any, Any], job_id: Annotated[str, PathParameter(description="The job's id")],
    ) -> JobView:
        """A job's status, stage, progress and, once done, signed URLs of its files."""
        gw = gateway_of(request.app.state)  # not injected: a hot path (BENCHMARKS.md)
        return await job_view(gw, await readable_job(gw, caller_of(request), job_id))

    @get("/{job_id:str}/files/{name:str}", operation_id="getLinkedFile", media_type="text/vtt",
         responses=error_responses(401, 404, 429, 503))
    async def linked_file(
        self, request: Request[Any, Any, Any], job_id: Annotated[str, PathParameter(description="The job's id")],
        name: Annotated[str, PathParameter(description="A result file's download name, e.g. thumbnails' index")],
    ) -> Response[str]:
        """A done job's WebVTT result file with the other result files it names (the thumbnails' index names the
        sprite sheet: `<name>#xywh=…`) as their signed URLs: a player loads the thumbnails from it as is. 404
        `file_not_found` for a name that is not one of the job's `.vtt` files (or before it is done)."""
        gw = gateway_of(request.app.state)
        row = await readable_job(gw, caller_of(request), job_id)
        named = {key.rsplit("/", 1)[-1]: key for key in jobs.result_files(row).values()} if row["status"] == "done" \
            else {}
        if not linkable(name) or name not in named:
            raise NotFound(f"job {row['id']} has no result file {name[:80]!r} to serve here (its .vtt files, once "
                           f"done)", code="file_not_found")
        data = await gw.res.storage.read_small(named[name], LINKED_MAX_BYTES)
        if data is None:
            raise NotFound(f"job {row['id']}'s file {name} has expired", code="file_not_found")

        async def sign(sibling: str) -> str:
            return (await gw.signed.get(named[sibling], sibling))[0]

        text = await linked(data.decode("utf-8", errors="replace"), {n: k for n, k in named.items() if n != name}, sign)
        return Response(text, media_type="text/vtt; charset=utf-8", headers={"Cache-Control": "private, no-store"})

    @post("/{job_id:str}/cancel", operation_id="cancelJob", status_code=200,
          responses=error_responses(401, 404, 409, 429, 503))
    async def cancel(
        self, gw: NamedDependency[Gateway], caller: NamedDependency[Caller],
        job_id: Annotated[str, PathParameter(description="The job's id")],
    ) -> JobView:
        """Cancel a queued or processing job: it ends `canceled` at once (its end event is published); a stage
        running it stops within moments and uploads nothing. 409 `job_already_ended` when it had ended."""
        return await job_view(gw, await cancel_job(gw, job_id, caller))


async def accept(gw: Gateway, body: JobRequest | BatchRequest, idempotency_key: str | None,
                 caller: Caller) -> tuple[JobAccepted | BatchAccepted, str]:
    """`POST /api/jobs` once its body is checked: the answer and its `Location` (fastpath.py calls it too)."""
    if isinstance(body, BatchRequest):
        batch = await submit_batch(gw, body, idempotency_key, caller)
        return batch, f"/api/batches/{batch.batch_id}"
    accepted = await submit_job(gw, body, idempotency_key, caller)
    return accepted, f"{JOBS_PATH}/{accepted.id}"


async def job_view(gw: Gateway, row: Any) -> JobView:
    """What a client sees of a job row (shared/jobs/jobview.py: the notifier POSTs the same view), its signed URLs
    reused for SIGNED_URL_REUSE_SEC (services/gateway/signed.py)."""
    return await shared_job_view(gw.res, row, gw.signed.get)


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


