"""The reaper's outbox step: queued rows never published (the gateway died, NATS was down, or the job was deferred
at the queue limit) are published to their entry subject, one row at a time.

Each row stands on its own: a row that can never be published (its stored request is not a valid job, or the
server refuses the message) fails its job with `invalid_message`; a row that fails for another reason is left
for the next pass and the step goes on with the next row. Only a NATS outage ends the step early (every row
after it would wait for the same timeout); the next pass starts again from the oldest row.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec
import nats.errors
import nats.js.errors

from shared.db import jobs
from shared.errors import Permanent
from shared.jobs.contracts import ClipJobMessage
from shared.runtime import bus
from shared.runtime.logs import get_logger
from shared.runtime.outage import is_outage
from shared.runtime.resources import Resources
from shared.runtime.worker import finish_job_failed

if TYPE_CHECKING:
    from .handler import ReapReport

log = get_logger("reaper")
UNAVAILABLE_STATUS = 503  # JetStream's "try again": not the row's fault

# The server (or the client, on its behalf) will never take this message, however often it is sent.
REFUSED: tuple[type[BaseException], ...] = (msgspec.EncodeError, nats.errors.MaxPayloadError)


def refused_for_good(exc: BaseException) -> bool:
    """Whether a publish failure is the message's fault (it will fail the same way every time)."""
    if isinstance(exc, nats.js.errors.APIError):
        return exc.code is not None and exc.code != UNAVAILABLE_STATUS and not is_outage(exc)
    return isinstance(exc, REFUSED) and not is_outage(exc)


async def republish_outbox(res: Resources, report: ReapReport) -> None:
    """Unpublished queued rows, oldest first, as far as the backlog leaves room under QUEUE_BACKLOG_LIMIT."""
    settings = res.settings
    room = settings.queue_backlog_limit - await bus.backlog(res.js, settings)
    if room <= 0:
        return
    for row in await jobs.outbox_due(res.db, settings.outbox_grace_sec, min(room, settings.reaper_batch)):
        try:
            await _publish_row(res, report, row["id"], row["created_at"], row["request"])
        except Exception as exc:
            if is_outage(exc):
                raise  # NATS or PostgreSQL is down: the rest would fail alike (reap_once logs the step)
            report.outbox_errors += 1
            log.warning("outbox_row_failed", job_id=str(row["id"]), error=repr(exc))


async def _publish_row(
    res: Resources, report: ReapReport, job_id: uuid.UUID, created_at: datetime, request: object
) -> None:
    try:
        job = msgspec.convert(request, ClipJobMessage)
        subject = await bus.publish_job(res.js, res.subjects, job)
    except Exception as exc:
        if not (isinstance(exc, msgspec.ValidationError) or refused_for_good(exc)):
            raise
        # never published, never will be: fail it rather than retry forever
        await finish_job_failed(res, str(job_id), Permanent(
            f"the stored request cannot be published as a job ({type(exc).__name__}: {str(exc)[:200]}); "
            "submit it again", code="invalid_message",
        ))
        report.outbox_failed += 1
        log.warning("outbox_row_refused", job_id=str(job_id), error=repr(exc)[:300])
        return
    if await jobs.mark_republished(res.db, job_id, created_at, subject):
        report.republished += 1
        log.info("job_republished", job_id=str(job_id), subject=subject)
