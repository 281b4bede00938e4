"""`clipjet init` makes what the services only wait for: idempotent, an operator's stream settings kept, a service
started before it waits, and the services run with a database role that has no DDL rights (DB_APP_ROLE)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from services.gateway.app import create_app
from services.init import InitFailed, run_init
from services.reaper.handler import reap_once
from shared.db.pool import create_pool
from shared.runtime import bus
from shared.runtime.resources import open_resources
from shared.runtime.startup import NotInitialized
from shared.settings import Settings, settings_env
from shared.storage.s3 import open_storage
from tests.conftest import Servers, Workers, _drop_everything, authorize, make_settings, wait_for_job
from tests.http_source import MediaServer
from tests.test_delivery import fetch_worker_processes
from tests.test_reaper import OLD_PARTITIONS, TABLE_EXISTS

REPO = Path(__file__).resolve().parent.parent
WAIT_SEC = 60.0  # longest a test waits for a log line or a process, s
POLL_SEC = 0.1
OPERATOR_MAX_AGE_SEC = 3600.0  # what an operator set on the stream instead of clipjet's week
OPERATOR_MAX_BYTES = 64 * 1024 * 1024
OPERATOR_MAX_ACK_PENDING = 7


@pytest.fixture
async def dropped(settings: Settings) -> AsyncIterator[Settings]:
    """The test's settings; what init made for them is dropped after."""
    yield settings
    await run_init(settings)  # all of it exists, whatever the test left, so it can all be dropped
    async with open_resources(settings, "test-cleanup") as res:
        await _drop_everything(settings, res)


def clipjet(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "services", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=WAIT_SEC * 2, check=False)


def test_init_twice_is_idempotent(dropped: Settings) -> None:
    first = clipjet(dropped, "init")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "migration(s) applied" in first.stdout and f"stream {dropped.nats_stream}: created" in first.stdout
    assert f"bucket {dropped.s3_bucket}: created" in first.stdout
    second = clipjet(dropped, "init")
    assert second.returncode == 0, second.stderr[-2000:]
    lines = second.stdout.splitlines()
    assert f"schema {dropped.db_schema}: 0 migration(s) applied" in lines
    assert "partitions of jobs: 0 created" in lines
    made = [line for line in lines if line.startswith(("stream ", "consumer ", "bucket "))]
    assert len(made) == len(bus.stream_configs(dropped)) + len(bus.consumer_configs(dropped)) + 1
    assert all(line.endswith(": kept") for line in made), made


def test_init_with_a_dependency_down_fails_clearly(dropped: Settings) -> None:
    down = msgspec.structs.replace(dropped, nats_url="nats://127.0.0.1:9", startup_wait_sec=1.0,
                                   startup_retry_max_sec=0.2)
    done = clipjet(down, "init")
    assert done.returncode == 1
    assert "clipjet init: FAILED: nats:" in done.stderr


async def _stream_and_consumer(settings: Settings) -> tuple[Any, Any]:
    async with open_resources(settings, "test-look") as res:
        stream = (await res.js.stream_info(settings.nats_stream)).config
        consumer = (await res.js.consumer_info(settings.nats_stream, bus.consumer_name("fetch", "normal"))).config
    return stream, consumer


async def test_an_operators_stream_settings_survive_init_and_a_service_restart(
    dropped: Settings, tmp_path: Path
) -> None:
    settings = dropped
    await run_init(settings)
    async with open_resources(settings, "operator") as res:
        stream = (await res.js.stream_info(settings.nats_stream)).config
        a_stage_subject = res.subjects.stage_wildcard("upload")
        await res.js.update_stream(dataclasses.replace(  # as an operator would, and as if an older clipjet made it
            stream, max_age=OPERATOR_MAX_AGE_SEC, max_bytes=OPERATOR_MAX_BYTES,
            subjects=[s for s in stream.subjects if s != a_stage_subject]))
        _, consumer = stream, (await res.js.consumer_info(settings.nats_stream, "fetch-normal")).config
        await res.js.add_consumer(settings.nats_stream,
                                  dataclasses.replace(consumer, max_ack_pending=OPERATOR_MAX_ACK_PENDING))

    assert f"stream {settings.nats_stream}: updated" in await run_init(settings)  # the stage subject it lacked
    await run_init(settings)
    with fetch_worker_processes(settings, tmp_path) as start:  # a service (re)starting
        worker = start("fetch")
        await _wait_logged(tmp_path / "fetch.log", "worker_started")
        worker.terminate()
        assert await asyncio.to_thread(worker.wait, WAIT_SEC) == 0
    stream, consumer = await _stream_and_consumer(settings)
    assert (stream.max_age, stream.max_bytes) == (OPERATOR_MAX_AGE_SEC, OPERATOR_MAX_BYTES)
    assert a_stage_subject in stream.subjects
    assert consumer.max_ack_pending == OPERATOR_MAX_ACK_PENDING

    await run_init(settings, update_streams=True)  # clipjet's own fields explicitly; the rest still the operator's
    stream, consumer = await _stream_and_consumer(settings)
    assert (stream.max_age, stream.max_bytes) == (bus.MAX_MESSAGE_AGE_SEC, OPERATOR_MAX_BYTES)
    assert consumer.max_ack_pending == 1000


async def _wait_logged(log: Path, *needles: str) -> None:
    async with asyncio.timeout(WAIT_SEC):
        while not all(n in (log.read_text() if log.exists() else "") for n in needles):  # noqa: ASYNC110
            await asyncio.sleep(POLL_SEC)


async def test_a_service_started_before_init_waits_and_starts_once_init_runs(
    dropped: Settings, tmp_path: Path
) -> None:
    settings = msgspec.structs.replace(dropped, startup_retry_max_sec=0.5)
    with fetch_worker_processes(settings, tmp_path) as start:
        worker = start("fetch")
        log = tmp_path / "fetch.log"
        await _wait_logged(log, "waiting_for_init", "run `clipjet init`")
        await asyncio.sleep(1.0)
        assert worker.poll() is None, log.read_text()[-2000:]
        assert "worker_started" not in log.read_text()
        await run_init(settings)
        await _wait_logged(log, "worker_started")
        worker.terminate()
        assert await asyncio.to_thread(worker.wait, WAIT_SEC) == 0


def _as_role(url: str, role: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.hostname}:{parts.port or 5432}"))


@pytest.fixture
async def app_role(servers: Servers) -> AsyncIterator[tuple[str, str]]:
    """A login role with no rights of its own (what DB_APP_ROLE names); its name and password."""
    role, password = f"clipjet_app_{secrets.token_hex(4)}", secrets.token_hex(12)
    conn = await asyncpg.connect(servers.postgres.url)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        yield role, password
        await conn.execute(f"DROP OWNED BY {role}")
        await conn.execute(f"DROP ROLE {role}")
    finally:
        await conn.close()


async def test_services_run_with_a_role_without_ddl(
    servers: Servers, app_role: tuple[str, str], sample_video: Path, tmp_path: Path
) -> None:
    role, password = app_role
    owner = make_settings(servers, tmp_path, db_app_role=role)
    services = msgspec.structs.replace(owner, database_url=_as_role(owner.database_url, role, password))
    with pytest.raises(InitFailed, match="postgresql"):
        await run_init(services, database_only=True)  # the role cannot migrate
    await run_init(msgspec.structs.replace(services, init_database_url=owner.database_url))
    try:
        async with open_resources(services, "app-role") as res:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await res.db.execute("CREATE TABLE not_allowed (id int)")
            workers = Workers(res)
            workers.start("fetch", "upload")
            try:
                async with AsyncTestClient(create_app(services)) as client:
                    await authorize(client, res.db, admin=True)
                    with MediaServer(sample_video.parent) as origin:
                        made = await client.post("/api/jobs", json={
                            "source": {"type": "url", "url": origin.url(sample_video.name)},
                            "startSec": 2.0, "endSec": 4.0, "precision": "keyframe"})
                        assert made.status_code == 202, made.text
                        job = await wait_for_job(client, made.json()["id"])
                    assert job["status"] == "done", job
            finally:
                await workers.stop()
            owner_conn = await asyncpg.connect(owner.database_url, server_settings={"search_path": owner.db_schema})
            try:
                for statement in OLD_PARTITIONS[:1]:  # an old day's partition (made by the owner), nothing in it
                    await owner_conn.execute(statement)
            finally:
                await owner_conn.close()
            report = await reap_once(res)  # the reaper, partitions included, as the role
            assert report.errors == []
            assert report.partitions_dropped == ["jobs_20200101"]
            assert not await res.db.fetchval(TABLE_EXISTS, "jobs_20200101")
    finally:
        await run_init(msgspec.structs.replace(owner, s3_cors_origins=""))
        async with open_resources(owner, "test-cleanup") as res:
            await _drop_everything(owner, res)


async def test_what_init_makes_is_reported_missing_not_made(settings: Settings) -> None:
    """Each check a service waits on says what is missing, and creates nothing."""
    async with open_storage(settings) as storage:
        with pytest.raises(NotInitialized, match="bucket"):
            await storage.require_bucket()
        assert not await storage.bucket_exists()
    nc = await bus.connect(settings, "test")
    try:
        with pytest.raises(NotInitialized, match=settings.nats_stream):
            await bus.require_streams(nc.jetstream(), settings)
    finally:
        await nc.close()
    with pytest.raises(NotInitialized, match="not migrated"):
        await create_pool(settings)
