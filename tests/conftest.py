"""Real servers for the suite: NATS and S3 started per session on free ports; PostgreSQL reused when
reachable (else a private cluster). Every test gets its own stream, subject prefix, schema and bucket."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from services.gateway.app import create_app
from services.init import run_init
from services.registry import STAGES
from services.stack.devstack import RunningServer, ensure_postgres, start_nats, start_s3
from shared.db import keys
from shared.jobs.apikeys import new_key
from shared.jobs.contracts import PRIORITIES, ProgressEvent
from shared.jobs.pipeline import DEFAULT_ROUTE_LENGTH
from shared.runtime import bus
from shared.runtime.resources import Resources, open_resources
from shared.runtime.worker import run_worker
from shared.settings import Settings, load_settings
from tests.media import make_video
from tests.speech import SPEECH_SENTENCES, SpeechVideo, make_speech_video

S3_ACCESS_KEY = "clipjet-test"
S3_SECRET_KEY = "clipjet-test-secret"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
JOB_TIMEOUT_SEC = 60.0  # longest a test waits for one job to end
POLL_SEC = 0.05


@dataclass
class Servers:
    nats: RunningServer
    s3: RunningServer
    postgres: RunningServer


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("servers")
    nats = start_nats(root / "nats")
    s3 = start_s3(root / "s3", S3_ACCESS_KEY, S3_SECRET_KEY)
    pg_url = os.environ.get("CLIPJET_TEST_DATABASE_URL", DEFAULT_PG_URL)
    postgres = ensure_postgres(pg_url, Path(os.environ.get("CLIPJET_TEST_PGDATA", root / "pg")))
    yield Servers(nats, s3, postgres)
    for server in (nats, s3, postgres):
        server.stop()


@pytest.fixture
def settings(servers: Servers, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings naming this test's own stream, subjects, schema and bucket.

    `@pytest.mark.settings(name=value, ...)` on a test overrides individual settings.
    """
    marker = request.node.get_closest_marker("settings")
    return make_settings(servers, tmp_path, **(marker.kwargs if marker else {}))


def make_settings(servers: Servers, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings on the session's servers with a fresh stream, subject prefix, schema and bucket."""
    tag = secrets.token_hex(4)
    return load_settings({}, **{
        "nats_url": servers.nats.url, "nats_stream": f"T{tag}", "subject_prefix": f"t{tag}",
        "database_url": servers.postgres.url, "db_schema": f"test_{tag}",
        "s3_endpoint_url": servers.s3.url, "s3_access_key": S3_ACCESS_KEY, "s3_secret_key": S3_SECRET_KEY,
        "s3_bucket": f"test-{tag}", "scratch_dir": str(tmp_path / "scratch"), "fetch_allow_private": True,
        "queue_visibility_sec": 10, "heartbeat_ms": 100, "retry_base_delay_sec": 0.2, "shutdown_grace_sec": 2,
        **overrides,
    })


async def _drop_everything(settings: Settings, res: Resources) -> None:
    await res.js.delete_stream(settings.nats_stream)
    await res.js.delete_stream(bus.events_stream(settings))
    await res.js.delete_stream(bus.webhook_retries_stream(settings))
    await res.storage.delete_prefix("")
    await res.storage._client.delete_bucket(Bucket=settings.s3_bucket)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def resources(settings: Settings) -> AsyncIterator[Resources]:
    """The test's clients, after `clipjet init` made its schema, streams and bucket (dropped after)."""
    await run_init(settings)
    async with open_resources(settings, "test") as res:
        yield res
        await _drop_everything(settings, res)


class Workers:
    """Stage workers running in this event loop against the real servers."""

    def __init__(self, res: Resources) -> None:
        self.res = res
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, *stages: str) -> None:
        for stage in stages or tuple(STAGES):
            worker = run_worker(STAGES[stage], self.res, DEFAULT_ROUTE_LENGTH, self._stop)
            self._tasks.append(asyncio.create_task(worker))

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.wait_for(asyncio.gather(*self._tasks), timeout=30)


@pytest.fixture
async def workers(resources: Resources) -> AsyncIterator[Workers]:
    pool = Workers(resources)
    yield pool
    await pool.stop()


ROOMY_QUOTAS = keys.Quotas(max_in_flight=100_000, max_jobs_per_day=1_000_000, max_source_seconds_per_day=1e9)


async def make_key(
    pool: asyncpg.Pool, name: str = "test", *, admin: bool = False, priorities: tuple[str, ...] = PRIORITIES,
    quotas: keys.Quotas = ROOMY_QUOTAS,
) -> str:
    """A new API key in the test's schema; its token."""
    made = new_key()
    await keys.insert_key(pool, made, name, admin=admin, priorities=priorities, quotas=quotas)
    return made.token


async def authorize(client: AsyncTestClient[Any], pool: asyncpg.Pool, **key_options: Any) -> str:
    """Give `client` a new key (every request carries it); the token."""
    token = await make_key(pool, **key_options)
    client.headers["Authorization"] = f"Bearer {token}"
    return token


@pytest.fixture
async def client(settings: Settings, resources: Resources) -> AsyncIterator[AsyncTestClient[Any]]:
    """A gateway client with an admin key of its own (it may read jobs published straight to NATS too)."""
    async with AsyncTestClient(create_app(settings)) as test_client:
        await authorize(test_client, resources.db, admin=True)
        yield test_client


async def wait_for_job(
    client: AsyncTestClient[Any], job_id: str, timeout: float = JOB_TIMEOUT_SEC, *, may_be_unknown: bool = False
) -> dict[str, Any]:
    """Poll GET /api/jobs/{id} until the job is done, failed or canceled (bounded).

    `may_be_unknown`: the job was published straight to NATS, so its row appears only when a worker takes it.
    """
    async with asyncio.timeout(timeout):
        while True:
            response = await client.get(f"/api/jobs/{job_id}")
            if may_be_unknown and response.status_code == 404:
                await asyncio.sleep(POLL_SEC)
                continue
            assert response.status_code == 200, response.text
            body = response.json()
            if body["status"] in ("done", "failed", "canceled"):
                return body
            await asyncio.sleep(POLL_SEC)


R = TypeVar("R")


async def record(res: Resources, subject: str, kind: type[R]) -> list[R]:
    """Every `kind` message published on `subject` from now on (a core subscription), appended as it arrives."""
    received: list[R] = []

    async def keep(msg: Any) -> None:
        received.append(msgspec.json.decode(msg.data, type=kind))

    await res.nc.subscribe(subject, cb=keep)
    return received


async def record_progress(res: Resources) -> list[ProgressEvent]:
    """Every ProgressEvent published from now on (any job), appended as it arrives."""
    return await record(res, res.subjects.progress("*"), ProgressEvent)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def sample_video(media_dir: Path) -> Path:
    """20 s of 640x360 30 fps H.264 (a keyframe every 2 s, no B-frames) with AAC audio."""
    return make_video(media_dir / "sample.mp4", seconds=20)


@pytest.fixture(scope="session")
def speech_video(media_dir: Path) -> SpeechVideo:
    """20 s of 320x180 video with espeak-ng reading SPEECH_SENTENCES from 6 s on, 1.5 s of silence between."""
    return make_speech_video(media_dir / "speech.mp4", SPEECH_SENTENCES, offset_sec=6.0, gap_sec=1.5, seconds=20)
