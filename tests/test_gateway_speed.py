"""What makes the gateway fast without changing what it answers: several processes on one port, batched
`published_at` writes, reused signed result URLs, found uploads remembered, one backlog reading at a time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from services.gateway.groupcommit import GroupCommit
from services.gateway.ttlcache import TtlCache
from services.gateway.writes import GroupedWrites
from services.stack.devstack import free_port
from shared.db import grouped, jobs, keys
from shared.db.pool import create_pool
from shared.jobs.contracts import ClipJobMessage, ClipResult, UrlSource
from shared.jobs.ids import uuid7
from shared.runtime import bus
from shared.runtime.breaker import CircuitBreaker
from shared.runtime.resources import Resources
from shared.settings import Settings, settings_env
from tests.conftest import authorize

REPO = Path(__file__).resolve().parent.parent
GOOD_URL = {"type": "url", "url": "https://media.example.com/talk.mp4"}
START_TIMEOUT_SEC = 60.0


async def _done_job(resources: Resources, video_key: str) -> str:
    """A job row that is done with a result file (written as the uploader writes it)."""
    job = ClipJobMessage(id=str(uuid7()), source=UrlSource(url=GOOD_URL["url"]), start_sec=1, end_sec=3)
    async with resources.db.acquire() as conn:
        assert await jobs.insert_job(conn, job)
    result = ClipResult(actual_start_sec=1, actual_end_sec=3, duration_sec=2, size=10, sha256="0" * 64)
    assert await jobs.complete(resources.db, uuid.UUID(job.id), result, video_key, 3600) is not None
    return job.id


async def test_a_done_jobs_signed_url_is_reused_with_the_life_it_has_left(
    client: AsyncTestClient[Any], resources: Resources
) -> None:
    job_id = await _done_job(resources, "results/sha256/ab/clip.mp4")
    first = (await client.get(f"/api/jobs/{job_id}")).json()["urls"]
    assert first["expiresInSec"] == resources.settings.signed_url_ttl_sec
    await asyncio.sleep(1.2)  # a URL signed now would carry another X-Amz-Date
    again = (await client.get(f"/api/jobs/{job_id}")).json()["urls"]
    assert again["video"] == first["video"]
    assert resources.settings.signed_url_ttl_sec - 3 <= again["expiresInSec"] < first["expiresInSec"]


@pytest.mark.settings(signed_url_reuse_sec=0.5)
async def test_a_signed_url_is_signed_again_after_its_reuse_time(
    client: AsyncTestClient[Any], resources: Resources
) -> None:
    job_id = await _done_job(resources, "results/sha256/cd/clip.mp4")
    first = (await client.get(f"/api/jobs/{job_id}")).json()["urls"]
    await asyncio.sleep(1.2)
    again = (await client.get(f"/api/jobs/{job_id}")).json()["urls"]
    assert again["video"] != first["video"] and again["expiresInSec"] == resources.settings.signed_url_ttl_sec


async def _uploaded(client: AsyncTestClient[Any], size: int = 16) -> str:
    slot = (await client.post("/api/uploads", json={"filename": "talk.mp4", "contentType": "video/mp4",
                                                    "sizeBytes": size})).json()
    async with httpx.AsyncClient(timeout=30) as s3:
        (await s3.put(slot["url"], content=b"\0" * size, headers=slot["headers"])).raise_for_status()
    return str(slot["key"])


async def test_a_found_upload_is_not_looked_up_again(client: AsyncTestClient[Any], resources: Resources) -> None:
    key = await _uploaded(client)
    body = {"source": {"type": "upload", "key": key}, "startSec": 1, "endSec": 2}
    assert (await client.post("/api/jobs", json=body)).status_code == 202
    await resources.storage.delete(key)  # within UPLOAD_SEEN_CACHE_SEC the gateway does not HEAD it again
    assert (await client.post("/api/jobs", json=body)).status_code == 202
    never = key.replace("talk.mp4", "other.mp4")  # the caller's form of key, never uploaded: still looked up
    missing = await client.post("/api/jobs", json={**body, "source": {"type": "upload", "key": never}})
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "upload_not_found"


@pytest.mark.settings(upload_seen_cache_sec=0)
async def test_without_the_cache_a_deleted_upload_is_refused(
    client: AsyncTestClient[Any], resources: Resources
) -> None:
    key = await _uploaded(client)
    body = {"source": {"type": "upload", "key": key}, "startSec": 1, "endSec": 2}
    assert (await client.post("/api/jobs", json=body)).status_code == 202
    await resources.storage.delete(key)
    refused = await client.post("/api/jobs", json=body)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "upload_not_found"


async def _inserted_jobs(resources: Resources, count: int) -> list[uuid.UUID]:
    """`count` queued jobs' rows, inserted one by one (not yet marked published); their ids."""
    made = []
    async with resources.db.acquire() as conn:
        for _ in range(count):
            job = ClipJobMessage(id=str(uuid7()), source=UrlSource(url=GOOD_URL["url"]), start_sec=1, end_sec=2)
            assert await jobs.insert_job(conn, job)
            made.append(uuid.UUID(job.id))
    return made


async def test_published_marks_written_together_each_reach_their_row(resources: Resources) -> None:
    made = await _inserted_jobs(resources, 60)
    writes = GroupedWrites(resources.db, CircuitBreaker("PostgreSQL", failures=5, open_sec=10), keys.RATE_WINDOW_SEC)
    await asyncio.gather(*(writes.mark_published(job_id) for job_id in made))  # all at once: a few statements
    rows = await resources.db.fetch("SELECT published_at FROM jobs")
    assert len(rows) == 60 and all(row["published_at"] is not None for row in rows)


async def test_marks_hits_and_reads_waiting_together_go_out_in_one_statement(
    resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = await _inserted_jobs(resources, 20)
    statements = []
    write = grouped.write

    async def counted(*args: Any) -> Any:
        statements.append(args)
        return await write(*args)

    monkeypatch.setattr(grouped, "write", counted)  # the real statement, each one counted
    window = keys.RATE_WINDOW_SEC
    start = (int(time.time()) // window + 20) * window  # a window of its own
    writes = GroupedWrites(resources.db, CircuitBreaker("PostgreSQL", failures=5, open_sec=10), window)
    first = asyncio.ensure_future(writes.rate_hit("key:first", start))  # its statement goes out alone
    await asyncio.sleep(0)
    marks = [writes.mark_published(job_id) for job_id in made[:10]]
    hits = [writes.rate_hit("key:w", start) for _ in range(10)]
    reads = [writes.rate_hit_and_read("key:w", start, job_id) for job_id in [*made[10:], uuid.UUID(str(uuid7()))]]
    done = await asyncio.gather(first, *marks, *hits, *reads)  # ...the others, arriving meanwhile, wait together
    assert len(statements) == 2, "marks, hits and reads waiting together share one statement"
    counts = done[11:21] + [counted_ for counted_, _ in done[21:]]
    assert done[0] == (1, 0) and sorted(counts) == [(n, 0) for n in range(1, 22)]  # each hit its own count
    assert [row["id"] for _, row in done[21:-1]] == made[10:] and done[-1][1] is None  # the rows, none unknown
    rows = await resources.db.fetch("SELECT id FROM jobs WHERE published_at IS NOT NULL")
    assert {row["id"] for row in rows} == set(made[:10])


async def test_rate_hits_written_together_count_as_if_one_after_the_other(resources: Resources) -> None:
    window = keys.RATE_WINDOW_SEC
    start = (int(time.time()) // window + 10) * window  # a window of its own
    await keys.rate_hit(resources.db, "key:a", start - window, window)  # the previous window: 1 hit
    hits = [("key:a", start), ("key:b", start), ("key:a", start), ("key:a", start)]
    assert await keys.rate_hits(resources.db, hits, window) == [(1, 1), (1, 0), (2, 1), (3, 1)]
    together = GroupCommit(partial(keys.rate_hits, resources.db, window_sec=window), 500)
    counts = await asyncio.gather(*(together.add(("key:c", start)) for _ in range(40)))
    assert sorted(current for current, _ in counts) == list(range(1, 41))  # each request its own count
    assert await keys.rate_hit(resources.db, "key:a", start, window) == (4, 1)


async def test_one_backlog_reading_serves_requests_arriving_together(resources: Resources) -> None:
    settings = msgspec.structs.replace(resources.settings, backlog_check_sec=60.0)
    gauge = bus.BacklogGauge(resources.js, settings)
    lookups = 0
    real = resources.js.consumer_info

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal lookups
        lookups += 1
        return await real(*args, **kwargs)

    resources.js.consumer_info = counted  # type: ignore[method-assign]
    try:
        assert await asyncio.gather(*(gauge.over_limit() for _ in range(20))) == [False] * 20
    finally:
        resources.js.consumer_info = real  # type: ignore[method-assign]
    assert lookups == len(bus.STAGES) * len(bus.PRIORITIES)  # one reading, not one per request


def _start_gateway(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env(msgspec.structs.replace(settings, gateway_port=port))}
    return subprocess.Popen([sys.executable, "-m", "services", "gateway"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.settings(gateway_processes=2)
async def test_gateway_processes_share_its_port(settings: Settings, resources: Resources) -> None:
    port = free_port()
    proc = _start_gateway(settings, port)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_SEC
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            while True:
                try:
                    if (await http.get("/health")).status_code == 200 and len(_serving(proc.pid)) == 2:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "the gateway's processes did not start"
                await asyncio.sleep(0.2)
            answers = await asyncio.gather(*(http.get("/health") for _ in range(20)))
            assert {a.status_code for a in answers} == {200}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode is not None and not _children(proc.pid)  # its processes stopped with it


def _serving(pid: int) -> list[int]:
    """The gateway's serving processes: children of uvicorn's supervisor that are Python (not its resource tracker,
    which runs no server)."""
    return [child for child in _children(pid)
            if "multiprocessing.resource_tracker" not in Path(f"/proc/{child}/cmdline").read_text()]


async def test_in_flight_quota_counts_jobs_as_they_start_and_end(
    client: AsyncTestClient[Any], resources: Resources
) -> None:
    await authorize(client, resources.db, quotas=keys.Quotas(max_in_flight=2, max_jobs_per_day=100,
                                                             max_source_seconds_per_day=1e6))
    body = {"source": GOOD_URL, "startSec": 1, "endSec": 2}
    first, second = [(await client.post("/api/jobs", json=body)).json()["id"] for _ in range(2)]
    assert (await client.post("/api/jobs", json=body)).status_code == 429
    await jobs.begin_stage(resources.db, _message(first), "fetch", 1)  # queued → processing: still in flight
    assert (await client.post("/api/jobs", json=body)).status_code == 429
    assert (await client.post(f"/api/jobs/{second}/cancel")).status_code == 200  # ended: room for one
    third = (await client.post("/api/jobs", json=body)).json()["id"]
    assert (await client.post("/api/jobs", json=body)).status_code == 429
    await jobs.fail(resources.db, uuid.UUID(first), "source_unreachable", "gone")
    await jobs.fail(resources.db, uuid.UUID(third), "source_unreachable", "gone")
    assert [(await client.post("/api/jobs", json=body)).status_code for _ in range(3)] == [202, 202, 429]
    usage = (await client.get("/api/usage")).json()  # counted row by row: the same numbers
    assert usage["jobsInFlight"]["used"] == 2 and usage["jobsToday"]["used"] == 5


def _message(job_id: str) -> ClipJobMessage:
    return ClipJobMessage(id=job_id, source=UrlSource(url=GOOD_URL["url"]), start_sec=1, end_sec=2)


async def test_requests_missing_the_same_cached_entry_wait_for_one_lookup() -> None:
    cache: TtlCache[str, int] = TtlCache(60.0, 10)
    lookups = 0

    async def head(found: int | None) -> int | None:
        nonlocal lookups
        lookups += 1
        await asyncio.sleep(0.05)
        return found

    sizes = await asyncio.gather(*(cache.get_or_load("uploads/a", lambda: head(7)) for _ in range(20)))
    assert sizes == [7] * 20 and lookups == 1  # one HEAD for twenty requests arriving together
    assert await cache.get_or_load("uploads/a", lambda: head(8)) == 7 and lookups == 1  # kept
    assert await cache.get_or_load("uploads/b", lambda: head(None)) is None
    assert await cache.get_or_load("uploads/b", lambda: head(9)) == 9 and lookups == 3  # "not found" is not kept


async def test_the_gateways_pool_skips_the_reset_query_but_still_rolls_back(resources: Resources) -> None:
    settings = msgspec.structs.replace(resources.settings, db_pool_max=1)  # one connection: the same session
    for session_state, name_after in ((False, "kept"), (True, "")):
        pool = await create_pool(settings, session_state=session_state)
        try:
            async with pool.acquire() as conn:
                await conn.execute("SET application_name = 'kept'")
                await conn.execute("BEGIN")  # left open, as a failed request might
            async with pool.acquire() as conn:
                assert not conn.is_in_transaction()  # rolled back on release either way
                # the reset query (RESET ALL, ...) runs only for processes whose sessions hold state
                assert await conn.fetchval("SHOW application_name") == name_after
        finally:
            await pool.close()
