"""`GET /api/jobs/{id}/events` on a real gateway process (uvicorn), read with httpx streams while real workers
run the job: progress in order, the final view, Last-Event-ID, ownership, bounds, disconnects and shutdown."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from services.gateway import events
from services.gateway.app import create_app
from services.gateway.cancel import cancel_job
from services.stack.devstack import free_port
from shared.db import keys
from shared.jobs.apikeys import split_token
from shared.jobs.jobfeed import JobFeed
from shared.runtime.resources import Resources
from shared.settings import Settings
from tests.conftest import Workers, make_key, record_progress
from tests.gateway_proc import running_gateway
from tests.http_source import MediaServer
from tests.sse_client import STREAM_SEC, follow, open_stream, stream_status, until

END_ID = 10_001  # the end event's id (services/gateway/events.py END_EVENT_ID)
AT_ONCE_SEC = 3.0  # "at once": an ended job's stream answers within this
FREED_WITHIN_SEC = 5.0  # a disconnected stream's slot is free again within this
STOPPED_WITHIN_SEC = 10.0  # the gateway exits this soon after SIGTERM with streams open
STALL_SEC = 1.5  # the origin holds the fetch this long: the job is seen mid-way


@contextmanager
def gateway(settings: Settings) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    with running_gateway(settings, free_port()) as running:
        yield running


def client(token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(10, read=None))


async def submit(http: httpx.AsyncClient, url: str, source_url: str, start: float = 2, end: float = 4) -> str:
    made = await http.post(f"{url}/api/jobs", json={"source": {"type": "url", "url": source_url},
                                                    "startSec": start, "endSec": end})
    assert made.status_code == 202, made.text
    return str(made.json()["id"])


def without_signatures(view: dict[str, Any]) -> dict[str, Any]:
    """A job view with its signed URLs cut at the query (each signing carries its own time and signature)."""
    urls = {k: v.partition("?")[0] if isinstance(v, str) else v for k, v in (view.get("urls") or {}).items()
            if k != "expiresInSec"}  # a reused signed URL has a second or two less left: checked on its own
    return {**view, "urls": urls, "updatedAt": None}


async def test_progress_arrives_in_order_then_the_final_view(
    settings: Settings, resources: Resources, workers: Workers, sample_video: Path
) -> None:
    published = await record_progress(resources)
    token = await make_key(resources.db)
    with gateway(settings) as (_, url), MediaServer(sample_video.parent) as origin:
        origin.stall_first_get_sec, origin.ranges = STALL_SEC, False
        workers.start()
        async with client(token) as http:
            job_id = await submit(http, url, origin.url(sample_video.name))
            reading = await follow(http, url, job_id)
            got = await http.get(f"{url}/api/jobs/{job_id}")
            assert reading.headers is not None
            assert reading.headers["content-type"].startswith("text/event-stream")
            assert reading.headers["cache-control"] == "no-cache"

            *progress, end = reading.events
            assert [e.kind for e in progress] == ["progress"] * len(progress) and end.kind == "end", reading.events
            assert len(progress) >= 3, progress  # the connect's state, then the workers' heartbeats
            ids = [e.id for e in reading.events]
            assert all(a is not None and b is not None and a < b for a, b in itertools.pairwise(ids)), ids
            assert end.id == END_ID
            pcts = [e.data["pct"] for e in progress]
            assert all(a < b for a, b in itertools.pairwise(pcts)) and 0 <= pcts[0] and pcts[-1] <= 1, pcts
            assert all(e.data["jobId"] == job_id and e.data["status"] in ("queued", "processing") for e in progress)
            assert {e.data["stage"] for e in progress[1:]} >= {"fetch"}
            live = {(p.stage, p.pct) for p in published if p.job_id == job_id}
            assert {(e.data["stage"], e.data["pct"]) for e in progress[1:]} <= live  # what the workers published

            assert end.data["status"] == "done" and got.status_code == 200
            assert without_signatures(end.data) == without_signatures(got.json())  # GET /api/jobs/{id}'s body
            ttl = settings.signed_url_ttl_sec
            assert ttl - 60 <= end.data["urls"]["expiresInSec"] <= ttl, end.data["urls"]  # the life it has left
            async with httpx.AsyncClient(timeout=10) as plain:
                clip = await plain.get(end.data["urls"]["video"])  # signed: no key needed
            assert clip.status_code == 200 and clip.content[4:8] == b"ftyp"

            began = time.monotonic()
            again = await follow(http, url, job_id, timeout=AT_ONCE_SEC)  # after the end: the end at once
            assert [(e.id, e.kind) for e in again.events] == [(END_ID, "end")]
            assert again.events[0].data["id"] == job_id and again.events[0].data["urls"]["video"]
            assert time.monotonic() - began < AT_ONCE_SEC


async def test_last_event_id_resumes_after_it(
    settings: Settings, resources: Resources, workers: Workers, sample_video: Path
) -> None:
    token = await make_key(resources.db)
    with gateway(settings) as (_, url), MediaServer(sample_video.parent) as origin:
        origin.stall_first_get_sec, origin.ranges = STALL_SEC * 2, False
        workers.start()
        async with client(token) as http:
            job_id = await submit(http, url, origin.url(sample_video.name))
            assert await asyncio.to_thread(origin.first_get_started.wait, STREAM_SEC), "the fetch never started"
            async with open_stream(http, url, job_id) as first:  # the fetch stands still: one event, then quiet
                await until(lambda: first.events, STREAM_SEC, "no first event")
            seen = first.events[-1]
            assert seen.kind == "progress" and seen.data["stage"] == "fetch", first.events
            resumed, ended = await asyncio.gather(  # both connect while the fetch still stands still
                follow(http, url, job_id, last_id=seen.id), follow(http, url, job_id, last_id=END_ID - 1))
            state = (await http.get(f"{url}/api/jobs/{job_id}")).json()
    assert resumed.events and resumed.events[-1].kind == "end", resumed.events
    assert all(e.id is not None and e.id > seen.id for e in resumed.events), (seen, resumed.events)
    assert [e.kind for e in ended.events] == ["end"]
    assert resumed.events[-1].data["status"] == state["status"] == "done"


async def test_a_job_canceled_while_followed_ends_the_stream(settings: Settings, resources: Resources) -> None:
    """No worker runs: the end event comes from the cancel, through the end events stream (no progress, no polling)."""
    token = await make_key(resources.db)
    with gateway(settings) as (_, url):
        async with client(token) as http:
            job_id = await submit(http, url, "http://127.0.0.1:9/never.mp4")
            async with open_stream(http, url, job_id) as reading:
                await until(lambda: reading.events, STREAM_SEC, "no first event")
                assert [(e.id, e.data["status"], e.data["pct"]) for e in reading.events] == [(0, "queued", 0.0)]
                assert (await http.post(f"{url}/api/jobs/{job_id}/cancel")).status_code == 200
                async with asyncio.timeout(AT_ONCE_SEC):
                    await asyncio.shield(reading.task)  # the server closes the stream after the end event
    assert [(e.id, e.kind) for e in reading.events] == [(0, "progress"), (END_ID, "end")]
    assert reading.events[-1].data["status"] == "canceled" and reading.events[-1].data["id"] == job_id


async def test_another_keys_job_and_bad_input(settings: Settings, resources: Resources) -> None:
    alice, bob = await make_key(resources.db, "alice"), await make_key(resources.db, "bob")
    with gateway(settings) as (_, url):
        async with client(alice) as as_alice, client(bob) as as_bob:
            job_id = await submit(as_alice, url, "http://127.0.0.1:9/never.mp4")
            other = await as_bob.get(f"{url}/api/jobs/{job_id}/events")
            assert other.status_code == 404 and other.json()["error"]["code"] == "job_not_found"
            unknown = await as_alice.get(f"{url}/api/jobs/not-a-uuid/events")
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"
            for last_id in ("soon", "-5", "10_000", "1e3", "99999999"):
                bad = await as_alice.get(f"{url}/api/jobs/{job_id}/events", headers={"Last-Event-ID": last_id})
                assert bad.status_code == 422 and bad.json()["error"]["field"] == "Last-Event-ID", last_id
            async with httpx.AsyncClient(timeout=10) as nobody:
                anonymous = await nobody.get(f"{url}/api/jobs/{job_id}/events")
            assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "auth_required"


@pytest.mark.settings(sse_max_streams_per_key=2, sse_max_streams=3, sse_ping_sec=0.3, gateway_processes=1)
async def test_streams_are_bounded_pinged_and_freed_on_disconnect(settings: Settings, resources: Resources) -> None:
    alice, bob = await make_key(resources.db, "alice"), await make_key(resources.db, "bob")
    with gateway(settings) as (_, url):
        async with client(alice) as as_alice, client(bob) as as_bob:
            job_id = await submit(as_alice, url, "http://127.0.0.1:9/never.mp4")
            bobs_job = await submit(as_bob, url, "http://127.0.0.1:9/never.mp4")
            events = f"{url}/api/jobs/{job_id}/events"
            async with open_stream(as_alice, url, job_id) as one:
                async with open_stream(as_alice, url, job_id):
                    await until(lambda: one.pings >= 2, STREAM_SEC, "no pings")  # a quiet stream is kept open
                    full = await as_alice.get(events)
                    assert full.status_code == 429 and full.json()["error"]["code"] == "too_many_streams"
                    async with open_stream(as_bob, url, bobs_job):  # another key may: the process is now full
                        busy = await as_bob.get(f"{url}/api/jobs/{bobs_job}/events")
                        assert busy.status_code == 503 and busy.json()["error"]["code"] == "too_many_streams"
                # the client closed its second stream: the gateway frees its slot
                async with asyncio.timeout(FREED_WITHIN_SEC):
                    while True:
                        if (status := await stream_status(as_alice, events)) != 429:
                            break
                        await asyncio.sleep(0.1)
                assert status == 200


@pytest.mark.settings(sse_ping_sec=0.3)
async def test_gateway_shutdown_ends_open_streams(settings: Settings, resources: Resources) -> None:
    token = await make_key(resources.db)
    with gateway(settings) as (proc, url):
        async with client(token) as http:
            job_id = await submit(http, url, "http://127.0.0.1:9/never.mp4")
            async with open_stream(http, url, job_id) as reading:
                await until(lambda: reading.pings, STREAM_SEC, "no ping")
                proc.terminate()
                async with asyncio.timeout(STOPPED_WITHIN_SEC):
                    await asyncio.shield(reading.task)  # ends cleanly (no end event: the client reconnects elsewhere)
                assert await asyncio.to_thread(proc.wait, STOPPED_WITHIN_SEC) is not None
    assert [e.kind for e in reading.events] == ["progress"]


@asynccontextmanager
async def serve_in_process(settings: Settings) -> AsyncIterator[str]:
    """The gateway app under a real uvicorn server in this event loop (so a test may patch what it calls)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started or task.done(), STREAM_SEC, "uvicorn did not start")
        assert server.started
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(STOPPED_WITHIN_SEC):
            await task


@pytest.mark.settings(sse_ping_sec=60)
async def test_a_job_ending_between_the_read_and_the_stream_is_not_missed(
    settings: Settings, resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job ends (its end event is published) just after the connect's database read saw it queued: the
    stream still ends with it, at once (not at the next ping's check of the events stream)."""
    read_job = events.readable_job

    async def read_then_end(gw: Any, caller: Any, job_id: str) -> Any:
        row = await read_job(gw, caller, job_id)
        await cancel_job(gw, job_id, caller)  # row written canceled, end event published (acknowledged)
        return row  # the stale row: queued

    monkeypatch.setattr(events, "readable_job", read_then_end)
    token = await make_key(resources.db)
    async with serve_in_process(settings) as url, client(token) as http:
        job_id = await submit(http, url, "http://127.0.0.1:9/never.mp4")
        reading = await follow(http, url, job_id, timeout=AT_ONCE_SEC)
    assert [(e.id, e.kind) for e in reading.events] == [(0, "progress"), (END_ID, "end")]
    assert reading.events[-1].data["status"] == "canceled"


@pytest.mark.settings(sse_ping_sec=0.3)
async def test_a_lost_end_delivery_is_found_in_the_events_stream(
    settings: Settings, resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feed never hears the end (a lost delivery): a quiet stream looks the end up in the events stream at
    its next ping, so it still ends."""

    async def deaf(self: JobFeed, msg: Any) -> None:
        return None

    monkeypatch.setattr(JobFeed, "_on_end", deaf)
    token = await make_key(resources.db)
    async with serve_in_process(settings) as url, client(token) as http:
        job_id = await submit(http, url, "http://127.0.0.1:9/never.mp4")
        async with open_stream(http, url, job_id) as reading:
            await until(lambda: reading.events, STREAM_SEC, "no first event")
            assert (await http.post(f"{url}/api/jobs/{job_id}/cancel")).status_code == 200
            async with asyncio.timeout(AT_ONCE_SEC):
                await asyncio.shield(reading.task)
    assert [(e.id, e.kind) for e in reading.events] == [(0, "progress"), (END_ID, "end")]
    assert reading.events[-1].data["status"] == "canceled"


@pytest.mark.settings(key_cache_sec=0.2, sse_ping_sec=0.5)
async def test_a_revoked_keys_stream_closes_without_the_end(settings: Settings, resources: Resources) -> None:
    """A stream opened with a key that is then revoked ends at its next ping, and never sends the end view
    (which carries signed URLs)."""
    token = await make_key(resources.db, "revoked soon")
    with gateway(settings) as (_, url):
        async with client(token) as http:
            job_id = await submit(http, url, "http://127.0.0.1:9/never.mp4")
            async with open_stream(http, url, job_id) as reading:
                await until(lambda: reading.events, STREAM_SEC, "no first event")
                assert await keys.revoke_key(resources.db, split_token(token)[0])
                async with asyncio.timeout(AT_ONCE_SEC):
                    await asyncio.shield(reading.task)  # closed by the server
    assert [e.kind for e in reading.events] == ["progress"]
