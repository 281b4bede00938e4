"""`POST /api/jobs/{id}/cancel`: the row is written `canceled` first (the truth every stage checks), then the
end event is published and a core NATS notice stops the worker running it (shared/runtime/cancel.py)."""

from __future__ import annotations

import uuid

import asyncpg
import msgspec

from shared.db import cancels, jobs
from shared.errors import ClipError, NotFound
from shared.jobs.contracts import JobEvent
from shared.jobs.ids import parse_job_id
from shared.runtime import bus
from shared.runtime.logs import get_logger

from .auth import Caller
from .formats import shown
from .state import Gateway

log = get_logger("gateway")


class JobAlreadyEnded(ClipError):
    """Only a queued or processing job can be canceled."""

    code = "job_already_ended"
    http_status = 409


async def readable_job(gw: Gateway, caller: Caller, job_id: str) -> asyncpg.Record:
    """The row of a job the caller may read; 404 `job_not_found` otherwise (another key's job is answered exactly
    like one that does not exist)."""
    uid = parse_job_id(job_id)
    row = None
    if uid is not None:
        async with gw.breakers.db:
            row = await jobs.get_job(gw.res.db, uid)
    return readable_row(caller, job_id, uid, row)


def readable_row(caller: Caller, job_id: str, uid: uuid.UUID | None, row: asyncpg.Record | None) -> asyncpg.Record:
    """`readable_job` once the row of `job_id` (parsed: `uid`) is read (None: none found, or `uid` is None)."""
    if uid is None:
        raise NotFound(f"no job with id {shown(job_id)}: job ids are UUIDs", code="job_not_found")
    if row is None or not caller.may_read(row["owner"]):
        raise NotFound(f"no job with id {uid}", code="job_not_found")
    return row


async def cancel_job(gw: Gateway, job_id: str, caller: Caller) -> asyncpg.Record:
    """Cancel the caller's job; its row as it is now."""
    row = await readable_job(gw, caller, job_id)
    uid = row["id"]
    async with gw.breakers.db:
        canceled = await cancels.cancel(gw.res.db, uid, caller.owner)
        if canceled is None:
            now = await jobs.get_job(gw.res.db, uid)
            status = now["status"] if now is not None else row["status"]
            raise JobAlreadyEnded(
                f"job {uid} has already ended: its status is {status}; only a queued or processing job can be "
                f"canceled", field="status",
            )
    await _announce(gw, uid, canceled)
    return canceled


async def _announce(gw: Gateway, uid: uuid.UUID, row: asyncpg.Record) -> None:
    """The end event and the stop notice. The cancel stands without them: a worker still running the job sees
    the row at its next heartbeat; only the end event is missing when NATS did not answer."""
    res, job_id = gw.res, str(uid)
    metadata = row["request"].get("metadata") if isinstance(row["request"], dict) else None
    event = JobEvent(job_id=job_id, status="canceled", metadata=metadata if isinstance(metadata, dict) else None)
    try:
        async with gw.breakers.nats:
            await res.nc.publish(res.subjects.cancel(job_id), b"")
            await bus.publish_job_end(res.js, res.subjects, event)
    except Exception as exc:
        log.warning("cancel_announce_failed", job_id=job_id, error=repr(exc), event=msgspec.to_builtins(event))
