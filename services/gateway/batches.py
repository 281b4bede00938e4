"""Batches: `POST /api/jobs` with `clips` makes one job per clip under one batch id, all or nothing; and
`GET /api/batches/{id}` shows them together.

All or nothing: every clip is checked, then the key's quotas are admitted for the whole batch (its jobs and the
sum of their clip seconds) in the transaction that writes the batch and every job; a refused batch writes
nothing. An Idempotency-Key names the batch (a retry with the same body gets the same batch and jobs). The jobs
are published one by one, each carrying the batch id: the fetcher stages the source once for them all
(services/fetcher/batch.py), and each job ends on its own.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import PathParameter

from shared.db import batches, idempotency, jobs
from shared.errors import BadRequest, NotFound, ServiceUnavailable
from shared.jobs.contracts import (
    BatchAccepted,
    BatchClip,
    BatchRequest,
    BatchView,
    ClipJobMessage,
    JobAccepted,
    JobRequest,
    JobStatus,
    UploadSource,
)
from shared.jobs.ids import parse_job_id, uuid7
from shared.jobs.jobrules import check_clip
from shared.runtime import tracing

from .auth import Caller, authenticate
from .body import BODY_SCOPE_KEY, convert_strict, decode_json, json_body
from .formats import shown
from .openapi import SECURITY, error_responses
from .quotas import quota_exceeded
from .state import Gateway
from .submit import (
    PriorityNotAllowed,
    _check_message_size,
    _check_upload,
    _publish,
    check_bounds,
    check_same_body,
    in_seconds,
)
from .webhook import job_webhook

_encoder = msgspec.json.Encoder()
STATUSES: tuple[JobStatus, ...] = ("queued", "processing", "done", "failed", "expired", "canceled")
_CLIP_FIELDS = (  # a clip's own fields, in refusals
    "startSec", "endSec", "metadata", "precision", "subs", "subs.lang", "subs.translate", "reframe",
)


async def strict_submission(request: Request[Any, Any, Any]) -> None:
    """`POST /api/jobs`'s strict body check: a batch (a JSON object with `clips`) as a BatchRequest, else a
    JobRequest; the value is left for the handler (`checked_body`)."""
    request.scope[BODY_SCOPE_KEY] = submission_of(await json_body(request))  # type: ignore[literal-required,arg-type]


def submission_of(raw: bytes) -> JobRequest | BatchRequest:
    """A declared-JSON body of `POST /api/jobs`, strictly: a BatchRequest when it is an object with `clips`."""
    value = decode_json(raw)
    target = BatchRequest if isinstance(value, dict) and "clips" in value else JobRequest
    return convert_strict(value, target)  # type: ignore[no-any-return]


def clip_request(data: BatchRequest, clip: BatchClip) -> JobRequest:
    """The job request of one clip: the batch's source and options, the clip's range and own options."""
    shared = {name: getattr(data, name) for name in JobRequest.__struct_fields__ if hasattr(data, name)}
    own = {name: getattr(clip, name) for name in clip.__struct_fields__ if getattr(clip, name) is not None}
    return JobRequest(**{**shared, **own})


def _check_clips(data: BatchRequest, gw: Gateway) -> list[JobRequest]:
    settings = gw.res.settings
    if len(data.clips) > settings.max_batch_clips:
        raise BadRequest(
            f"the batch has {len(data.clips)} clips; one request may ask for at most {settings.max_batch_clips} "
            f"(MAX_BATCH_CLIPS): split it", code="too_many_clips", field="clips",
        )
    requests = []
    for index, clip in enumerate(data.clips):
        try:
            request = in_seconds(clip_request(data, clip))
            check_clip(request, settings)
        except BadRequest as exc:
            if exc.field not in _CLIP_FIELDS:
                raise
            raise BadRequest(f"clips[{index}]: {exc.message}", code=exc.code,
                             field=f"clips[{index}].{exc.field}") from exc
        requests.append(request)
    return requests


async def submit_batch(gw: Gateway, data: BatchRequest, idempotency_key: str | None, caller: Caller) -> BatchAccepted:
    """The whole of `POST /api/jobs` with `clips`."""
    res = gw.res
    requests = _check_clips(data, gw)
    check_bounds(requests[0], res.settings)
    if data.priority not in caller.priorities:
        raise PriorityNotAllowed(
            f"this API key may use priority {' or '.join(caller.priorities)}, not {data.priority!r}",
            field="priority",
        )
    webhook = await job_webhook(requests[0], caller, res.settings)  # the batch's (or the key's), for every job
    for breaker in (gw.breakers.db, gw.breakers.nats):
        breaker.refuse_if_open()
    gw.scratch.refuse_if_saturated()
    batch_id = uuid7()
    made = [ClipJobMessage(id=str(uuid7()), owner=caller.owner, batch_id=str(batch_id),
                           **(msgspec.structs.asdict(request) | {"webhook": webhook})) for request in requests]
    tracing.bind_batch(str(batch_id), [job.id for job in made])
    for job in made:
        _check_message_size(gw, job)
    if isinstance(data.source, UploadSource):
        async with gw.breakers.s3:
            await _check_upload(gw, data.source.key, caller)
    async with gw.breakers.db, res.db.acquire() as conn, conn.transaction():
        if idempotency_key is not None:
            digest = hashlib.sha256(_encoder.encode(data)).hexdigest()
            earlier = await idempotency.claim(conn, caller.owner or "", idempotency_key, digest, batch_id)
            if earlier is not None:
                return await _replay(gw, earlier, digest)
        if caller.owner is not None and caller.quotas is not None:
            seconds = sum(r.end_sec - r.start_sec for r in requests)
            exceeded = await batches.admit(conn, caller.owner, caller.quotas, len(made), seconds)
            if exceeded is not None:
                raise quota_exceeded(exceeded, caller.quotas)
        await batches.insert(conn, batch_id, caller.owner, data.source,
                             [(r.start_sec, r.end_sec) for r in requests], [uuid.UUID(j.id) for j in made])
        for job in made:
            await jobs.insert_job(conn, job)
    await _publish_all(gw, batch_id, made)
    return BatchAccepted(batch_id=str(batch_id), jobs=[JobAccepted(id=job.id, status="queued") for job in made])


async def _publish_all(gw: Gateway, batch_id: uuid.UUID, made: list[ClipJobMessage]) -> None:
    """Publish every job (each is marked published); when the queues are full or NATS is away, the rest stay
    saved unpublished and the reaper publishes them later (the outbox), as for a single job."""
    for job in made:
        try:
            await _publish(gw, job)
        except ServiceUnavailable as exc:  # also QueueFull: the rows are written, the outbox sends them
            exc.message = (f"batch {batch_id} is saved ({len(made)} jobs); its jobs not yet queued start once the "
                           f"queues take them. {exc.message}")
            raise
        await gw.writes.mark_published(uuid.UUID(job.id))  # with other requests' marks, as a single job's


async def _replay(gw: Gateway, earlier: idempotency.Earlier, digest: str) -> BatchAccepted:
    """The batch an Idempotency-Key already made, when the body is the same one."""
    check_same_body(earlier, digest)
    batch = await batches.get(gw.res.db, earlier.job_id)
    if batch is None:  # cannot be: the key and the batch are written in one transaction
        raise BadRequest("this Idempotency-Key was used for a single job; use a new key for a batch",
                         code="idempotency_key_reused")
    rows = await batches.jobs_of(gw.res.db, batch)
    return BatchAccepted(batch_id=str(batch.id),
                         jobs=[JobAccepted(id=str(row["id"]), status=row["status"]) for row in rows])


async def readable_batch(gw: Gateway, caller: Caller, batch_id: str) -> batches.Batch:
    """A batch the caller may read; 404 `batch_not_found` otherwise (another key's batch too)."""
    uid = parse_job_id(batch_id)
    if uid is None:
        raise NotFound(f"no batch with id {shown(batch_id)}: batch ids are UUIDs", code="batch_not_found")
    async with gw.breakers.db:
        batch = await batches.get(gw.res.db, uid)
    if batch is None or not caller.may_read(batch.owner):
        raise NotFound(f"no batch with id {uid}", code="batch_not_found")
    return batch


class BatchController(Controller):
    path = "/api/batches"
    tags = ["jobs"]
    before_request = authenticate
    security = SECURITY

    @get("/{batch_id:str}", operation_id="getBatch", responses=error_responses(401, 404, 429, 503))
    async def get_batch(
        self, gw: NamedDependency[Gateway], caller: NamedDependency[Caller],
        batch_id: Annotated[str, PathParameter(description="The batch's id (`batchId` of POST /api/jobs)")],
    ) -> BatchView:
        """A batch's jobs, in the order of its clips, each as `GET /api/jobs/{id}` shows it, and counts by
        status."""
        from .jobs import job_view  # jobs.py routes batch submissions here: imported late, no cycle

        batch = await readable_batch(gw, caller, batch_id)
        async with gw.breakers.db:
            rows = await batches.jobs_of(gw.res.db, batch)
        views = [await job_view(gw, row) for row in rows]
        counts = Counter(view.status for view in views)
        return BatchView(id=str(batch.id), created_at=batch.created_at.isoformat(), jobs=views,
                         counts={status: counts.get(status, 0) for status in STATUSES})
