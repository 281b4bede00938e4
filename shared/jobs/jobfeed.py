"""One process's view of every job's progress and end, fanned out to the listeners of each job.

Two NATS subscriptions per process, however many listeners: core `<prefix>.progress.*` (a worker's heartbeat
publishes a ProgressEvent when progress moved; a lost one is replaced by the next) and an ordered JetStream
consumer of the end events stream `<stream>_EVENTS` from its start (it resumes where it was after a reconnect,
so an end event is not lost). A listener keeps only the newest progress and the end: a slow reader never makes
a queue grow.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy

from shared.errors import RetryLater
from shared.jobs.contracts import JobEvent, ProgressEvent
from shared.runtime import bus
from shared.runtime.logs import get_logger
from shared.runtime.resources import Resources

log = get_logger("jobfeed")
END_CONSUMER_HEARTBEAT_SEC = 5.0  # the ordered consumer's idle heartbeat: a stalled one is recreated, s
T = TypeVar("T")
_progress_decoder = msgspec.json.Decoder(ProgressEvent)
_end_decoder = msgspec.json.Decoder(JobEvent)


class TooManyStreams(RetryLater):
    """The key (or the whole gateway process) has as many open event streams as it may."""

    code = "too_many_streams"
    http_status = 429


class GatewayStreamsFull(TooManyStreams):
    """This gateway process has STREAM_MAX_OPEN event streams open: another replica (or a moment later) may not."""

    http_status = 503


class Listener:
    """What one follower of a job has not read yet: the newest progress and the end, and a flag that either came."""

    def __init__(self, job_id: str, owner: str | None) -> None:
        self.job_id, self.owner = job_id, owner
        self.progress: ProgressEvent | None = None
        self.end: JobEvent | None = None
        self.changed = asyncio.Event()

    def take_progress(self) -> ProgressEvent | None:
        progress, self.progress = self.progress, None
        if self.end is None:
            self.changed.clear()
        return progress


class JobFeed:
    """The process's subscriptions and its listeners by job id, bounded in number per key and in all."""

    def __init__(self, res: Resources, max_listeners: int, max_per_key: int) -> None:
        self._res = res
        self._max, self._max_per_key = max_listeners, max_per_key
        self._by_job: dict[str, set[Listener]] = defaultdict(set)
        self._per_key: dict[str | None, int] = defaultdict(int)
        self._count = 0
        self._subs: list[Subscription] = []
        self.closing = False  # the process is shutting down: every stream ends (see `close`)

    @property
    def listeners(self) -> int:
        return self._count

    async def start(self) -> None:
        """Subscribe (before any listener exists, so nothing published after a listener's DB read is missed)."""
        res = self._res
        self._subs.append(await res.nc.subscribe(res.subjects.progress("*"), cb=self._on_progress))
        self._subs.append(await res.js.subscribe(
            res.subjects.events("*"), stream=bus.events_stream(res.settings), cb=self._on_end,
            ordered_consumer=True, deliver_policy=DeliverPolicy.NEW, idle_heartbeat=END_CONSUMER_HEARTBEAT_SEC,
        ))
        await res.nc.flush()

    def close(self) -> None:
        """The process is shutting down: wake every listener so its stream ends (the client reconnects to another
        replica with Last-Event-ID). Synchronous: called from a signal handler."""
        self.closing = True
        for followers in self._by_job.values():
            for listener in followers:
                listener.changed.set()

    async def stop(self) -> None:
        self.close()
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:  # the connection is closing anyway
                log.warning("jobfeed_unsubscribe_failed", error=repr(exc))
        self._subs.clear()

    def add(self, job_id: str, owner: str | None) -> Listener:
        """Register a listener (pair with `remove`); TooManyStreams (429) when the key is full, GatewayStreamsFull
        (503) when the process is."""
        if owner is not None and self._per_key[owner] >= self._max_per_key:  # None: AUTH=off, one process bound
            raise TooManyStreams(f"this key already has {self._max_per_key} event streams open on this gateway; "
                                 "close one (or poll GET /api/jobs/{id})", retry_after_sec=1)
        if self._count >= self._max:
            raise GatewayStreamsFull(f"this gateway already has {self._max} event streams open; try again shortly "
                                 "(or poll GET /api/jobs/{id})", retry_after_sec=1)
        listener = Listener(job_id, owner)
        self._by_job[job_id].add(listener)
        self._per_key[owner] += 1
        self._count += 1
        return listener

    def remove(self, listener: Listener) -> None:
        """Forget a listener (a second call does nothing)."""
        followers = self._by_job.get(listener.job_id)
        if followers is None or listener not in followers:
            return
        followers.discard(listener)
        if not followers:
            del self._by_job[listener.job_id]
        self._per_key[listener.owner] -= 1
        if not self._per_key[listener.owner]:
            del self._per_key[listener.owner]
        self._count -= 1

    async def stored_end(self, job_id: str) -> JobEvent | None:
        """The job's end event as kept in the events stream (None: none yet): the check a quiet stream makes
        now and then, in case a delivery was lost."""
        res = self._res
        try:
            msg = await res.js.get_last_msg(bus.events_stream(res.settings), res.subjects.events(job_id))
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:  # NATS away: the stream stays open, asks again later
            log.warning("jobfeed_stored_end_failed", job_id=job_id, error=repr(exc))
            return None
        return _end_decoder.decode(msg.data) if msg.data else None

    async def _on_progress(self, msg: Msg) -> None:
        for listener, event in self._deliveries(msg, _progress_decoder):
            listener.progress = event
            listener.changed.set()

    async def _on_end(self, msg: Msg) -> None:
        for listener, event in self._deliveries(msg, _end_decoder):
            listener.end = event
            listener.changed.set()

    def _deliveries(self, msg: Msg, decoder: msgspec.json.Decoder[T]) -> list[tuple[Listener, T]]:
        """The listeners of the message's job (its subject's last token), each with the decoded message; a job
        nobody follows (most) costs a lookup, not a decode."""
        followers = self._by_job.get(msg.subject.rpartition(".")[2])
        if not followers:
            return []
        try:
            event = decoder.decode(msg.data)
        except msgspec.DecodeError:
            return []
        return [(listener, event) for listener in followers]
