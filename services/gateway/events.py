"""`GET /api/jobs/{id}/events`: a job's progress as Server-Sent Events, then its final view, then the end.

Event ids follow the job, not the connection: a progress event's id is its `pct` in basis points (0..10000)
and the end event's is END_EVENT_ID, so `Last-Event-ID: n` means "what is past n" on any replica. Progress
comes from the process's JobFeed (NATS); the database is read once at connect (after the listener is
registered, so an end between the two is not missed) and once for the final view.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import FrameType
from typing import Annotated

import asyncpg
import msgspec
from litestar import Controller, Litestar, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, PathParameter
from litestar.response import Stream

from shared.db import jobs
from shared.errors import BadRequest, NotFound
from shared.jobs.contracts import JobProgress
from shared.jobs.ids import parse_job_id
from shared.jobs.jobfeed import JobFeed, Listener
from shared.runtime.logs import get_logger
from shared.runtime.progress import PCT_DIGITS

from .auth import Caller, authenticate
from .cancel import readable_job
from .formats import shown
from .jobs import job_view
from .openapi import SECURITY, error_responses
from .state import Gateway

MAX_EVENT_ID_DIGITS = 6  # event ids go up to END_EVENT_ID (10001)
log = get_logger("gateway")
PCT_SCALE = 10_000  # a progress event's id is round(pct * PCT_SCALE)
END_EVENT_ID = PCT_SCALE + 1
ENDED = frozenset({"done", "failed", "canceled", "expired"})
PING = b": ping\n\n"
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_encoder = msgspec.json.Encoder()


class JobEventsController(Controller):
    path = "/api/jobs"
    tags = ["jobs"]
    before_request = authenticate
    security = SECURITY

    @get("/{job_id:str}/events", operation_id="followJob", media_type="text/event-stream",
         responses=error_responses(401, 404, 422, 429, 503))
    async def follow_job(
        self, state: State, gw: NamedDependency[Gateway], caller: NamedDependency[Caller],
        job_id: Annotated[str, PathParameter(description="The job's id")],
        last_event_id: Annotated[str | None, HeaderParameter(
            name="Last-Event-ID", required=False, description="Resume after this event id")] = None,
    ) -> Stream:
        """Follow a job: `progress` events (`pct`, `stage`) as they happen, then one `end` event carrying the
        job's view (as `GET /api/jobs/{id}`, signed URLs included); then the stream closes."""
        after = _event_id(last_event_id)
        uid = parse_job_id(job_id)
        if uid is None:
            raise NotFound(f"no job with id {shown(job_id)}: job ids are UUIDs", code="job_not_found")
        feed: JobFeed = state.job_feed
        listener = feed.add(str(uid), caller.owner)  # listen first, then read: an end in between is not missed
        try:
            row = await readable_job(gw, caller, str(uid))
        except BaseException:
            feed.remove(listener)
            raise
        content = _follow(gw, feed, listener, row, after, caller)
        weakref.finalize(content, feed.remove, listener)  # a stream never started (client gone at once) too
        return Stream(content, media_type="text/event-stream", headers=HEADERS)


def _event_id(header: str | None) -> int:
    """The Last-Event-ID to resume after (-1: from the start)."""
    if header is None or not header.strip():
        return -1
    text = header.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_EVENT_ID_DIGITS):
        raise BadRequest(f"Last-Event-ID must be an event id this stream sent (digits), not {shown(header)}",
                         code="invalid_field", field="Last-Event-ID")
    return int(text)


def _event(event_id: int, kind: str, data: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, kind.encode(), data)


def _progress_id(pct: float) -> int:
    return round(pct * PCT_SCALE)


async def _key_still_valid(gw: Gateway, caller: Caller) -> bool:
    """Whether the stream's key is still good (the per-process key cache: a revoke reaches it within
    KEY_CACHE_SEC): checked at each ping and before the end event, whose view carries signed URLs."""
    if caller.owner is None:
        return True
    found = await gw.keys.get(gw.res.db, gw.breakers.db, caller.owner)
    return found is not None and found.revoked_at is None


async def _follow(
    gw: Gateway, feed: JobFeed, listener: Listener, row: asyncpg.Record, after: int, caller: Caller
) -> AsyncIterator[bytes]:
    """The stream's bytes: the state read at connect, then what the feed brings, pings while nothing does;
    closed without more once the key is revoked."""
    ping_sec = gw.res.settings.sse_ping_sec
    job_id = listener.job_id
    try:
        if row["status"] in ENDED:
            yield _event(END_EVENT_ID, "end", _encoder.encode(await job_view(gw, row)))
            return
        pct = round(float(row["progress"]), PCT_DIGITS)
        now = JobProgress(job_id=job_id, status=row["status"], stage=row["stage"], pct=pct)
        last = after
        if (n := _progress_id(now.pct)) > last:
            yield _event(n, "progress", _encoder.encode(now))
            last = n
        while not feed.closing:
            if not await _wait(listener.changed, ping_sec) and listener.end is None:
                listener.end = await feed.stored_end(job_id)  # nothing for a while: was an end delivery lost?
                if listener.end is None:
                    if not await _key_still_valid(gw, caller):
                        log.info("job_events_key_revoked", job_id=job_id)
                        return
                    yield PING
                    continue
            if feed.closing:
                return
            if listener.end is not None:
                if not await _key_still_valid(gw, caller):
                    return
                async with gw.breakers.db:
                    ended = await jobs.get_job(gw.res.db, row["id"])
                yield _event(END_EVENT_ID, "end", _encoder.encode(await job_view(gw, ended or row)))
                return
            progress = listener.take_progress()
            if progress is not None and (n := _progress_id(progress.pct)) > last:
                now = JobProgress(job_id=job_id, status="processing", stage=progress.stage, pct=progress.pct)
                yield _event(n, "progress", _encoder.encode(now))
                last = n
    except Exception as exc:  # closed without `end`: the client reconnects with Last-Event-ID
        log.warning("job_events_failed", job_id=job_id, error=repr(exc))
    finally:
        feed.remove(listener)


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    """Whether `event` was set within `timeout` seconds (no task made per wait)."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False


@contextmanager
def _close_on_signal(feed: JobFeed) -> Iterator[None]:
    """Close the feed's streams on SIGTERM/SIGINT, then hand the signal on (to uvicorn, which would otherwise wait
    for every open stream before it exits)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in SHUTDOWN_SIGNALS}

    def handle(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(feed.close)
        handler = previous[sig]
        if callable(handler):
            handler(sig, frame)
        elif handler == signal.SIG_DFL:  # no server of its own to stop: the default action, as before
            signal.signal(sig, handler)
            signal.raise_signal(sig)

    for sig in SHUTDOWN_SIGNALS:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is handle:
                signal.signal(sig, handler)


@asynccontextmanager
async def job_feed_lifespan(app: Litestar) -> AsyncIterator[None]:
    """The process's JobFeed (after the gateway's resources are open): `app.state.job_feed`."""
    gw: Gateway = app.state.gateway
    settings = gw.res.settings
    feed = JobFeed(gw.res, settings.sse_max_streams, settings.sse_max_streams_per_key)
    await feed.start()
    app.state.job_feed = feed
    with _close_on_signal(feed):
        try:
            yield
        finally:
            await feed.stop()
