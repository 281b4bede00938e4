"""Circuit breakers: a failing dependency is refused fast, saved jobs are not lost, and it closes by itself."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import msgspec
import nats.errors
import pytest
from litestar.testing import AsyncTestClient

from services.gateway.app import create_app
from services.gateway.auth import RATE_SCOPE_KEY, authenticate
from services.gateway.state import Gateway
from services.init import run_init
from services.reaper.handler import reap_once
from services.stack.devstack import free_port, start_nats
from shared.db.pool import create_pool
from shared.errors import ServiceUnavailable, StorageError
from shared.runtime.breaker import CircuitBreaker
from shared.runtime.resources import Resources, open_resources
from shared.settings import Settings
from shared.storage.s3 import open_storage
from tests.conftest import Servers, _drop_everything, authorize

GOOD_URL = {"type": "url", "url": "https://media.example/talk.mp4"}
OPEN_SEC = 1.0
RECONNECT_WAIT_SEC = 15.0
THRESHOLD = 2  # failures that open the breakers of the user-error tests
TRIES = THRESHOLD * 3  # user errors sent: several times what would open a breaker that counted them


async def test_breaker_opens_after_failures_refuses_fast_and_closes_again(servers: Servers) -> None:
    breaker = CircuitBreaker("PostgreSQL", failures=2, open_sec=OPEN_SEC)
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    attempts = 0

    async def call(url: str) -> None:
        nonlocal attempts
        async with breaker:
            attempts += 1
            conn = await asyncpg.connect(url, timeout=2)
            await conn.close()

    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            await call(dead)
    assert breaker.is_open and attempts == 2
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as refused:
        await call(dead)
    assert attempts == 2 and time.monotonic() - started < 0.05  # refused without trying
    assert 1 <= refused.value.retry_after_sec <= OPEN_SEC + 1
    await asyncio.sleep(OPEN_SEC + 0.1)
    with pytest.raises(ServiceUnavailable):  # the half-open try fails: open again
        await call(dead)
    assert breaker.is_open
    await asyncio.sleep(OPEN_SEC + 0.1)
    await call(servers.postgres.url)  # the tests' PostgreSQL answers: closed
    assert not breaker.is_open


@pytest.mark.settings(breaker_failures=2, breaker_open_sec=OPEN_SEC, outbox_grace_sec=0)
async def test_nats_outage_gets_503_keeps_the_job_and_recovers(settings: Settings, tmp_path: Path) -> None:
    nats = start_nats(tmp_path / "nats")
    port = int(nats.url.rsplit(":", 1)[1])
    ours = msgspec.structs.replace(settings, nats_url=nats.url)
    try:
        await run_init(ours)
        async with open_resources(ours, "test") as res, AsyncTestClient(create_app(ours)) as client:
            await authorize(client, res.db, admin=True)
            nats.stop()
            saved = []
            for _ in range(2):
                answer = await client.post("/api/jobs", json={"source": GOOD_URL, "startSec": 1, "endSec": 2})
                assert answer.status_code == 503, answer.text
                assert answer.headers["Retry-After"]
                error = answer.json()["error"]
                assert error["code"] == "service_unavailable"
                saved.append(error["jobId"])
            started = time.monotonic()
            shed = await client.post("/api/jobs", json={"source": GOOD_URL, "startSec": 1, "endSec": 2})
            assert shed.status_code == 503 and time.monotonic() - started < 1.0  # the open breaker sheds load
            assert "jobId" not in shed.json()["error"]  # before anything was written
            for job_id in saved:  # the jobs were written: clients can poll them
                assert (await client.get(f"/api/jobs/{job_id}")).json()["status"] == "queued"

            nats = start_nats(tmp_path / "nats", port=port)
            gateway_nc = client.app.state.gateway.res.nc
            async with asyncio.timeout(RECONNECT_WAIT_SEC):
                while not (res.nc.is_connected and gateway_nc.is_connected):  # noqa: ASYNC110 - nats-py has no event
                    await asyncio.sleep(0.1)
            await asyncio.sleep(OPEN_SEC)
            answer = await client.post("/api/jobs", json={"source": GOOD_URL, "startSec": 1, "endSec": 2})
            assert answer.status_code == 202, answer.text
            assert (await reap_once(res)).republished == len(saved)  # the outbox sends the saved jobs
            info = await res.js.consumer_info(ours.nats_stream, "fetch-normal")
            assert info.num_pending == len(saved) + 1
            await _drop_everything(ours, res)
    finally:
        nats.stop()


async def test_user_errors_pass_through_and_never_open_a_breaker(resources: Resources) -> None:
    """The dependencies answer these with the request's fault (S3 400 for a `..` or NUL key, NATS MaxPayloadError,
    a PostgreSQL value error): each error reaches the caller as itself, never as a 503, and the breaker stays
    closed, so the good call right after goes through."""
    breaker = CircuitBreaker("dependency", failures=THRESHOLD, open_sec=60)
    oversized, prefix = b"x" * (resources.nc.max_payload + 1), resources.settings.subject_prefix
    user_errors: list[tuple[Callable[[], Awaitable[Any]], type[BaseException]]] = [
        (lambda: resources.storage.head("uploads/../x"), StorageError),
        (lambda: resources.storage.head("uploads/a\x00b/c.mp4"), StorageError),
        (lambda: resources.nc.publish(f"{prefix}.big", oversized), nats.errors.MaxPayloadError),
        (lambda: resources.db.fetchval("SELECT $1::int", "not a number"), asyncpg.DataError),
        (lambda: resources.db.fetchval("SELECT 1 / 0"), asyncpg.DivisionByZeroError),
    ]
    for call, expected in user_errors:
        for _ in range(TRIES):
            with pytest.raises(expected):
                async with breaker:
                    await call()
            assert not breaker.is_open, expected
    async with breaker:
        assert await resources.storage.head("uploads/none/a.mp4") is None
        assert await resources.db.fetchval("SELECT 1") == 1


async def test_connection_refused_s3_still_opens_its_breaker(resources: Resources) -> None:
    """A transport failure of object storage (nothing listens) is counted: the breaker opens and sheds load."""
    dead = msgspec.structs.replace(resources.settings, s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
                                   s3_max_attempts=1)
    breaker = CircuitBreaker("object storage", failures=THRESHOLD, open_sec=60)
    async with open_storage(dead) as storage:
        for _ in range(THRESHOLD):
            with pytest.raises(ServiceUnavailable):
                async with breaker:
                    await storage.head("uploads/none/a.mp4")
    assert breaker.is_open


@pytest.mark.settings(breaker_failures=THRESHOLD, breaker_open_sec=60)
async def test_bad_requests_leave_the_gateways_breakers_closed(
    client: AsyncTestClient[Any], resources: Resources
) -> None:
    """Issue 12.3: bad upload keys, a 1.1 MB URL, an upload completed before its parts: many times over the
    threshold, each gets its own 4xx, nothing is written, and good requests pass right after."""
    slot = (await client.post("/api/uploads", json={"sizeBytes": 300 * 1024 * 1024})).json()
    bad_jobs = [
        {"source": {"type": "upload", "key": "uploads/../x"}, "startSec": 0, "endSec": 1},
        {"source": {"type": "upload", "key": "uploads/a\x00b/c.mp4"}, "startSec": 0, "endSec": 1},
        {"source": {"type": "url", "url": "https://media.example/" + "a" * 1_100_000}, "startSec": 0, "endSec": 1},
    ]
    for _ in range(TRIES):
        for body in bad_jobs:
            answer = await client.post("/api/jobs", json=body)
            assert 400 <= answer.status_code < 500, answer.text
        early = await client.post("/api/uploads/complete", json={"key": slot["key"], "uploadId": slot["uploadId"]})
        assert early.status_code == 422 and early.json()["error"]["code"] == "upload_incomplete", early.text
        status = await client.get("/api/uploads/status", params={"key": "uploads/../x", "uploadId": "x\x00"})
        assert status.status_code == 422, status.text
    breakers = client.app.state.gateway.breakers
    assert not any(b.is_open for b in (breakers.db, breakers.nats, breakers.s3))
    assert await resources.db.fetchval("SELECT count(*) FROM jobs") == 0
    good = await client.post("/api/jobs", json={"source": GOOD_URL, "startSec": 1, "endSec": 2})
    assert good.status_code == 202, good.text
    assert (await client.post("/api/uploads", json={"filename": "a.mp4", "sizeBytes": 10})).status_code == 201


async def test_a_grouped_rate_limit_write_that_fails_counts_one_breaker_failure(resources: Resources) -> None:
    """Requests whose rate-limit hits shared one failed statement each get a 503, and the breaker counts that one
    statement once: THRESHOLD requests together do not open it."""
    settings = msgspec.structs.replace(resources.settings, breaker_failures=THRESHOLD, auth="off")
    pool = await create_pool(settings)
    gw = Gateway.for_resources(dataclasses.replace(resources, settings=settings, db=pool))
    await pool.close()  # every statement now fails as a closed connection does (a transport failure)
    requests = [_AnonymousRequest(gw) for _ in range(THRESHOLD * 3)]
    results = await asyncio.gather(*(authenticate(request) for request in requests), return_exceptions=True)
    assert all(isinstance(result, ServiceUnavailable) for result in results), results
    assert not gw.breakers.db.is_open  # one statement failed: one failure of THRESHOLD
    assert all(RATE_SCOPE_KEY not in request.scope for request in requests)


class _AnonymousRequest:
    """What `authenticate` reads of a request with auth off: the app's gateway, the client, the scope."""

    def __init__(self, gw: Gateway) -> None:
        self.app = SimpleNamespace(state=SimpleNamespace(gateway=gw))
        self.client = SimpleNamespace(host="192.0.2.7")
        self.scope: dict[str, Any] = {}
