"""`clipjet stack` (what `make run` starts) as a supervisor, end to end: under a stream of jobs (uploads, cut by the
fetcher, and URL sources, whose staged range the trimmer cuts), SIGKILL one process of each worker stage while it
holds a message; every job ends `done` with one result, each killed process is
started again (the second trim process keeps its pid); then NATS is SIGKILLed too, and the stack, having started it
again on its store, still serves a new job."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services.stack.devstack import free_port
from services.stack.localstack import NATS_PORT_ENV, S3_PORT_ENV, STATUS_FILE, read_stack_env
from services.stack.stackidentity import SCHEMA_PREFIX
from shared.jobs.pipeline import STAGES
from shared.runtime.resources import Resources, open_resources
from shared.settings import Settings, load_settings
from tests.chaos import JOB_ROWS, holding
from tests.conftest import DEFAULT_PG_URL
from tests.http_source import MediaServer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parent.parent
UP_TIMEOUT_S = 90.0  # servers, the gateway's migrations and eight service processes on 2 busy cores
KILLS_TIMEOUT_S = 90.0  # until each stage was caught holding a message
END_TIMEOUT_S = 90.0  # until every job ended, redeliveries (3 s ack_wait) and restarts included
STOP_TIMEOUT_S = 45.0
HTTP_TIMEOUT_S = 10.0
POLL_S = 0.05
SUBMIT_EVERY_S = 0.3
MAX_JOBS = 24
SCALE = "trim=2"
URL_START_SHIFT_SEC = 0.5  # a URL job starts this far past a keyframe: the trimmer smart-cuts its staged range
KILLED = {stage: f"{stage}.1" for stage in STAGES}  # the process of each stage that is SIGKILLed
STACK_ENV = {  # quick redelivery and retries, the small English speech model
    "QUEUE_VISIBILITY_SEC": "3", "HEARTBEAT_MS": "200", "RETRY_BASE_DELAY_SEC": "0.2", "SHUTDOWN_GRACE_SEC": "2",
    "REAPER_INTERVAL_SEC": "1", "OUTBOX_GRACE_SEC": "2", "ASR_MODEL": "tiny.en", "ASR_BEAM_SIZE": "1",
    "FETCH_ALLOW_PRIVATE": "true", "STACK_SCALE": SCALE,
}


@dataclass
class Stack:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log: Path
    settings: Settings
    base_url: str
    api_key: str = ""  # CLIPJET_API_KEY of its stack.env

    def status(self) -> dict[str, dict[str, Any]]:
        return json.loads((self.data_dir / STATUS_FILE).read_text())

    def output(self, chars: int = 8000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _job(i: int, key: str, url: str) -> dict[str, Any]:
    """Distinct ranges of the 20 s sample (a keyframe every 2 s): every other one from its URL, between two
    keyframes (the fetcher stages the range, the trimmer smart-cuts it; an upload's clip is cut by the fetcher),
    every 5th asks for subtitles (the transcriber), every 4th for a poster and thumbnails (the thumbs stage), every
    7th is a frame-precise range between two keyframes (the encoder)."""
    from_url = i % 2 == 0
    start = (i % 9) * 2.0 + 0.1 * (i // 9) + (URL_START_SHIFT_SEC if from_url else 0.0)
    source = {"type": "url", "url": url} if from_url else {"type": "upload", "key": key}
    body: dict[str, Any] = {"source": source, "startSec": start, "endSec": start + 1.5}
    if i % 7 == 3:
        body.update(startSec=start + 0.3, endSec=start + 0.7, precision="frame")
    if i % 5 == 1:
        body["subs"] = {"enabled": True, "burnIn": False, "lang": "en"}
    if i % 4 == 3:
        body.update(poster={}, thumbnails={"intervalSec": 1})
    return body


async def _wait(what: str, check: Any, timeout_s: float, stack: Stack) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            assert stack.proc.poll() is None, f"the stack exited while waiting for {what}:\n{stack.output()}"
            try:
                if await check():
                    return
            except (OSError, ValueError, KeyError, httpx.HTTPError):
                pass
            await asyncio.sleep(POLL_S * 4)


def _start_stack(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`clipjet stack` (what `make run` starts, without the demo clip) with its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "services", "stack"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def _stop_stack(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the stack stops its services and servers), bounded; SIGKILL after that."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    data_dir, log = tmp_path / "data", tmp_path / "stack.log"
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DB_SCHEMA", "S3_SECRET_KEY")}
    gateway_port = free_port()
    env.update(STACK_ENV, DATA_DIR=str(data_dir), GATEWAY_PORT=str(gateway_port),
               DATABASE_URL=os.environ.get("CLIPJET_TEST_DATABASE_URL", DEFAULT_PG_URL),
               **{NATS_PORT_ENV: str(free_port()), S3_PORT_ENV: str(free_port())})
    proc = _start_stack(env, log)
    stack = Stack(proc, data_dir, log, load_settings({}), f"http://127.0.0.1:{gateway_port}")
    try:
        async def up() -> bool:
            return "serving; press Ctrl-C" in stack.log.read_text(errors="replace")

        await _wait("the stack to serve", up, UP_TIMEOUT_S, stack)
        values = read_stack_env(data_dir / "stack.env")
        stack.settings, stack.api_key = load_settings(values), values["CLIPJET_API_KEY"]
        yield stack
    finally:
        await asyncio.to_thread(_stop_stack, proc)
        if stack.settings.db_schema.startswith(SCHEMA_PREFIX):  # the schema this stack made (its own id)
            conn = await asyncpg.connect(stack.settings.database_url)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{stack.settings.db_schema}" CASCADE')
            finally:
                await conn.close()


async def _upload_sample(http: httpx.AsyncClient, sample: Path) -> str:
    slot = (await http.post("/api/uploads", json={"filename": "sample.mp4", "contentType": "video/mp4",
                                                  "sizeBytes": sample.stat().st_size})).json()
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, trust_env=False) as storage:  # no API key on S3
        put = await storage.request(slot["method"], slot["url"], headers=slot["headers"], content=sample.read_bytes())
    assert put.status_code == 200, put.text
    return str(slot["key"])


async def _submit_until(http: httpx.AsyncClient, key: str, url: str, ids: list[str], stop: asyncio.Event) -> None:
    while not stop.is_set() and len(ids) < MAX_JOBS:
        response = await http.post("/api/jobs", json=_job(len(ids), key, url))
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
        await asyncio.sleep(SUBMIT_EVERY_S)


async def _kill_each_stage_mid_job(stack: Stack, res: Resources) -> dict[str, int]:
    """SIGKILL each stage's first process once, while its stage holds an unacked message; the pids killed."""
    killed: dict[str, int] = {}
    try:
        async with asyncio.timeout(KILLS_TIMEOUT_S):
            while len(killed) < len(STAGES):
                for stage in (s for s in STAGES if s not in killed):
                    entry = stack.status()[KILLED[stage]]
                    if entry["state"] == "running" and await holding(res.js, res.settings, stage):
                        os.kill(entry["pid"], signal.SIGKILL)
                        killed[stage] = entry["pid"]
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise AssertionError(f"after {KILLS_TIMEOUT_S:.0f} s only {sorted(killed)} were seen mid-job and killed "
                             f"(jobs stopped moving?); status {stack.status()}\n{stack.output()}") from None
    return killed


async def _rows(settings: Settings, ids: list[str]) -> dict[str, asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.db_schema})
    try:
        await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        return {row["id"]: row for row in await conn.fetch(JOB_ROWS, ids)}
    finally:
        await conn.close()


async def _all_ended(settings: Settings, ids: list[str], timeout_s: float) -> dict[str, asyncpg.Record]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await _rows(settings, ids)
        if all(i in rows and rows[i]["status"] in ("done", "failed") for i in ids) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(POLL_S * 4)


async def test_sigkill_of_each_worker_type_under_load(stack: Stack, sample_video: Path) -> None:
    assert stack.settings.db_schema.startswith(SCHEMA_PREFIX)  # its own schema, named by its data folder's id
    with MediaServer(sample_video.parent) as origin:  # a redelivered fetch of a URL job reads it again
        await _jobs_survive_kills(stack, sample_video, origin)


async def _jobs_survive_kills(stack: Stack, sample_video: Path, origin: MediaServer) -> None:
    trim2_pid = stack.status()["trim.2"]["pid"]
    marks = [("up", time.monotonic())]
    ids: list[str] = []
    auth = {"Authorization": f"Bearer {stack.api_key}"}
    async with (httpx.AsyncClient(base_url=stack.base_url, timeout=HTTP_TIMEOUT_S, trust_env=False,
                                  headers=auth) as http,
                open_resources(stack.settings, "test-stack") as res):
        key = await _upload_sample(http, sample_video)
        stop = asyncio.Event()
        submitter = asyncio.create_task(_submit_until(http, key, origin.url(sample_video.name), ids, stop))
        try:
            killed = await _kill_each_stage_mid_job(stack, res)
        finally:
            stop.set()
            await submitter
        marks.append(("kills", time.monotonic()))
        rows = await _all_ended(stack.settings, ids, END_TIMEOUT_S)
        marks.append(("ended", time.monotonic()))
        not_done = {i: (rows[i]["status"], rows[i]["error_code"]) if i in rows else None
                    for i in ids if i not in rows or rows[i]["status"] != "done"}
        assert not not_done, (not_done, stack.output())
        assert [rows[i]["done_events"] for i in ids] == [1] * len(ids)  # one result each, no second `done`
        clips = {k for k in await res.storage.list_keys("results/") if k.endswith(".mp4")}
        assert clips == {rows[i]["result_video_key"] for i in ids} and len(clips) == len(ids)

        status = stack.status()
        for stage, pid in killed.items():
            entry = status[KILLED[stage]]
            assert entry["state"] == "running" and entry["pid"] != pid and entry["restarts"] >= 1, (stage, entry)
            assert f"{KILLED[stage]} exited with code {-signal.SIGKILL}" in stack.log.read_text(errors="replace")
        assert status["trim.2"]["pid"] == trim2_pid and status["trim.2"]["restarts"] == 0
        assert all(entry["state"] == "running" for entry in status.values()), status

        nats_pid = status["nats"]["pid"]  # the NATS server the stack started: restarted on its same store
        os.kill(nats_pid, signal.SIGKILL)

        async def nats_back() -> bool:
            entry = stack.status()["nats"]
            return bool(entry["state"] == "running" and entry["pid"] != nats_pid)

        await _wait("NATS to be restarted", nats_back, UP_TIMEOUT_S, stack)
        marks.append(("nats", time.monotonic()))
        after = await http.post("/api/jobs", json={"source": {"type": "upload", "key": key}, "startSec": 18.2,
                                                   "endSec": 19.5})
        rows = await _all_ended(stack.settings, [after.json()["id"]], END_TIMEOUT_S)
        assert rows[after.json()["id"]]["status"] == "done", stack.output()
    marks.append(("after", time.monotonic()))
    phases = ", ".join(f"{name} +{at - marks[0][1]:.1f} s" for name, at in marks[1:])
    print(f"\nstack supervision: {len(ids)} jobs, killed {sorted(killed)}; {phases}")



async def test_the_printed_web_page_link_serves_the_page_and_its_origin_may_upload(stack: Stack) -> None:
    """The link `make run` prints: the gateway's web page with the stack's key in the fragment; the bucket's CORS
    lets the page's origins (127.0.0.1 and localhost) PUT an upload, and no other origin."""
    links = re.findall(r"web page  open (\S+)", stack.output(chars=1_000_000))
    assert links == [f"{stack.base_url}/#key={stack.api_key}"], stack.output()
    port = stack.base_url.rsplit(":", 1)[1]
    origins = {stack.base_url: True, f"http://localhost:{port}": True, "http://elsewhere.example": False}
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=HTTP_TIMEOUT_S, trust_env=False,
                                 headers={"Authorization": f"Bearer {stack.api_key}"}) as http:
        page = await http.get("/", headers={"Authorization": ""})
        slot = (await http.post("/api/uploads", json={"filename": "a.mp4", "contentType": "video/mp4",
                                                      "sizeBytes": 1})).json()
    assert page.status_code == 200 and "content-security-policy" in page.headers
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, trust_env=False) as storage:
        for origin, allowed in origins.items():
            preflight = await storage.options(slot["url"], headers={
                "Origin": origin, "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "content-type,if-none-match"})
            assert (preflight.headers.get("access-control-allow-origin") == origin) is allowed, (origin, preflight)
async def test_a_crash_looping_worker_stops_only_itself(tmp_path: Path) -> None:
    """A transcriber that cannot load its model exits at every start: restarted with backoff, then reported as
    a crash loop and left stopped, while every other process keeps running and the gateway keeps serving; the
    stack, stopped, exits 1 and names it."""
    data_dir, log = tmp_path / "data", tmp_path / "stack.log"
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "S3_SECRET_KEY")}
    gateway_port = free_port()
    env.update(DATA_DIR=str(data_dir), GATEWAY_PORT=str(gateway_port), ASR_MODEL=str(tmp_path / "no-model"),
               DB_SCHEMA=f"stack_loop_{secrets.token_hex(4)}", STACK_RESTART_BACKOFF_SEC="0.1",
               STACK_CRASH_LOOP_RESTARTS="2", DATABASE_URL=os.environ.get("CLIPJET_TEST_DATABASE_URL", DEFAULT_PG_URL),
               **{NATS_PORT_ENV: str(free_port()), S3_PORT_ENV: str(free_port())})
    proc = _start_stack(env, log)
    stack = Stack(proc, data_dir, log, load_settings({}), f"http://127.0.0.1:{gateway_port}")
    try:
        async def transcriber_failed() -> bool:
            return bool(stack.status()["transcribe.1"]["state"] == "failed")

        await _wait("the transcriber's crash loop", transcriber_failed, UP_TIMEOUT_S, stack)
        status = stack.status()
        assert status["transcribe.1"]["restarts"] == 2
        assert all(entry["state"] == "running" for name, entry in status.items() if name != "transcribe.1"), status
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=HTTP_TIMEOUT_S, trust_env=False) as http:
            assert (await http.get("/health")).status_code == 200
    finally:
        await asyncio.to_thread(_stop_stack, proc)
        conn = await asyncpg.connect(env["DATABASE_URL"])
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{env["DB_SCHEMA"]}" CASCADE')
        finally:
            await conn.close()
    output = log.read_text(errors="replace")
    assert proc.returncode == 1, output[-6000:]
    assert "transcribe.1 exited with code 1" in output and "restarting it in 0.1 s" in output
    assert "restarting it in 0.2 s" in output and "transcribe.1 FAILED" in output
    assert re.search(r"status: \d+ running, 1 failed \(transcribe\.1\)", output)
    assert "these services had failed (crash loop): transcribe.1" in output
