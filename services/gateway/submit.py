"""Submitting a job: check it, write the row (once per Idempotency-Key), publish it unless the queues are full.

The row is written before the publish: if the publish cannot happen (NATS down, queues full), the job is
still saved, the answer names it, and the reaper publishes it later (the outbox).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import msgspec

from shared import bus
from shared.contracts import ClipJobMessage, JobAccepted, JobRequest, UploadSource, UrlSource, YoutubeSource
from shared.db import idempotency, jobs, keys
from shared.errors import BadRequest, FetchRefused, QueueFull, RetryLater, ServiceUnavailable
from shared.ids import uuid7
from shared.netguard import split_url
from shared.settings import Settings
from shared.ytdlp import check_page_url

from .auth import Caller
from .state import Gateway
from .uploads import check_upload_size, owns_upload

_encoder = msgspec.json.Encoder()
IN_FLIGHT_RETRY_AFTER_SEC = 30  # a key at its in-flight quota is told to try again after this long


class QuotaExceeded(RetryLater):
    """The key is at one of its quotas (`clipjet keys create` sets them; GET /api/usage shows them)."""

    code = "quota_exceeded"
    http_status = 429


class PriorityNotAllowed(BadRequest):
    code = "priority_not_allowed"
    http_status = 403


def validate_request(data: JobRequest, settings: Settings) -> None:
    """Refuse what no worker could do, with a stable code each."""
    if data.start_sec < 0:
        raise BadRequest("startSec must be 0 or more", code="start_negative", field="startSec")
    if data.end_sec <= data.start_sec:
        raise BadRequest("endSec must be greater than startSec", code="end_before_start", field="endSec")
    if isinstance(data.source, UrlSource):  # the form only: addresses are checked on every hop by the fetcher
        try:
            split_url(data.source.url)
        except FetchRefused as exc:
            raise BadRequest(exc.message, code=exc.code, field="source.url") from exc
    if isinstance(data.source, YoutubeSource):  # the page's site is checked again by the fetcher
        try:
            check_page_url(data.source.url, settings)
        except FetchRefused as exc:
            raise BadRequest(exc.message, code=exc.code, field="source.url") from exc
    if data.end_sec - data.start_sec > settings.max_clip_seconds:
        raise BadRequest(
            f"the clip is {data.end_sec - data.start_sec:g} s; the longest allowed is {settings.max_clip_seconds:g} s",
            code="clip_too_long", field="endSec",
        )


async def submit_job(gw: Gateway, data: JobRequest, idempotency_key: str | None, caller: Caller) -> JobAccepted:
    """The whole of `POST /api/jobs`."""
    res = gw.res
    validate_request(data, res.settings)
    if data.priority not in caller.priorities:
        raise PriorityNotAllowed(
            f"this API key may use priority {' or '.join(caller.priorities)}, not {data.priority!r}",
            field="priority",
        )
    for breaker in (gw.breakers.db, gw.breakers.nats):  # shed load before anything is written
        breaker.refuse_if_open()
    gw.scratch.refuse_if_saturated()
    if isinstance(data.source, UploadSource):
        async with gw.breakers.s3:
            await _check_upload(gw, data.source.key, caller)
    job = ClipJobMessage(id=str(uuid7()), owner=caller.owner, **msgspec.structs.asdict(data))
    async with gw.breakers.db, res.db.acquire() as conn, conn.transaction():
        if idempotency_key is not None:
            digest = hashlib.sha256(_encoder.encode(data)).hexdigest()
            earlier = await idempotency.claim(conn, caller.owner or "", idempotency_key, digest, uuid.UUID(job.id))
            if earlier is not None:
                return await _replay(gw, earlier, digest)
        if caller.owner is not None and caller.quotas is not None:
            exceeded = await keys.admit_job(conn, caller.owner, caller.quotas, data.end_sec - data.start_sec)
            if exceeded is not None:
                raise _quota_exceeded(exceeded, caller.quotas)
        await jobs.insert_job(conn, job)
    await _publish(gw, job)
    async with gw.breakers.db:
        await jobs.mark_published(res.db, uuid.UUID(job.id))
    return JobAccepted(id=job.id, status="queued")


async def _publish(gw: Gateway, job: ClipJobMessage) -> None:
    res = gw.res
    try:
        async with gw.breakers.nats:
            if await gw.backlog.over_limit():
                await _defer(gw, job)
            if not res.nc.is_connected:
                raise ConnectionError("not connected to NATS")
            await bus.publish_job(res.js, res.subjects, job)
    except ServiceUnavailable as exc:
        exc.job_id = job.id
        exc.message += f"; job {job.id} is saved and starts once the queue is reachable again"
        raise


async def _defer(gw: Gateway, job: ClipJobMessage) -> None:
    """Over the queue limit: the row stays unpublished (the reaper publishes it once the queues drain)."""
    await jobs.record_event(gw.res.db, uuid.UUID(job.id), "deferred", {"reason": "queue_full"})
    retry_after = gw.res.settings.backpressure_retry_after_sec
    raise QueueFull(
        f"the queues are full; job {job.id} is saved and will start when they drain. Poll it, or retry new "
        f"requests after {retry_after} s", retry_after_sec=retry_after, job_id=job.id,
    )


async def _replay(gw: Gateway, earlier: idempotency.Earlier, digest: str) -> JobAccepted:
    """The job an Idempotency-Key already made, when the body is the same one."""
    if earlier.request_sha256 != digest:
        raise BadRequest(
            "this Idempotency-Key was used with another request body; use a new key for a new request",
            code="idempotency_key_reused",
        )
    row = await jobs.get_job(gw.res.db, earlier.job_id)
    return JobAccepted(id=str(earlier.job_id), status=row["status"] if row else "queued")


def _quota_exceeded(quota: str, quotas: keys.Quotas) -> QuotaExceeded:
    limits = {"jobs_in_flight": f"{quotas.max_in_flight} jobs queued or processing at once",
              "jobs_per_day": f"{quotas.max_jobs_per_day} jobs per UTC day",
              "source_seconds_per_day": f"{quotas.max_source_seconds_per_day:g} clip seconds per UTC day"}
    if quota == "jobs_in_flight":
        retry_after = IN_FLIGHT_RETRY_AFTER_SEC
    else:
        now = datetime.now(UTC)
        midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
        retry_after = max(1, int((midnight - now).total_seconds()) + 1)
    return QuotaExceeded(
        f"quota {quota} reached: this API key may have {limits[quota]}; GET /api/usage shows its use",
        retry_after_sec=retry_after,
    )


async def _check_upload(gw: Gateway, key: str, caller: Caller) -> None:
    found = await gw.res.storage.head(key) if owns_upload(caller, key) else None
    if found is None:
        raise BadRequest(
            f"no upload at key {key!r}; get a slot from POST /api/uploads and PUT the file first",
            code="upload_not_found", field="source.key",
        )
    check_upload_size(found.size, gw.res.settings)
