"""Messages no worker will deliver again: the MAX_DELIVERIES advisory, and the message check for silent jobs.

A message that used its last delivery (MAX_ATTEMPTS, the consumers' `max_deliver`) without an ack, because the
worker holding it died each time (a poison message), is never delivered again: JetStream announces it on
`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`. The reaper listens there, reads the message by
its stream sequence, fails its job with `max_deliveries_exceeded` and deletes the message. An advisory is a core
NATS message and is lost when no reaper listens; the stuck step (lost.fail_stuck) catches those jobs later
with `message_state`, from the stream sequences the worker runtime records in `job_events`.
"""

from __future__ import annotations

import uuid
from contextlib import suppress
from enum import Enum

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.db import jobs
from shared.errors import Permanent
from shared.runtime import bus
from shared.runtime.logs import get_logger
from shared.runtime.resources import Resources
from shared.runtime.worker import finish_job_failed, message_job_id

log = get_logger("reaper")
MAX_DELIVERIES_CODE = "max_deliveries_exceeded"


class MaxDeliveriesAdvisory(msgspec.Struct):
    """The fields of JetStream's io.nats.jetstream.advisory.v1.max_deliver we use."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int = 0


class MessageState(Enum):
    """Where a silent job's current message is."""

    WAITING = "waiting"  # in the stream and deliverable: a worker will take it (none may be running now)
    EXHAUSTED = "exhausted"  # in the stream but past its last delivery: nobody will ever take it
    GONE = "gone"  # acked or removed: nothing will move the job any more
    UNKNOWN = "unknown"  # no stream sequence recorded (rows from before it was recorded)


_advisory_decoder = msgspec.json.Decoder(MaxDeliveriesAdvisory)


async def fail_exhausted(res: Resources, seq: int, deliveries: int, consumer: str) -> str | None:
    """Fail the job of the message at `seq` (it used its last delivery) and delete the message; the job id."""
    stream = res.settings.nats_stream
    try:
        raw = await res.js.get_msg(stream, seq)
    except nats.js.errors.NotFoundError:
        return None  # acked in the meantime (a slow worker finished after all)
    job_id = message_job_id(raw.data or b"")
    if job_id is not None:
        await finish_job_failed(res, job_id, Permanent(
            f"the {consumer} worker stopped without finishing this job {deliveries} times in a row (it may crash "
            f"on this input); it is not tried again", code=MAX_DELIVERIES_CODE,
        ))
    with suppress(nats.js.errors.NotFoundError):
        await res.js.delete_msg(stream, seq)
    log.warning("max_deliveries_exceeded", job_id=job_id, seq=seq, consumer=consumer, deliveries=deliveries)
    return job_id


async def watch_max_deliveries(res: Resources) -> Subscription:
    """Subscribe to the stream's MAX_DELIVERIES advisories (every reaper replica does; failing is idempotent)."""

    async def on_advisory(msg: Msg) -> None:
        try:
            advisory = _advisory_decoder.decode(msg.data)
            await fail_exhausted(res, advisory.stream_seq, advisory.deliveries, advisory.consumer)
        except Exception as exc:  # the stuck step catches the job later
            log.error("max_deliveries_advisory_failed", error=repr(exc))

    return await res.nc.subscribe(bus.max_deliveries_subject(res.settings.nats_stream), cb=on_advisory)


async def message_state(res: Resources, job_id: uuid.UUID) -> tuple[MessageState, int | None]:
    """The state of the message the job waits on (the last one a stage took or published) and its sequence."""
    event = await jobs.last_stage_event(res.db, job_id)
    data = event["data"] if event is not None else None
    seq = data.get("seq") if isinstance(data, dict) else None
    if not isinstance(seq, int):
        return MessageState.UNKNOWN, None
    try:
        raw = await res.js.get_msg(res.settings.nats_stream, seq)
    except nats.js.errors.NotFoundError:
        return MessageState.GONE, seq
    if message_job_id(raw.data or b"") != str(job_id):  # a crash lost it, and its number went to a new message
        return MessageState.GONE, seq
    taken_last_time = event is not None and event["type"] == "stage_started"
    if taken_last_time and int(data.get("attempt", 0)) >= res.settings.max_attempts:
        return MessageState.EXHAUSTED, seq
    return MessageState.WAITING, seq
