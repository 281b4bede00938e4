"""NATS JetStream: one work-queue stream, one subject and one durable pull consumer per stage and priority."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import msgspec
import nats
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck, RetentionPolicy, StorageType, StreamConfig

from shared.jobs.contracts import PRIORITIES, ClipJobMessage, JobEvent, Priority
from shared.jobs.pipeline import ENTRY_STAGE, STAGES
from shared.runtime import tracing
from shared.runtime.startup import NotInitialized
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
    shared/runtime/startup.py). Once connected, the client reconnects by itself forever."""
    nc = await nats.connect(
        servers=settings.nats_url.split(","), name=name, reconnect_time_wait=0.5,
        max_reconnect_attempts=1,  # the first connect: one more try per server (with -1 nats-py tries forever)
    )
    nc.options["max_reconnect_attempts"] = -1  # from now on reconnect forever
    return nc


CREATED, KEPT, UPDATED = "created", "kept", "updated"  # what `clipjet init` did to a stream or consumer


def stream_config(settings: Settings) -> StreamConfig:
    """The work-queue stream: every stage subject (and nothing else)."""
    subjects = Subjects(settings.subject_prefix)
    return StreamConfig(
        name=settings.nats_stream,
        subjects=[subjects.stage_wildcard(stage) for stage in STAGES],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=settings.nats_stream_replicas,
        duplicate_window=DUPLICATE_WINDOW_SEC,
        max_age=MAX_MESSAGE_AGE_SEC,
    )


def events_stream(settings: Settings) -> str:
    """The JetStream stream that keeps job end events, so a publisher can read them with a durable consumer."""
    return settings.nats_stream + EVENTS_STREAM_SUFFIX


def events_stream_config(settings: Settings) -> StreamConfig:
    """The end events' stream: limits retention (every consumer sees every event, nothing is removed by reading
    it), kept EVENTS_MAX_AGE_SEC, retried publishes dropped by Nats-Msg-Id."""
    subject = Subjects(settings.subject_prefix).events(">")
    return _job_events_config(settings, events_stream(settings), subject, RetentionPolicy.LIMITS)


def _job_events_config(settings: Settings, name: str, subject: str, retention: RetentionPolicy) -> StreamConfig:
    """A stream of one subject of per-job messages, kept EVENTS_MAX_AGE_SEC, retried publishes dropped by
    Nats-Msg-Id (the end events' and the webhook retries' streams)."""
    return StreamConfig(
        name=name,
        subjects=[subject],
        retention=retention,
        storage=StorageType.FILE,
        num_replicas=settings.nats_stream_replicas,
        duplicate_window=DUPLICATE_WINDOW_SEC,
        max_age=settings.events_max_age_sec,
    )


def stage_consumer_configs(settings: Settings, stage: str) -> list[tuple[str, ConsumerConfig]]:
    """(stream, config) of the stage's durable pull consumers, one per priority."""
    subjects = Subjects(settings.subject_prefix)
    return [
        (settings.nats_stream, ConsumerConfig(
            durable_name=consumer_name(stage, priority),
            filter_subject=subjects.stage(stage, priority),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.queue_visibility_sec,
            max_deliver=settings.max_attempts,  # then the MAX_DELIVERIES advisory (services/reaper/poison.py)
            max_ack_pending=1000,
        ))
        for priority in PRIORITIES
    ]


def webhook_retries_stream(settings: Settings) -> str:
    """The JetStream stream where webhooks that failed their first try wait for the next ones."""
    return settings.nats_stream + WEBHOOK_RETRIES_STREAM_SUFFIX


def webhook_retries_stream_config(settings: Settings) -> StreamConfig:
    """A work queue, one message per job whose webhook failed its first try (see notifier_consumer_configs)."""
    subject = Subjects(settings.subject_prefix).webhook_retry("*")
    return _job_events_config(settings, webhook_retries_stream(settings), subject, RetentionPolicy.WORK_QUEUE)


def notifier_consumer_configs(settings: Settings) -> list[tuple[str, ConsumerConfig]]:
    """The notifier's durable pull consumers (services/notifier). `notifier` on the end events' stream: every
    event from the stream's start, one first try each. A webhook that fails it moves to the retries stream (a work
    queue, one message per job) and `notifier-retry` there: each retry is a nak with a delay (redelivered by
    JetStream however long it takes, across restarts). Waiting retries are ack-pending on `notifier-retry` only,
    so however many fail, first tries never wait for ack-pending room. Deliveries are never limited here; the
    notifier counts them on the job row."""
    ack_wait = settings.webhook_timeout_sec + NOTIFIER_ACK_MARGIN_SEC
    return [
        (webhook_retries_stream(settings), ConsumerConfig(
            durable_name=NOTIFIER_RETRY_CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait,
            max_deliver=-1, max_ack_pending=settings.webhook_max_pending,
        )),
        (events_stream(settings), ConsumerConfig(
            durable_name=NOTIFIER_CONSUMER, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait, max_deliver=-1, max_ack_pending=settings.webhook_max_pending,
        )),
    ]


def stream_configs(settings: Settings) -> list[StreamConfig]:
    """Every stream clipjet uses."""
    return [stream_config(settings), events_stream_config(settings), webhook_retries_stream_config(settings)]


def consumer_configs(settings: Settings) -> list[tuple[str, ConsumerConfig]]:
    """(stream, config) of every durable consumer clipjet uses."""
    return [*notifier_consumer_configs(settings),
            *(pair for stage in STAGES for pair in stage_consumer_configs(settings, stage))]


# The fields of a stream's config that are clipjet's; the rest (replicas, max_bytes, max_msgs, placement, ...)
# belong to the operator and are never changed by clipjet, `--update-streams` included.
CLIPJET_STREAM_FIELDS = ("subjects", "retention", "storage", "duplicate_window", "max_age")


async def make_stream(js: JetStreamContext, config: StreamConfig, *, update: bool = False) -> str:
    """Create the stream when it is missing (CREATED). An existing one is the operator's and is KEPT as it is,
    except that subjects clipjet needs and it lacks are added (a new stage's); with `update`, clipjet's fields
    (CLIPJET_STREAM_FIELDS) are set to `config`'s (UPDATED) and the others still kept."""
    try:
        info = await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        await js.add_stream(config)
        return CREATED
    current = info.config
    if update:
        await js.update_stream(dataclasses.replace(
            current, **{name: getattr(config, name) for name in CLIPJET_STREAM_FIELDS}))
        return UPDATED
    missing = [subject for subject in config.subjects or [] if subject not in (current.subjects or [])]
    if missing:
        await js.update_stream(dataclasses.replace(current, subjects=[*(current.subjects or []), *missing]))
        return UPDATED
    return KEPT


async def make_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig, *, update: bool = False) -> str:
    """Create the durable consumer when it is missing (CREATED); an existing one is KEPT as it is (its limits may
    be the operator's), or with `update` set to `config` (UPDATED)."""
    assert config.durable_name is not None
    try:
        await js.consumer_info(stream, config.durable_name)
    except nats.js.errors.NotFoundError:
        await js.add_consumer(stream, config)
        return CREATED
    if update:
        await js.add_consumer(stream, config)  # the durable's create request updates an existing one
        return UPDATED
    return KEPT


async def ensure_topology(js: JetStreamContext, settings: Settings, *, update: bool = False) -> list[str]:
    """Every stream and durable consumer created when missing (`clipjet init`); one line per thing: what it is and
    CREATED, KEPT or UPDATED."""
    done = [f"stream {config.name}: {await make_stream(js, config, update=update)}"
            for config in stream_configs(settings)]
    for stream, config in consumer_configs(settings):
        outcome = await make_consumer(js, stream, config, update=update)
        done.append(f"consumer {stream}/{config.durable_name}: {outcome}")
    return done


async def require_streams(js: JetStreamContext, settings: Settings) -> None:
    """Every stream clipjet uses exists (services wait for `clipjet init` to make them: NotInitialized)."""
    for config in stream_configs(settings):
        try:
            await js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            raise NotInitialized(f"NATS stream {config.name} does not exist") from None


async def require_consumers(js: JetStreamContext, consumers: list[tuple[str, ConsumerConfig]]) -> None:
    """These durable consumers exist (NotInitialized while one does not)."""
    for stream, config in consumers:
        try:
            await js.consumer_info(stream, config.durable_name)
        except nats.js.errors.NotFoundError:
            raise NotInitialized(f"NATS consumer {stream}/{config.durable_name} does not exist") from None


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
