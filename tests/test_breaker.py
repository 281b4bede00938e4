"""Circuit breakers: a failing dependency is refused fast, saved jobs are not lost, and it closes by itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from services.gateway.app import create_app
from services.reaper.handler import reap_once
from shared.breaker import CircuitBreaker
from shared.devstack import free_port, start_nats
from shared.errors import ServiceUnavailable
from shared.resources import open_resources
from shared.settings import Settings
from tests.conftest import _drop_everything, authorize

GOOD_URL = {"type": "url", "url": "https://media.example/talk.mp4"}
OPEN_SEC = 1.0
RECONNECT_WAIT_SEC = 15.0


async def test_breaker_opens_after_failures_refuses_fast_and_closes_again() -> None:
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
    await call(Settings().database_url)  # the machine's PostgreSQL answers: closed
    assert not breaker.is_open


@pytest.mark.settings(breaker_failures=2, breaker_open_sec=OPEN_SEC, outbox_grace_sec=0)
async def test_nats_outage_gets_503_keeps_the_job_and_recovers(settings: Settings, tmp_path: Path) -> None:
    nats = start_nats(tmp_path / "nats")
    port = int(nats.url.rsplit(":", 1)[1])
    ours = msgspec.structs.replace(settings, nats_url=nats.url)
    try:
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
