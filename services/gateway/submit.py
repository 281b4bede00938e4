"""Submitting a job: check it, write the row (once per Idempotency-Key), publish it unless the queues are full.

The row is written before the publish: if the publish cannot happen (NATS down, queues full), the job is
still saved, the answer names it, and the reaper publishes it later (the outbox).
"""

from __future__ import annotations

import hashlib
import uuid

import msgspec

from shared.db import idempotency, jobs, submissions
from shared.errors import BadRequest, QueueFull, ServiceUnavailable
from shared.jobs.contracts import ClipJobMessage, JobAccepted, JobRequest, UploadSource
from shared.jobs.ids import uuid7
from shared.jobs.jobrules import check_clip
from shared.jobs.timecode import InvalidTimecode, to_seconds
from shared.runtime import bus, tracing
from shared.settings import Settings

from .auth import Caller
from .body import BodyTooLarge
from .formats import require_upload_key
from .quotas import quota_exceeded
from .state import Gateway
from .uploads import check_upload_size, owns_upload
from .webhook import job_webhook

_encoder = msgspec.json.Encoder()
QUOTAS = frozenset({"jobs_in_flight", "jobs_per_day", "source_seconds_per_day"})  # what admit_job may refuse for
BUS_SHARE = 4  # a job's message may use at most 1/BUS_SHARE of NATS max_payload (stage messages add plan, artifacts)


class PriorityNotAllowed(BadRequest):
    code = "priority_not_allowed"
    http_status = 403


def check_bounds(data: JobRequest, settings: Settings) -> None:
    """What the request names has its real form and a bounded size (before any dependency sees it)."""
    if isinstance(data.source, UploadSource):
        require_upload_key(data.source.key, "source.key")
    elif len(data.source.url) > settings.max_url_chars:
        raise BadRequest(
            f"source.url is {len(data.source.url)} characters; the longest accepted is {settings.max_url_chars}",
            code="url_too_long", field="source.url",
        )


def in_seconds(data: JobRequest) -> JobRequest:
    """The request with `startSec`/`endSec` in seconds (they may come as timecodes: `"1:02.5"`); an invalid
    timecode is a 422 `invalid_time` naming the field. The rules (shared/jobs/jobrules.py) then check the numbers."""
    times = {}
    for attr, field in (("start_sec", "startSec"), ("end_sec", "endSec")):
        try:
            times[attr] = to_seconds(getattr(data, attr))
        except InvalidTimecode as exc:
            raise BadRequest(f"{field}: {exc}", code="invalid_time", field=field) from exc
    return msgspec.structs.replace(data, **times)


async def submit_job(gw: Gateway, data: JobRequest, idempotency_key: str | None, caller: Caller) -> JobAccepted:
    """The whole of `POST /api/jobs`."""
    res = gw.res
    data = in_seconds(data)
    check_bounds(data, res.settings)
    check_clip(data, res.settings)  # the same rules the fetcher applies to messages published straight to NATS
    if data.priority not in caller.priorities:
        raise PriorityNotAllowed(
            f"this API key may use priority {' or '.join(caller.priorities)}, not {data.priority!r}",
            field="priority",
        )
    webhook = await job_webhook(data, caller, res.settings)
    for breaker in (gw.breakers.db, gw.breakers.nats):  # shed load before anything is written
        breaker.refuse_if_open()
    gw.scratch.refuse_if_saturated()
    job = ClipJobMessage(id=str(uuid7()), owner=caller.owner, **(msgspec.structs.asdict(data) | {"webhook": webhook}))
    tracing.bind_job(job.id)
    _check_message_size(gw, job)
    if isinstance(data.source, UploadSource):
        await _check_upload(gw, data.source.key, caller)
    claim = None
    if idempotency_key is not None:
        digest = hashlib.sha256(_encoder.encode(data)).hexdigest()
        claim = submissions.IdempotencyClaim(caller.owner or "", idempotency_key, digest)
    async with gw.breakers.db:  # one round trip: idempotency, quotas (under the key's lock), the row
        submitted = await submissions.submit(res.db, job, claim, caller.quotas)
    if submitted.earlier is not None and claim is not None:
        return await _replay(gw, submitted.earlier, claim.request_sha256)
    if submitted.outcome in QUOTAS and caller.quotas is not None:
        raise quota_exceeded(submitted.outcome, caller.quotas)
    if submitted.outcome != submissions.INSERTED:
        raise RuntimeError(f"job {job.id} was not written: {submitted.outcome}")
    await _publish(gw, job)
    await gw.writes.mark_published(uuid.UUID(job.id))  # guarded by the breaker once per batch (writes.py)
    return JobAccepted(id=job.id, status="queued")


def _check_message_size(gw: Gateway, job: ClipJobMessage) -> None:
    """Refuse (before the row is written) a job whose message NATS could not carry through every stage."""
    size, room = len(_encoder.encode(job)), gw.res.nc.max_payload // BUS_SHARE
    if size > room:
        raise BodyTooLarge(f"the job's message would be {size} bytes; the queue takes jobs up to {room} bytes")


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


def check_same_body(earlier: idempotency.Earlier, digest: str) -> None:
    """An Idempotency-Key answers again only the body it was first sent with (a job's or a batch's)."""
    if earlier.request_sha256 != digest:
        raise BadRequest(
            "this Idempotency-Key was used with another request body; use a new key for a new request",
            code="idempotency_key_reused",
        )


async def _replay(gw: Gateway, earlier: idempotency.Earlier, digest: str) -> JobAccepted:
    """The job an Idempotency-Key already made, when the body is the same one."""
    check_same_body(earlier, digest)
    row = await jobs.get_job(gw.res.db, earlier.job_id)
    return JobAccepted(id=str(earlier.job_id), status=row["status"] if row else "queued")


async def _check_upload(gw: Gateway, key: str, caller: Caller) -> None:
    """The caller's upload exists (a HEAD, or one that found it within UPLOAD_SEEN_CACHE_SEC: an upload's object is
    written once and never changed; requests arriving during a HEAD wait for it) and is not over MAX_UPLOAD_MB."""
    if not owns_upload(caller, key):
        raise _no_upload(key)

    async def head_size() -> int | None:
        async with gw.breakers.s3:
            found = await gw.res.storage.head(key)
        return None if found is None else found.size

    size = await gw.uploads_seen.get_or_load(key, head_size)
    if size is None:
        raise _no_upload(key)
    check_upload_size(size, gw.res.settings)


def _no_upload(key: str) -> BadRequest:
    return BadRequest(
        f"no upload at key {key!r}; get a slot from POST /api/uploads and PUT the file first",
        code="upload_not_found", field="source.key",
    )
