"""Follow a job to its end: its event stream (`GET /api/jobs/{id}/events`, Server-Sent Events), or, when the
gateway has none (404 on /events), polling `GET /api/jobs/{id}`.

A stream that breaks off before its `end` event is opened again with `Last-Event-ID` (up to
STREAM_RECONNECTS times in a row), then the client polls. Every wait is bounded by the caller's deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from shared.jobs.contracts import JobView

from .api import ENDED, EVENT_STREAM, Api, ApiError, view_of
from .sse import SseParser, SseTooLarge

STREAM_RECONNECTS = 3  # stream openings in a row that end without news before the client polls instead
RECONNECT_PAUSE_SEC = 0.5  # pause before opening a broken stream again, s
NO_STREAM_STATUSES = frozenset({404, 405, 501})  # /events answered so: this gateway has no event stream


@dataclass(frozen=True)
class Update:
    """What a progress display shows."""

    status: str
    stage: str | None
    pct: float


OnUpdate = Callable[[Update], None]


class Progress(msgspec.Struct, rename="camel"):
    """A `progress` event's data (contract 15)."""

    status: str = "processing"
    stage: str | None = None
    pct: float = 0.0


class FollowTimeout(Exception):
    """The job did not end before the deadline."""


class _NoStream(Exception):
    """The gateway has no event stream for jobs (or the stream could not be kept open)."""


def follow(api: Api, job_id: str, on_update: OnUpdate, *, deadline: float, poll_sec: float,
           use_stream: bool = True, on_note: Callable[[str], None] = print) -> tuple[dict[str, Any], JobView]:
    """The job's final view (as sent, and decoded), reporting progress on the way (and on_note: a fallback)."""
    if use_stream:
        try:
            return _stream(api, job_id, on_update, deadline)
        except _NoStream:
            on_note(f"polling   every {poll_sec:g} s: no event stream from this gateway for the job")
    return _poll(api, job_id, on_update, deadline, poll_sec)


def _stream(api: Api, job_id: str, on_update: OnUpdate, deadline: float) -> tuple[dict[str, Any], JobView]:
    last_id: str | None = None
    failures = 0
    while failures < STREAM_RECONNECTS:
        _check(deadline, job_id)
        parser = SseParser()
        parser.last_event_id = last_id
        try:
            with api.events(job_id, last_id) as response:
                _check_stream(response)
                for chunk in response.iter_bytes():
                    for event in parser.feed(chunk):
                        failures = 0
                        if event.event == "end":
                            return view_of(event.data)
                        if event.event == "progress":
                            news = msgspec.json.decode(event.data, type=Progress)
                            on_update(Update(news.status, news.stage, news.pct))
                    _check(deadline, job_id)
        except SseTooLarge as exc:
            raise ApiError(0, "unexpected_answer", f"the gateway's event stream for job {job_id}: {exc}") from exc
        except (httpx.HTTPError, msgspec.DecodeError):
            pass  # a dropped connection or a garbled event: open it again after the last id seen
        last_id = parser.last_event_id
        failures += 1
        time.sleep(min(RECONNECT_PAUSE_SEC, max(0.0, deadline - time.monotonic())))
    raise _NoStream


def _check_stream(response: httpx.Response) -> None:
    """A stream to read, a gateway without one (_NoStream), or an error to report (ApiError)."""
    if response.status_code in NO_STREAM_STATUSES:
        error = ApiError.of(response)
        if error.code == "job_not_found":
            raise error
        raise _NoStream
    if response.status_code >= 400:
        raise ApiError.of(response)
    if not response.headers.get("content-type", "").startswith(EVENT_STREAM):
        raise _NoStream


def _poll(api: Api, job_id: str, on_update: OnUpdate, deadline: float,
          poll_sec: float) -> tuple[dict[str, Any], JobView]:
    while True:
        raw, view = api.get_job(job_id)
        if view.status in ENDED:
            return raw, view
        on_update(Update(view.status, view.stage, view.progress))
        _check(deadline, job_id)
        time.sleep(min(poll_sec, max(0.0, deadline - time.monotonic())))


def _check(deadline: float, job_id: str) -> None:
    if time.monotonic() >= deadline:
        raise FollowTimeout(f"job {job_id} had not ended when the wait (--timeout) ran out; it keeps running: "
                            f"`clipjet jobs` shows it")
