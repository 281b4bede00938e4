"""The worker runtime every stage shares: priority-ordered pulls, heartbeats, ack/nak/term, logging context.

A stage is a `StageSpec`: a name, its input type and one `async def handle(task, deps)` that returns the
next stage's message (or None at the end of the route). Everything else about running it lives here.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.db import jobs
from shared.db import refused as refused_jobs
from shared.errors import ClipError, Permanent, Transient
from shared.jobs.contracts import PRIORITIES, ClipJobMessage, ClipResult, JobEvent, StageMessage
from shared.jobs.jobrules import refusal_for_decode_error, refused_request
from shared.runtime import bus, tracing
from shared.runtime.cancel import CancelWatch, JobCanceled, Run
from shared.runtime.handback import hand_back_later, hand_back_now
from shared.runtime.heap import trim_free_heap
from shared.runtime.logs import get_logger
from shared.runtime.metrics import record_claim, record_stage_message
from shared.runtime.ops import HEALTH, ready_while_connected
from shared.runtime.outage import OutageBudget, hold, is_outage
from shared.runtime.progress import Progress, heartbeat_loop
from shared.runtime.resources import Resources
from shared.runtime.retry import backoff
from shared.runtime.startup import StopRequested, until_up
from shared.storage.scratch import ScratchGate

log = get_logger("worker")
T = TypeVar("T", ClipJobMessage, StageMessage)
PULL_RETRY_SEC = 1.0  # pause after a pull request failed for another reason than "no message", s
PULL_REQUEST_TIMEOUT_SEC = 5.0  # longest wait for JetStream's answer to one no_wait pull, s
IDLE_PROBE_SEC = 1.0  # with every queue empty, pull again this often even without a publish heard, s
# after hearing a publish, pull after each of these pauses in turn until the message is there (the stream stores
# it a moment after we hear of it: fsync'd); then wait for the next publish (or IDLE_PROBE_SEC) again, s
WAKE_SETTLE_SEC = (0.005, 0.015)
JS_API_PREFIX = "$JS.API"
NO_WAIT_PULL = b'{"batch":1,"no_wait":true}'  # one message if one waits, else a 404 status at once
_encoder = msgspec.json.Encoder()


class _JobRef(msgspec.Struct):
    id: str = ""


class _AnyMessage(msgspec.Struct):
    """Just enough of either input shape to find the job id of a message that failed to decode."""

    id: str = ""
    job: _JobRef | None = None


_any_decoder = msgspec.json.Decoder(_AnyMessage)


@dataclass
class StageDeps:
    """What a handler gets besides its message."""

    res: Resources
    progress: Progress
    scratch: Path  # an empty folder of this message's own, removed afterwards
    attempt: int  # this delivery's number, 1 on the first
    local: Any = None  # what the stage's `open_local` opened for this process (e.g. a loaded model)


@dataclass(frozen=True)
class StageSpec(Generic[T]):
    name: str
    input_type: type[T]
    handle: Callable[[T, StageDeps], Awaitable[StageMessage | None]]
    # A resource of the stage's own (a model, a device), opened once when the worker starts, not per message.
    open_local: Callable[[Resources], AbstractAsyncContextManager[Any]] | None = None
    uses_scratch: bool = False  # reserve SCRATCH_RESERVE_MB of the node's scratch quota per message

    def decoder(self) -> msgspec.json.Decoder[T]:
        return msgspec.json.Decoder(self.input_type)


def job_of(task: ClipJobMessage | StageMessage) -> ClipJobMessage:
    return task if isinstance(task, ClipJobMessage) else task.job


def stage_position(task: ClipJobMessage | StageMessage, default_total: int) -> tuple[int, int]:
    """(stages done, stages in all) for mapping a stage's progress onto the job."""
    if isinstance(task, ClipJobMessage):
        return 0, default_total
    return len(task.done), len(task.done) + len(task.route)


async def finish_job_done(
    res: Resources, job_id: str, result: ClipResult, video_key: str, files: dict[str, str] | None = None
) -> bool:
    """Job → done (once) with its clip's and other result files' keys (by role) and announce it on
    `<prefix>.events.<jobId>`; False when it had already ended."""
    uid = uuid.UUID(job_id)
    ended = await jobs.complete(res.db, uid, result, video_key, res.settings.retention_hours * 3600, files)
    if ended is None:
        return False
    event = JobEvent(job_id=job_id, status="done", result=result, metadata=ended.metadata)
    await bus.publish_job_end(res.js, res.subjects, event)
    return True


async def finish_job_failed(res: Resources, job_id: str, error: ClipError, refused: bytes | None = None) -> None:
    """Fail the job (once) and announce it on `<prefix>.events.<jobId>`.

    `refused`: the message was refused before any stage began it; the job's row is written (failed, keeping
    the message) when there is none yet, so its publisher can read why.
    """
    uid = uuid.UUID(job_id)
    metadata = None
    if refused is None:
        failed = await jobs.fail(res.db, uid, error.code, error.message)
        ended, metadata = failed is not None, failed.metadata if failed else None
    else:
        ended = await refused_jobs.refuse(res.db, uid, error.code, error.message, *refused_request(refused))
    if ended:
        event = JobEvent(job_id=job_id, status="failed", error_code=error.code, metadata=metadata)
        await bus.publish_job_end(res.js, res.subjects, event)


class PrioritySource:
    """Hands out one message at a time from a stage's fast, normal and bulk consumers, highest priority first.

    It pulls only when asked, i.e. when a slot is free: every pull is a `no_wait` request for one message, fast
    first, then normal, then bulk, so no message is ever delivered to this process to wait for a slot (a
    message waiting without `in_progress()` would see its ack_wait lapse and spend a delivery). While every
    queue is empty it waits for a publish on the stage's subjects (a core subscription, the wake-up call) or
    IDLE_PROBE_SEC, whichever comes first (redeliveries after a nak delay or an ack_wait publish nothing).
    """

    def __init__(self, nc: NatsClient, stream: str, stage: str, subjects: bus.Subjects) -> None:
        self._nc = nc
        self._next_subjects = [f"{JS_API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{bus.consumer_name(stage, p)}"
                               for p in PRIORITIES]
        self._wake_subject = subjects.stage_wildcard(stage)
        self._wake = asyncio.Event()
        self._sub: Subscription | None = None

    async def open(self) -> None:
        async def on_publish(_: Msg) -> None:
            self._wake.set()

        self._sub = await self._nc.subscribe(self._wake_subject, cb=on_publish)

    async def next(self, stopping: asyncio.Event) -> Msg | None:
        """The highest-priority message ready, waiting for one as long as needed; None once `stopping` is set."""
        settling: list[float] = []  # pauses left before pulling again after a publish was heard
        while not stopping.is_set():
            self._wake.clear()
            try:
                msg = await self._probe()
            except Exception as exc:  # a reconnect or a server hiccup: pull again after a pause
                log.warning("pull_failed", error=repr(exc))
                await _wait_any(stopping, PULL_RETRY_SEC)
                continue
            if msg is not None:
                return msg
            if not settling:
                await _wait_any(stopping, IDLE_PROBE_SEC, self._wake)
                if self._wake.is_set():  # published: the stream may store it a moment after we hear of it
                    settling = list(WAKE_SETTLE_SEC)
            if settling:
                await _wait_any(stopping, settling.pop(0))
        return None

    async def _probe(self) -> Msg | None:
        for subject in self._next_subjects:
            # old_style: a reply inbox of its own, as JetStream delivers the message under its own subject
            msg = await self._nc.request(subject, NO_WAIT_PULL, timeout=PULL_REQUEST_TIMEOUT_SEC, old_style=True)
            if not msg.headers or not msg.headers.get("Status"):  # a status (404: nothing waits) is no message
                return msg
        return None

    async def close(self) -> None:
        if self._sub is not None:
            with suppress(Exception):
                await self._sub.unsubscribe()


async def _wait_any(stopping: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    """Wait `seconds`, or less when `stopping` (or `wake`) is set."""
    waiters = {asyncio.create_task(e.wait()) for e in (stopping, wake) if e is not None}
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _acquire_unless_stopping(slots: asyncio.Semaphore, stopping: asyncio.Event) -> bool:
    """Take a slot, or give up once `stopping` is set (a stop must not wait for a busy slot to free: in-flight
    work gets SHUTDOWN_GRACE_SEC in `_drain`, then is handed back). True when a slot was taken."""
    acquire = asyncio.create_task(slots.acquire())
    stop = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not acquire.done():
            acquire.cancel()
            with suppress(asyncio.CancelledError):
                await acquire
    if acquire.cancelled():
        return False
    if stopping.is_set():
        slots.release()
        return False
    return True


class Worker(Generic[T]):
    """Runs one stage: WORKER_CONCURRENCY messages at once, graceful stop on `stop()`."""

    def __init__(self, spec: StageSpec[T], res: Resources, default_route_len: int) -> None:
        self.spec = spec
        self.res = res
        self._decoder = spec.decoder()
        self._default_total = default_route_len
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._local: Any = None
        self._cancels = CancelWatch(res.nc, res.subjects, res.db)

    def stop(self) -> None:
        HEALTH.mark_draining()
        self._stopping.set()

    async def run(self) -> None:
        async with AsyncExitStack() as stack:
            if self.spec.open_local is not None:
                self._local = await stack.enter_async_context(self.spec.open_local(self.res))
            try:
                await self._run()
            except StopRequested:  # asked to stop before it was bound to its consumers: nothing was taken
                log.info("worker_stopped_before_start", stage=self.spec.name)

    async def _run(self) -> None:
        settings = self.res.settings
        # NATS may have gone away while the stage opened its own resource (a model load takes seconds)
        await until_up("nats_jetstream", lambda: bus.require_consumers(
            self.res.js, bus.stage_consumer_configs(settings, self.spec.name)), settings, self._stopping)
        source = PrioritySource(self.res.nc, settings.nats_stream, self.spec.name, self.res.subjects)
        await until_up("nats", source.open, settings, self._stopping)
        await until_up("nats", self._cancels.open, settings, self._stopping)
        slots = asyncio.Semaphore(settings.worker_concurrency)
        stopping = asyncio.create_task(self._stopping.wait())
        gate = ScratchGate(self.res.nc, settings) if self.spec.uses_scratch else None
        ready_while_connected(self.res.nc)  # connected and bound to its consumers
        log.info("worker_started", stage=self.spec.name, concurrency=settings.worker_concurrency)
        try:
            while not self._stopping.is_set():
                if not await _acquire_unless_stopping(slots, self._stopping):  # every slot busy until the stop
                    break
                if gate is not None and not await gate.before_pull(stopping):  # no room: pull nothing yet
                    slots.release()
                    break
                msg = await source.next(self._stopping)  # only now, with a slot free (never cancelled mid-pull)
                if msg is None:
                    slots.release()
                    break
                ticket = gate.take() if gate is not None else ""
                task = asyncio.create_task(self._process(msg))
                self._inflight.add(task)
                task.add_done_callback(lambda t, k=ticket: self._done(t, k, slots, gate))
        finally:
            if gate is not None:
                await gate.close()
            stopping.cancel()
            await source.close()
            await self._drain()  # a job canceled meanwhile still stops at once
            await self._cancels.close()
            log.info("worker_stopped", stage=self.spec.name)

    def _done(self, task: asyncio.Task[None], ticket: str, slots: asyncio.Semaphore, gate: ScratchGate | None) -> None:
        self._inflight.discard(task)
        slots.release()
        if gate is not None:
            gate.give_back(ticket)

    async def _drain(self) -> None:
        """Let in-flight work finish within SHUTDOWN_GRACE_SEC; the rest is handed back (nak)."""
        if not self._inflight:
            return
        _, late = await asyncio.wait(set(self._inflight), timeout=self.res.settings.shutdown_grace_sec)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    async def _process(self, msg: Msg) -> None:
        with tracing.consumer_span(self.spec.name, msg.subject, msg.headers, msg.metadata.num_delivered):
            await self._handle_message(msg)
        if self.res.settings.malloc_trim_after_message:  # RSS stays flat across jobs (shared.runtime.heap)
            await asyncio.to_thread(trim_free_heap)  # off the event loop: a trim can take tens of ms

    async def _handle_message(self, msg: Msg) -> None:
        started = time.perf_counter()
        attempt = msg.metadata.num_delivered
        priority = msg.subject.rpartition(".")[2]  # <prefix>.<stage>.<priority>
        record_claim(self.spec.name, priority, attempt, msg.metadata.timestamp.timestamp())
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(stage=self.spec.name, attempt=attempt)
        try:
            task = self._decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            await self._reject(msg, exc)
            record_stage_message(self.spec.name, priority, "invalid", time.perf_counter() - started)
            return
        job = job_of(task)
        structlog.contextvars.bind_contextvars(job_id=job.id)
        tracing.bind_job(job.id)
        outcome = "ok"
        try:
            outcome = await self._run_through_outages(msg, task, job, attempt)
        except asyncio.CancelledError:
            outcome = "handed_back"
            await hand_back_now(msg)
            raise
        except Exception as exc:  # the runtime itself could not talk to PostgreSQL or NATS: try again later
            outcome = "runtime_error"
            log.error("runtime_error", error=repr(exc))
            await hand_back_later(msg, self.res.settings.retry_base_delay_sec)
        finally:
            seconds = time.perf_counter() - started
            record_stage_message(self.spec.name, priority, outcome, seconds)
            tracing.record_outcome(outcome)
            log.info("stage_message", outcome=outcome, ms=round(seconds * 1000, 1), priority=job.priority)

    async def _run_through_outages(self, msg: Msg, task: T, job: ClipJobMessage, attempt: int) -> str:
        """Run the stage; through a PostgreSQL or NATS outage, hold the message and run it again on the same
        delivery once they answer (within OUTAGE_WAIT_SEC), so an outage does not spend the job's attempts."""
        budget = OutageBudget(self.res.settings.outage_wait_sec)
        while True:
            try:
                return await self._run_handler(msg, task, job, attempt)
            except Exception as exc:
                pause = budget.next_pause() if is_outage(exc) else None
                if pause is None:
                    raise
                log.warning("dependency_outage", error=repr(exc), waited_sec=round(budget.waited_sec, 2))
                await hold(msg, pause, self.res.settings.heartbeat_ms / 1000)

    async def _run_handler(self, msg: Msg, task: T, job: ClipJobMessage, attempt: int) -> str:
        with self._cancels.watching(job.id) as run:  # before begin_stage: a cancel notice cannot slip between
            try:
                return await self._run_stage(msg, task, job, attempt, run)
            except JobCanceled:  # the client canceled it: nothing is passed on, nothing marks it done
                await msg.ack()
                return "canceled"

    async def _run_stage(self, msg: Msg, task: T, job: ClipJobMessage, attempt: int, run: Run) -> str:
        res, settings = self.res, self.res.settings
        seq = msg.metadata.sequence.stream
        status = await jobs.begin_stage(res.db, job, self.spec.name, attempt, seq)
        if status != "processing":
            await msg.ack()
            return f"skipped_{status}"
        done, total = stage_position(task, self._default_total)
        progress = Progress(self.spec.name, done, total)
        scratch = Path(tempfile.mkdtemp(prefix=f"{self.spec.name}-", dir=_scratch_root(settings.scratch_dir)))
        beat = asyncio.create_task(heartbeat_loop(res, msg, job.id, progress, run.cancel))
        try:
            following = await run.run(self.spec.handle(task, StageDeps(res, progress, scratch, attempt, self._local)))
            finished: dict[str, Any] = {"stage": self.spec.name}
            if following is not None:
                nxt = following.route[0]
                ack = await bus.publish(
                    res.js, res.subjects.stage(nxt, job.priority), _encoder.encode(following),
                    bus.msg_id(job.id, nxt), job.id,
                )
                finished |= {"next": nxt, "seq": ack.seq}  # where the job waits now (the reaper looks there)
            await jobs.record_event(res.db, uuid.UUID(job.id), "stage_finished", finished)
            await msg.ack()
            return "ok"
        except JobCanceled:
            raise
        except Permanent as exc:
            await asyncio.shield(self._fail(msg, job, exc))
            return f"failed_{exc.code}"
        except Exception as exc:
            if is_outage(exc):  # not the job's fault: _run_through_outages tries again on this delivery
                raise
            error = exc if isinstance(exc, Transient) else Transient(f"internal error: {exc!r}", code="internal_error")
            log.warning("stage_error", code=error.code, error=error.message, exc_info=not isinstance(exc, ClipError))
            if attempt >= settings.max_attempts:
                await asyncio.shield(self._fail(msg, job, error))
                return f"failed_{error.code}"
            delay = backoff(attempt, settings.retry_base_delay_sec)
            await jobs.requeue(res.db, uuid.UUID(job.id), error.code, error.message, attempt, delay)
            await msg.nak(delay=delay)
            return f"retry_{error.code}"
        finally:
            beat.cancel()
            shutil.rmtree(scratch, ignore_errors=True)

    async def _fail(self, msg: Msg, job: ClipJobMessage, error: ClipError) -> None:
        await finish_job_failed(self.res, job.id, error)
        await msg.term()

    async def _reject(self, msg: Msg, exc: msgspec.DecodeError) -> None:
        """A message that is not this stage's contract: fail its job if it names one (writing its row when there
        is none), and drop it. A job message published straight to NATS gets the code the gateway gives for the
        same body (e.g. start_negative); a routing slip between stages, `invalid_message`."""
        if self.spec.input_type is ClipJobMessage:
            error: ClipError = refusal_for_decode_error(exc)
        else:
            error = Permanent(f"the message does not match the {self.spec.name} contract: {exc}",
                              code="invalid_message")
        log.error("invalid_message", code=error.code, error=error.message)
        job_id = message_job_id(msg.data)
        tracing.record_outcome(f"failed_{error.code}")
        if job_id is not None:
            tracing.bind_job(job_id)
            await finish_job_failed(self.res, job_id, error, refused=msg.data)
        await msg.term()


def message_job_id(data: bytes) -> str | None:
    """The job id named by a stage message (either input shape), or None when there is none."""
    with suppress(msgspec.DecodeError, ValueError):
        ref = _any_decoder.decode(data)
        job_id = ref.id or (ref.job.id if ref.job else "")
        if job_id and uuid.UUID(job_id):
            return job_id
    return None


def _scratch_root(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


async def run_worker(spec: StageSpec[Any], res: Resources, default_route_len: int, stop: asyncio.Event) -> None:
    """Run `spec` until `stop` is set, then shut down gracefully."""
    worker = Worker(spec, res, default_route_len)
    runner = asyncio.create_task(worker.run())
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
    worker.stop()
    waiter.cancel()
    await runner
