"""The notifier's loop: pull end events from its durable consumer, WEBHOOK_CONCURRENCY at a time, run the handler,
then ack (finished) or nak with the handler's delay (JetStream redelivers it then, whatever happens to us)."""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg

from shared import bus
from shared.contracts import JobEvent
from shared.logs import get_logger
from shared.resources import Resources
from shared.retry import backoff
from shared.startup import until_up

from .handler import NotifierDeps, handle
from .slots import Slots

log = get_logger("notifier")
FETCH_WAIT_SEC = 1.0  # one pull waits this long for an event (and a stop is noticed within it), s
PULL_RETRY_SEC = 1.0  # pause after a pull failed for another reason than "no event", s
_decoder = msgspec.json.Decoder(JobEvent)


async def run_notifier(res: Resources, stop: asyncio.Event) -> None:
    """Deliver webhooks until `stop` is set; deliveries under way get SHUTDOWN_GRACE_SEC, the rest are handed back."""
    settings = res.settings
    await until_up("nats_jetstream", lambda: bus.ensure_notifier_consumer(res.js, settings), settings)
    sub = await until_up("nats_jetstream", lambda: res.js.pull_subscribe_bind(
        durable=bus.NOTIFIER_CONSUMER, stream=bus.events_stream(settings)), settings)
    deps = NotifierDeps(res, Slots(settings.webhook_per_receiver_concurrency, settings.webhook_per_key_concurrency))
    inflight: set[asyncio.Task[None]] = set()
    stopping = asyncio.create_task(stop.wait())
    log.info("notifier_started", concurrency=settings.webhook_concurrency)
    try:
        while not stop.is_set():
            room = settings.webhook_concurrency - len(inflight)
            if room <= 0:
                await asyncio.wait({*inflight, stopping}, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                msgs = await sub.fetch(room, timeout=FETCH_WAIT_SEC)
            except (nats.errors.TimeoutError, TimeoutError):  # no event within FETCH_WAIT_SEC
                continue
            except Exception as exc:  # a reconnect or a server hiccup: pull again after a pause
                log.warning("pull_failed", error=repr(exc))
                await asyncio.wait({stopping}, timeout=PULL_RETRY_SEC)
                continue
            for msg in msgs:
                task = asyncio.create_task(_process(msg, deps))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
    finally:
        stopping.cancel()
        await _drain(inflight, settings.shutdown_grace_sec)
        with suppress(Exception):
            await sub.unsubscribe()
        log.info("notifier_stopped")


async def _drain(inflight: set[asyncio.Task[None]], grace_sec: float) -> None:
    if not inflight:
        return
    _, late = await asyncio.wait(set(inflight), timeout=grace_sec)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late)


async def _process(msg: Msg, deps: NotifierDeps) -> None:
    started = time.perf_counter()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(stage="notify", delivery=msg.metadata.num_delivered)
    try:
        event = _decoder.decode(msg.data)
    except msgspec.DecodeError as exc:
        log.error("invalid_event", error=str(exc))
        await msg.term()
        return
    structlog.contextvars.bind_contextvars(job_id=event.job_id)
    outcome = "error"
    try:
        result = await handle(event, deps)
        outcome = result.status
        if result.retry_after_sec is None:
            await msg.ack()
        else:
            await msg.nak(delay=result.retry_after_sec)
    except asyncio.CancelledError:
        outcome = "handed_back"
        with suppress(Exception):
            await asyncio.shield(msg.nak())
        raise
    except Exception as exc:  # PostgreSQL or NATS failed under us: the event comes back after a pause
        log.error("notify_error", error=repr(exc))
        with suppress(Exception):
            await msg.nak(delay=backoff(msg.metadata.num_delivered, deps.res.settings.retry_base_delay_sec))
    finally:
        log.info("notify_event", outcome=outcome, ms=round((time.perf_counter() - started) * 1000, 1))
