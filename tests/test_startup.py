"""A service started while a server it needs is down waits for it (logging what it waits for) and then works."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec
import pytest

from services.init import run_init
from services.stack.devstack import start_nats
from services.stack.devstack.process import LOOPBACK, free_port
from shared.db import jobs
from shared.jobs.contracts import ClipJobMessage, UrlSource
from shared.jobs.ids import uuid7
from shared.runtime import bus
from shared.runtime.resources import open_resources
from shared.settings import Settings
from tests.conftest import Servers, _drop_everything, make_settings
from tests.http_source import MediaServer
from tests.tcp_forward import TcpForward
from tests.test_delivery import fetch_worker_processes

WAIT_SEC = 60.0  # longest the test waits for a log line or the job, s
POLL_SEC = 0.1
STOP_WAIT_SEC = 30.0  # a stopped worker exits within this (its pause while waiting is up to 10 min), s


async def wait_logged(log: Path, *needles: str) -> None:
    async with asyncio.timeout(WAIT_SEC):
        while not all(n in (log.read_text() if log.exists() else "") for n in needles):  # noqa: ASYNC110
            await asyncio.sleep(POLL_SEC)


async def test_worker_started_while_nats_is_down_waits_and_then_works(
    servers: Servers, sample_video: Path, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens here yet
    settings = make_settings(servers, tmp_path, nats_url=f"nats://{LOOPBACK}:{port}", startup_retry_max_sec=0.5)
    nats = None
    try:
        with fetch_worker_processes(settings, tmp_path) as start, MediaServer(sample_video.parent) as origin:
            worker = start("fetch")
            log = tmp_path / "fetch.log"
            await wait_logged(log, "waiting_for_dependency", '"nats"')
            assert worker.poll() is None, log.read_text()[-2000:]
            nats = await asyncio.to_thread(start_nats, tmp_path / "nats", port)
            await run_init(settings)  # what the worker waits for next
            await wait_logged(log, "worker_started")
            await _a_job_passes_the_fetch_stage(settings, origin.url(sample_video.name))
            assert "dependency_up" in log.read_text()
    finally:
        if nats is not None:
            nats.stop()


def on_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    return urlunsplit(parts._replace(netloc=f"{netloc}:{port}"))


@pytest.mark.parametrize(("dependency", "field"), [("postgresql", "database_url"), ("s3", "s3_endpoint_url")])
async def test_worker_started_while_postgresql_or_s3_is_down_waits_and_then_works(
    dependency: str, field: str, servers: Servers, sample_video: Path, tmp_path: Path
) -> None:
    """The worker reaches the real server through a forwarder that only starts listening later."""
    direct = make_settings(servers, tmp_path, startup_retry_max_sec=0.5)
    target = urlsplit(getattr(direct, field)).port
    assert target is not None
    port = free_port()
    settings = msgspec.structs.replace(direct, **{field: on_port(getattr(direct, field), port)})
    forward = TcpForward(port, target)
    await run_init(direct)  # only the forwarder to PostgreSQL or S3 is missing
    try:
        with fetch_worker_processes(settings, tmp_path) as start, MediaServer(sample_video.parent) as origin:
            worker = start("fetch")
            log = tmp_path / "fetch.log"
            await wait_logged(log, "waiting_for_dependency", f'"{dependency}"')
            assert worker.poll() is None, log.read_text()[-2000:]
            await forward.start()
            await wait_logged(log, "worker_started", "dependency_up")
            await _a_job_passes_the_fetch_stage(direct, origin.url(sample_video.name))
            worker.terminate()  # stopped while this loop still runs the forwarder its connections go through
            assert await asyncio.to_thread(worker.wait, WAIT_SEC) == 0
    finally:
        await forward.close()


async def _a_job_passes_the_fetch_stage(settings: Settings, url: str) -> None:
    """Publish a job for `url` and wait until the fetch stage finished it; the test's servers are emptied after."""
    async with open_resources(settings, "test") as res:
        job = ClipJobMessage(id=str(uuid7()), source=UrlSource(url=url), start_sec=2.0, end_sec=4.0)
        await bus.publish_job(res.js, res.subjects, job)
        try:
            async with asyncio.timeout(WAIT_SEC):
                while "stage_finished" not in [  # noqa: ASYNC110 - polling the database
                    e["type"] for e in await jobs.job_events(res.db, uuid.UUID(job.id))
                ]:
                    await asyncio.sleep(POLL_SEC)
        finally:
            await _drop_everything(settings, res)


async def test_a_worker_waiting_for_init_stops_at_once_on_sigterm(servers: Servers, tmp_path: Path) -> None:
    """Nothing `clipjet init` makes exists; the worker waits for it (pauses up to 10 min) and a SIGTERM ends it."""
    settings = make_settings(servers, tmp_path, startup_retry_max_sec=600.0, startup_wait_sec=0.0)
    with fetch_worker_processes(settings, tmp_path) as start:
        worker = start("fetch")
        log = tmp_path / "fetch.log"
        await wait_logged(log, "waiting_for_init")
        worker.terminate()
        assert await asyncio.to_thread(worker.wait, STOP_WAIT_SEC) == 0, log.read_text()[-2000:]
        assert "stopped_while_waiting" in log.read_text()


async def test_a_worker_giving_up_on_a_dependency_says_so_in_one_line(servers: Servers, tmp_path: Path) -> None:
    settings = make_settings(servers, tmp_path, nats_url=f"nats://{LOOPBACK}:{free_port()}", startup_wait_sec=1.0,
                             startup_retry_max_sec=0.2)
    with fetch_worker_processes(settings, tmp_path) as start:
        worker = start("fetch")
        assert await asyncio.to_thread(worker.wait, WAIT_SEC) == 1
    lines = (tmp_path / "fetch.log").read_text().splitlines()
    assert lines[-1].startswith("clipjet worker fetch: FAILED: nats: unavailable after"), lines[-5:]
    assert not any(line.startswith("Traceback") for line in lines)  # (the NATS client logs its own, as JSON)
