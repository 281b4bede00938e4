"""One job end → one try at its webhook: sign the job's view, POST it through the guard, keep the outcome on
the job, and say whether (and when) to try again."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from shared.db import jobs, webhooks
from shared.jobs.contracts import JobEvent, WebhookStatus
from shared.jobs.jobview import job_view, request_of
from shared.net.webhook_post import Answer, post_webhook
from shared.net.webhook_sign import EVENT_ID_HEADER, SIGNATURE_HEADER, event_id, signature
from shared.runtime.logs import get_logger
from shared.runtime.resources import Resources
from shared.runtime.retry import backoff_at_least_half

from .slots import Slots, receiver_of

log = get_logger("notifier")
FINISHED_STATES = frozenset({"delivered", "gave_up"})
_encoder = msgspec.json.Encoder()


@dataclass
class NotifierDeps:
    """What the handler gets besides the event."""

    res: Resources
    slots: Slots  # this process's deliveries under way, per receiver and per key


@dataclass(frozen=True)
class Outcome:
    """`retry_after_sec` None: nothing more to do for this event (ack); else try again after it (nak)."""

    status: str  # "no_webhook" | "already_finished" | "already_retrying" | "busy" (no slot: not tried, not counted)
    #              | WebhookStatus
    retry_after_sec: float | None = None


async def handle(event: JobEvent, deps: NotifierDeps, *, first_try: bool = True) -> Outcome:
    """Deliver the job's webhook once, if it has one that is not delivered or given up yet. `first_try`: the event
    comes from the end events (a webhook already `failing` is the retries stream's: not tried here)."""
    res, settings = deps.res, deps.res.settings
    uid = uuid.UUID(event.job_id)
    row = await jobs.get_job(res.db, uid)
    request = request_of(row["request"]) if row is not None else None
    if row is None or request is None or request.webhook is None:
        return Outcome("no_webhook")
    if row["webhook_status"] in FINISHED_STATES:  # a redelivery after its outcome was written
        return Outcome("already_finished")
    if first_try and row["webhook_status"] == "failing":  # a redelivered end event after its first try failed
        return Outcome("already_retrying", 0.0)
    receiver, owner = receiver_of(request.webhook), row["owner"]
    if not deps.slots.take(receiver, owner):  # its receiver's or key's share is in use: back soon, not a try
        return Outcome("busy", random.uniform(settings.webhook_busy_retry_sec,  # a held slot is free within a
                                              max(settings.webhook_busy_retry_sec, settings.webhook_timeout_sec)))
    try:
        return await _try(event, deps, row, request.webhook)
    finally:
        deps.slots.give_back(receiver, owner)


async def _try(event: JobEvent, deps: NotifierDeps, row: Any, url: str) -> Outcome:
    res, settings = deps.res, deps.res.settings
    uid = uuid.UUID(event.job_id)
    attempt = row["webhook_attempts"] + 1
    secret = await webhooks.signing_secret(res.db, row["owner"]) if row["owner"] else None
    secret = secret or settings.webhook_secret
    if not secret:
        answer = Answer(None, "no signing secret: the job has no API key and WEBHOOK_SECRET is not set", final=True)
    else:
        body = _encoder.encode(await job_view(res, row))
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, body, int(time.time())),
                   EVENT_ID_HEADER: event_id(event.job_id, event.status)}
        answer = await post_webhook(url, body, headers, settings)
    status: WebhookStatus = "delivered" if answer.ok else (
        "gave_up" if answer.final or attempt >= settings.webhook_max_attempts else "failing")
    await webhooks.record_attempt(res.db, uid, status, attempt, answer.status_code, answer.error)
    log.info("webhook_attempt", status=status, attempt=attempt, status_code=answer.status_code, error=answer.error)
    if status != "failing":
        return Outcome(status)
    return Outcome(status, backoff_at_least_half(attempt, settings.webhook_retry_base_sec,
                                                 settings.webhook_retry_max_sec))
