"""Reading `GET /api/jobs/{id}/events` with httpx in tests: a small Server-Sent Events parser, every wait bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

STREAM_SEC = 60.0  # longest a test reads one stream


@dataclass
class Event:
    id: int | None
    kind: str
    data: Any


@dataclass
class Reading:
    """What one stream sent, as it arrives."""

    events: list[Event] = field(default_factory=list)
    pings: int = 0
    headers: httpx.Headers | None = None
    task: asyncio.Task[None] | None = None  # open_stream's reader

    @property
    def progress(self) -> list[Event]:
        return [e for e in self.events if e.kind == "progress"]


async def read_stream(response: httpx.Response, into: Reading, until_pings: int = 0) -> None:
    """Parse SSE lines into `into` until the server closes (or `until_pings` comments came)."""
    into.headers = response.headers
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            into.pings += 1
            if until_pings and into.pings >= until_pings:
                return
        elif line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        elif fields:
            into.events.append(Event(int(fields["id"]) if "id" in fields else None, fields.get("event", "message"),
                                     msgspec.json.decode(fields["data"])))
            fields = {}


async def follow(http: httpx.AsyncClient, url: str, job_id: str, *, last_id: int | None = None,
                 timeout: float = STREAM_SEC) -> Reading:
    """The whole stream of a job (bounded by `timeout`)."""
    headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    reading = Reading()
    async with asyncio.timeout(timeout):
        async with http.stream("GET", f"{url}/api/jobs/{job_id}/events", headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            await read_stream(response, reading)
    return reading


@asynccontextmanager
async def open_stream(http: httpx.AsyncClient, url: str, job_id: str, **headers: str) -> AsyncIterator[Reading]:
    """A stream read in the background (`reading.task`) while the block runs; the client closes it after."""
    reading = Reading()
    async with asyncio.timeout(STREAM_SEC):
        async with http.stream("GET", f"{url}/api/jobs/{job_id}/events", headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            reading.task = asyncio.create_task(read_stream(response, reading))
            try:
                yield reading
            finally:
                reading.task.cancel()
                await asyncio.gather(reading.task, return_exceptions=True)


async def stream_status(http: httpx.AsyncClient, url: str) -> int:
    """The status a new stream is answered with (then it is closed at once)."""
    async with http.stream("GET", url) as response:
        return response.status_code


async def until(condition: Any, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)
    raise AssertionError(what)
