"""The notifier's loop: pull events from its two durable consumers in turn (first tries from the end events, retries
from the retries stream), WEBHOOK_CONCURRENCY at a time in all (each consumer at most 3/4 of it), run the handler,
then ack (finished), hand a failed or busy first try to the retries stream (then ack: a waiting webhook is never
ack-pending on the end events' consumer, and never ahead of other keys' new events there), or nak a retry with the
handler's delay (JetStream redelivers it then, whatever happens to us)."""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from dataclasses import dataclass, field

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from shared.jobs.contracts import JobEvent
from shared.runtime import bus, tracing
from shared.runtime.handback import hand_back_later, hand_back_now
from shared.runtime.logs import get_logger
from shared.runtime.ops import ready_while_connected
from shared.runtime.resources import Resources
from shared.runtime.startup import until_up

from .handler import NotifierDeps, handle
from .slots import Slots

log = get_logger("notifier")
FETCH_WAIT_SEC = 0.1  # one pull (of one of the two consumers) waits this long for an event, s
IDLE_WAIT_SEC = 0.25  # when neither consumer had an event (or there was no room), pause this long at most, s
PULL_RETRY_SEC = 1.0  # pause after a pull failed for another reason than "no event", s
_decoder = msgspec.json.Decoder(JobEvent)


@dataclass
class Lane:
    """One consumer's pulls: its deliveries under way, at most `cap` (3/4 of WEBHOOK_CONCURRENCY, so the other lane
    always keeps a quarter)."""

    sub: JetStreamContext.PullSubscription
    first_try: bool
    cap: int
    inflight: set[asyncio.Task[None]] = field(default_factory=set)


async def run_notifier(res: Resources, stop: asyncio.Event) -> None:
    """Deliver webhooks until `stop` is set; deliveries under way get SHUTDOWN_GRACE_SEC, the rest are handed back."""
    settings = res.settings
    await until_up("nats_jetstream", lambda: bus.require_consumers(res.js, bus.notifier_consumer_configs(settings)),
                   settings, stop)
    first = await until_up("nats_jetstream", lambda: res.js.pull_subscribe_bind(
        durable=bus.NOTIFIER_CONSUMER, stream=bus.events_stream(settings)), settings, stop)
    retries = await until_up("nats_jetstream", lambda: res.js.pull_subscribe_bind(
        durable=bus.NOTIFIER_RETRY_CONSUMER, stream=bus.webhook_retries_stream(settings)), settings, stop)
    deps = NotifierDeps(res, Slots(settings.webhook_per_receiver_concurrency, settings.webhook_per_key_concurrency))
    concurrency = settings.webhook_concurrency
    cap = max(1, concurrency - concurrency // 4)
    lanes = (Lane(first, True, cap), Lane(retries, False, cap))
    inflight: set[asyncio.Task[None]] = set()
    stopping = asyncio.create_task(stop.wait())
    ready_while_connected(res.nc)
    log.info("notifier_started", concurrency=concurrency)
    try:
        while not stop.is_set():
            pulled = 0
            for lane in lanes:
                room = min(concurrency - len(inflight), lane.cap - len(lane.inflight))
                if room > 0 and not stop.is_set():
                    pulled += await _pull(lane, room, deps, inflight, stopping)
            if not pulled:  # nothing came (or no room): wait for a delivery to end, or a short while
                await asyncio.wait({*inflight, stopping}, timeout=IDLE_WAIT_SEC, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        await _drain(inflight, settings.shutdown_grace_sec)
        for sub in (first, retries):
            with suppress(Exception):
                await sub.unsubscribe()
        log.info("notifier_stopped")


async def _pull(lane: Lane, room: int, deps: NotifierDeps, inflight: set[asyncio.Task[None]],
                stopping: asyncio.Task[bool]) -> int:
    """Pull up to `room` events of the lane and start their deliveries; how many came."""
    try:
        msgs = await lane.sub.fetch(room, timeout=FETCH_WAIT_SEC)
    except (nats.errors.TimeoutError, TimeoutError):  # no event within FETCH_WAIT_SEC
        return 0
    except Exception as exc:  # a reconnect or a server hiccup: pull again after a pause
        log.warning("pull_failed", error=repr(exc))
        await asyncio.wait({stopping}, timeout=PULL_RETRY_SEC)
        return 0
    for msg in msgs:
        task = asyncio.create_task(_process(msg, deps, lane.first_try))
        for tasks in (inflight, lane.inflight):
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    return len(msgs)


async def _drain(inflight: set[asyncio.Task[None]], grace_sec: float) -> None:
    if not inflight:
        return
    _, late = await asyncio.wait(set(inflight), timeout=grace_sec)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late)


def _retry_wait(msg: Msg) -> float:
    """Seconds until a retry message's first try is due (0: due)."""
    at = (msg.headers or {}).get(bus.RETRY_AT_HEADER)
    try:
        return max(0.0, float(at) - time.time()) if at else 0.0
    except ValueError:
        return 0.0


async def _process(msg: Msg, deps: NotifierDeps, first_try: bool) -> None:
    with tracing.consumer_span("notify", msg.subject, msg.headers, msg.metadata.num_delivered):
        await _handle_event(msg, deps, first_try)


async def _handle_event(msg: Msg, deps: NotifierDeps, first_try: bool) -> None:
    started = time.perf_counter()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(stage="notify", delivery=msg.metadata.num_delivered, first_try=first_try)
    try:
        event = _decoder.decode(msg.data)
    except msgspec.DecodeError as exc:
        log.error("invalid_event", error=str(exc))
        await msg.term()
        return
    structlog.contextvars.bind_contextvars(job_id=event.job_id)
    tracing.bind_job(event.job_id)
    outcome = "error"
    try:
        if not first_try and (wait := _retry_wait(msg)) > 0:  # just moved here: its first retry is not due yet
            outcome = "waiting"
            await msg.nak(delay=wait)
            return
        result = await handle(event, deps, first_try=first_try)
        outcome = result.status
        if result.retry_after_sec is None:
            await msg.ack()
        elif first_try:  # a failed or a busy first try waits in the retries stream, not as ack-pending here
            await bus.publish_webhook_retry(deps.res.js, deps.res.subjects, event, time.time() + result.retry_after_sec)
            await msg.ack()
        else:
            await msg.nak(delay=result.retry_after_sec)
    except asyncio.CancelledError:
        outcome = "handed_back"
        await hand_back_now(msg)
        raise
    except Exception as exc:  # PostgreSQL or NATS failed under us: the event comes back after a pause
        log.error("notify_error", error=repr(exc))
        await hand_back_later(msg, deps.res.settings.retry_base_delay_sec)
    finally:
        tracing.record_outcome(outcome)
        log.info("notify_event", outcome=outcome, ms=round((time.perf_counter() - started) * 1000, 1))
