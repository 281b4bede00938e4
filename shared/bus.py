"""NATS JetStream: one work-queue stream, one subject and one durable pull consumer per stage and priority."""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck, RetentionPolicy, StorageType, StreamConfig

from shared import tracing
from shared.contracts import PRIORITIES, ClipJobMessage, JobEvent, Priority
from shared.pipeline import ENTRY_STAGE, STAGES
from shared.settings import Settings

DUPLICATE_WINDOW_SEC = 120.0  # Nats-Msg-Id de-duplication window
EVENTS_STREAM_SUFFIX = "_EVENTS"  # the end events' stream is <NATS_STREAM>_EVENTS
END_MSG_ID_SUFFIX = "end"  # a job's end event has Nats-Msg-Id <jobId>:end
MAX_MESSAGE_AGE_SEC = 7 * 24 * 3600.0  # a message nobody takes is dropped after a week
NOTIFIER_CONSUMER = "notifier"  # the webhook notifier's durable consumer on the end events' stream
NOTIFIER_ACK_MARGIN_SEC = 30.0  # its ack_wait is one delivery's WEBHOOK_TIMEOUT_SEC plus this, s
WEBHOOK_RETRIES_STREAM_SUFFIX = "_WEBHOOK_RETRIES"  # webhooks that failed a try wait in <NATS_STREAM>_WEBHOOK_RETRIES
NOTIFIER_RETRY_CONSUMER = "notifier-retry"  # the notifier's durable consumer on that stream
RETRY_AT_HEADER = "Clipjet-Retry-At"  # a retry message's earliest try, unix time (s)
RETRY_MSG_ID_SUFFIX = "webhook-retry"  # a job's retry message has Nats-Msg-Id <jobId>:webhook-retry
_encoder = msgspec.json.Encoder()


class Subjects:
    """Subject names under the configured prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def stage(self, stage: str, priority: Priority) -> str:
        return f"{self.prefix}.{stage}.{priority}"

    def stage_wildcard(self, stage: str) -> str:
        return f"{self.prefix}.{stage}.*"

    def progress(self, job_id: str) -> str:
        return f"{self.prefix}.progress.{job_id}"

    def events(self, job_id: str) -> str:
        """A job's end event (`*`: every job's); kept in the events stream."""
        return f"{self.prefix}.events.{job_id}"

    def webhook_retry(self, job_id: str) -> str:
        """A job whose webhook failed its first try waits here for its retries (`*`: every job's)."""
        return f"{self.prefix}.webhook_retry.{job_id}"

    def cancel(self, job_id: str) -> str:
        """Core NATS: a job was canceled, the worker running it stops (`*`: every job's); shared/cancel.py."""
        return f"{self.prefix}.cancel.{job_id}"

    def scratch(self, node: str = "*") -> str:
        """Core NATS: a node's scratch-space reports (`*`: every node's)."""
        return f"{self.prefix}.scratch.{node}"


def consumer_name(stage: str, priority: Priority) -> str:
    return f"{stage}-{priority}"


def max_deliveries_subject(stream: str) -> str:
    """The advisory JetStream sends when a message of one of the stream's consumers used its last delivery."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*"


def msg_id(job_id: str, stage: str) -> str:
    """The Nats-Msg-Id of a job's message to a stage: a retried publish is dropped by the server."""
    return f"{job_id}:{stage}"


async def connect(settings: Settings, name: str) -> NatsClient:
    """Connected, or an error at once when no server answers (the caller waits and tries again, logging it:
    shared/startup.py). Once connected, the client reconnects by itself forever."""
    nc = await nats.connect(
        servers=settings.nats_url.split(","), name=name, reconnect_time_wait=0.5,
        max_reconnect_attempts=1,  # the first connect: one more try per server (with -1 nats-py tries forever)
    )
    nc.options["max_reconnect_attempts"] = -1  # from now on reconnect forever
    return nc


async def _add_or_update_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one to `config`."""
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    """Create or update the stream so it holds every stage subject (and nothing else)."""
    subjects = Subjects(settings.subject_prefix)
    config = StreamConfig(
        name=settings.nats_stream,
        subjects=[subjects.stage_wildcard(stage) for stage in STAGES],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SEC,
        max_age=MAX_MESSAGE_AGE_SEC,
    )
    await _add_or_update_stream(js, config)


def events_stream(settings: Settings) -> str:
    """The JetStream stream that keeps job end events, so a publisher can read them with a durable consumer."""
    return settings.nats_stream + EVENTS_STREAM_SUFFIX


async def ensure_events_stream(js: JetStreamContext, settings: Settings) -> None:
    """Create or update the end events' stream: limits retention (every consumer sees every event, nothing is
    removed by reading it), kept EVENTS_MAX_AGE_SEC, retried publishes dropped by Nats-Msg-Id."""
    config = StreamConfig(
        name=events_stream(settings),
        subjects=[Subjects(settings.subject_prefix).events(">")],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SEC,
        max_age=settings.events_max_age_sec,
    )
    await _add_or_update_stream(js, config)


async def ensure_consumers(js: JetStreamContext, settings: Settings, stage: str) -> None:
    """The stage's durable pull consumers, one per priority (created before any worker scales)."""
    subjects = Subjects(settings.subject_prefix)
    for priority in PRIORITIES:
        await js.add_consumer(
            settings.nats_stream,
            ConsumerConfig(
                durable_name=consumer_name(stage, priority),
                filter_subject=subjects.stage(stage, priority),
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=settings.queue_visibility_sec,
                max_deliver=settings.max_attempts,  # then the MAX_DELIVERIES advisory (services/reaper/poison.py)
                max_ack_pending=1000,
            ),
        )


def webhook_retries_stream(settings: Settings) -> str:
    """The JetStream stream where webhooks that failed their first try wait for the next ones."""
    return settings.nats_stream + WEBHOOK_RETRIES_STREAM_SUFFIX


async def ensure_notifier_consumer(js: JetStreamContext, settings: Settings) -> None:
    """The notifier's durable pull consumers (services/notifier). `notifier` on the end events' stream: every
    event from the stream's start, one first try each. A webhook that fails it moves to the retries stream (a work
    queue, one message per job) and `notifier-retry` there: each retry is a nak with a delay (redelivered by
    JetStream however long it takes, across restarts). Waiting retries are ack-pending on `notifier-retry` only,
    so however many fail, first tries never wait for ack-pending room. Deliveries are never limited here; the
    notifier counts them on the job row."""
    config = StreamConfig(
        name=webhook_retries_stream(settings),
        subjects=[Subjects(settings.subject_prefix).webhook_retry("*")],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SEC,
        max_age=settings.events_max_age_sec,
    )
    await _add_or_update_stream(js, config)
    await js.add_consumer(
        webhook_retries_stream(settings),
        ConsumerConfig(
            durable_name=NOTIFIER_RETRY_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.webhook_timeout_sec + NOTIFIER_ACK_MARGIN_SEC,
            max_deliver=-1,
            max_ack_pending=settings.webhook_max_pending,
        ),
    )
    await js.add_consumer(
        events_stream(settings),
        ConsumerConfig(
            durable_name=NOTIFIER_CONSUMER,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.webhook_timeout_sec + NOTIFIER_ACK_MARGIN_SEC,
            max_deliver=-1,
            max_ack_pending=settings.webhook_max_pending,
        ),
    )


async def ensure_topology(js: JetStreamContext, settings: Settings) -> None:
    """Streams, every stage's consumers and the notifier's."""
    await ensure_stream(js, settings)
    await ensure_events_stream(js, settings)
    await ensure_notifier_consumer(js, settings)
    for stage in STAGES:
        await ensure_consumers(js, settings, stage)


async def backlog(js: JetStreamContext, settings: Settings) -> int:
    """Messages waiting or handed out and not yet acked, over every stage and priority (what KEDA scales on)."""
    infos = await asyncio.gather(*(
        js.consumer_info(settings.nats_stream, consumer_name(stage, priority))
        for stage in STAGES for priority in PRIORITIES
    ))
    return sum(info.num_pending + info.num_ack_pending for info in infos)


class BacklogGauge:
    """The backlog, read at most every BACKLOG_CHECK_SEC (one consumer lookup per stage and priority, all at once).

    One reading at a time: requests that find the reading stale while it is being refreshed wait for that
    refresh instead of each starting their own."""

    def __init__(self, js: JetStreamContext, settings: Settings) -> None:
        self._js, self._settings = js, settings
        self._value, self._read_at = 0, float("-inf")
        self._reading: asyncio.Future[None] | None = None

    async def over_limit(self) -> bool:
        if time.monotonic() - self._read_at >= self._settings.backlog_check_sec:
            if self._reading is None:
                self._reading = asyncio.ensure_future(self._read())
            await asyncio.shield(self._reading)
        return self._value >= self._settings.queue_backlog_limit

    async def _read(self) -> None:
        try:
            began = time.monotonic()
            self._value, self._read_at = await backlog(self._js, self._settings), began
        finally:
            self._reading = None


async def publish(js: JetStreamContext, subject: str, payload: bytes, message_id: str, job_id: str | None = None,
                  headers: dict[str, str] | None = None) -> PubAck:
    """Publish `job_id`'s message with `Nats-Msg-Id` (and the trace context, when tracing is on); the ack names
    the stream sequence (the first copy's, for a duplicate)."""
    headers = {"Nats-Msg-Id": message_id, **(headers or {})}
    with tracing.producer_span(subject, job_id, headers):
        return await js.publish(subject, payload, headers=headers)


async def publish_job(js: JetStreamContext, subjects: Subjects, job: ClipJobMessage) -> str:
    """Put a new job on its entry subject (what the gateway does, and the reaper for the outbox); the subject."""
    subject = subjects.stage(ENTRY_STAGE, job.priority)
    await publish(js, subject, _encoder.encode(job), msg_id(job.id, ENTRY_STAGE), job.id)
    return subject


async def publish_job_end(js: JetStreamContext, subjects: Subjects, event: JobEvent) -> None:
    """Announce a job's end on `<prefix>.events.<jobId>`: kept in the events stream (a retried publish is dropped
    by its Nats-Msg-Id) and delivered to core subscribers too."""
    await publish(js, subjects.events(event.job_id), _encoder.encode(event), msg_id(event.job_id, END_MSG_ID_SUFFIX),
                  event.job_id)


async def publish_webhook_retry(js: JetStreamContext, subjects: Subjects, event: JobEvent, at: float) -> None:
    """Hand a job's webhook to the retries stream, to be tried again at unix time `at` (a retried publish, or a
    second one within DUPLICATE_WINDOW_SEC, is dropped by its Nats-Msg-Id)."""
    await publish(js, subjects.webhook_retry(event.job_id), _encoder.encode(event),
                  msg_id(event.job_id, RETRY_MSG_ID_SUFFIX), event.job_id, {RETRY_AT_HEADER: f"{at:.3f}"})
