"""`python -m bench.gateway`: the gateway's own speed, side by side with its database + publish floor.

A stack of its own (NATS, S3, the machine's PostgreSQL in a private schema) with AUTH on, one API key (quotas
large enough never to refuse), the rate limit on. `wrk` (a separate process, 32 connections) drives

- POST /api/jobs: a 2 s clip of a small pre-uploaded source (an upload source: the gateway checks the upload),
- GET /api/jobs/{id}: a done job (its answer carries signed URLs),

each next to its floor, run by another process at the same concurrency: a bare asyncpg INSERT of a job row plus
one JetStream publish (awaiting its ack) per POST, a bare asyncpg SELECT of a job row per GET.

Phases: workers idle (no worker process runs; the POSTed jobs wait in NATS), AUTH off (the same gateway without
keys: what auth, quotas and the rate limit cost per request), workers busy (every stage's worker runs, chewing
through the jobs the idle phase queued). Each figure is the median of `--runs` rounds. Needs `wrk`
(`apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec

from services.keyscmd import create_key
from services.registry import STAGES
from services.stack.devstack import ensure_postgres, free_port, start_nats, start_postgres, start_s3
from services.stack.localstack import Child, healthy, init_in_child, spawn_service
from shared.db import jobs as job_rows
from shared.db.pool import create_pool
from shared.jobs.contracts import ClipJobMessage, UploadSource
from shared.jobs.ids import uuid7
from shared.media.testpattern import make_test_pattern
from shared.runtime.bus import connect
from shared.settings import Settings, load_settings, settings_env
from shared.storage.s3 import open_storage

DATA = Path(".data/bench")
RESULTS = Path("bench/results")
S3_KEY, S3_SECRET = "bench", "bench-secret-key"
CONNECTIONS = 32  # requests in flight, for clipjet and for its floor
WRK_THREADS = 2
SOURCE_SEC, CLIP = 6, (1.0, 3.0)  # the uploaded source and the clip every POST asks for, s
UPLOAD_KEY_NAME = "source.mp4"
DONE_TIMEOUT_SEC = 60.0
STOP_GRACE_SEC = 10.0
GATEWAY_START_SEC = 180.0  # migrations and every gateway process, on a machine that may be busy
FLOOR_STREAM, FLOOR_SUBJECT = "BENCHFLOOR", "benchfloor.jobs"
BIG = 10**9  # quotas and rate limit the benchmark never reaches (they are still checked on every request)

WRK_SCRIPT = """
wrk.method = "{method}"
wrk.headers["Content-Type"] = "application/json"
{auth}
wrk.body = {body}
done = function(summary, latency, requests)
  io.write(string.format('{{"requests": %d, "duration_us": %d, "non2xx": %d, "errors": %d, '
    .. '"p50_ms": %.3f, "p99_ms": %.3f}}\\n', summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


@dataclass
class Figure:
    """One load run: requests per second and latency percentiles."""

    rate: float
    p50_ms: float
    p99_ms: float
    bad: int = 0  # non-2xx answers and socket errors
    requests: int = 0  # requests answered in the run
    cpu_sec: float = 0.0  # CPU seconds (user + system) of the floor's process over its loop (0: not measured)

    def as_dict(self) -> dict[str, float]:
        return {"req_per_s": round(self.rate, 1), "p50_ms": round(self.p50_ms, 2), "p99_ms": round(self.p99_ms, 2),
                "bad": self.bad}


@dataclass
class Series:
    runs: list[Figure] = field(default_factory=list)

    def median(self) -> Figure:
        return Figure(statistics.median(f.rate for f in self.runs), statistics.median(f.p50_ms for f in self.runs),
                      statistics.median(f.p99_ms for f in self.runs), sum(f.bad for f in self.runs))


# ------------------------------------------------------------------------------------------------ the floor


async def _floor(settings: Settings, kind: str, seconds: float, job_id: str, concurrency: int) -> Figure:
    """Bare asyncpg (+ JetStream for POST) at `concurrency` requests in flight for `seconds`."""
    pool = await create_pool(msgspec.structs.replace(settings, db_pool_max=concurrency), check_migrated=False)
    nc = await connect(settings, "bench-floor")
    js = nc.jetstream()
    request = msgspec.to_builtins(_job(job_id))
    target = job_rows.window(uuid.UUID(job_id))
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def post_once() -> None:
        uid = uuid7()
        low, _ = job_rows.window(uid)
        async with pool.acquire() as conn:
            await conn.execute(FLOOR_INSERT, uid, low, "normal", job_rows.shard_of(uid), request)
        await js.publish(FLOOR_SUBJECT, msgspec.json.encode(request), headers={"Nats-Msg-Id": str(uid)})

    async def get_once() -> None:
        await pool.fetchrow(job_rows.SELECT_JOB, uuid.UUID(job_id), *target)

    once = post_once if kind == "post" else get_once

    async def loop() -> None:
        while (began := time.monotonic()) < deadline:
            await once()
            latencies.append(time.monotonic() - began)

    started, cpu_before = time.monotonic(), time.process_time()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed, cpu_sec = time.monotonic() - started, time.process_time() - cpu_before
    await nc.close()
    await pool.close()
    ordered = sorted(latencies)
    return Figure(len(ordered) / elapsed, ordered[len(ordered) // 2] * 1000,
                  ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, requests=len(ordered),
                  cpu_sec=cpu_sec)


FLOOR_INSERT = """
INSERT INTO jobs (id, created_at, priority, shard, request, status, published_at)
VALUES ($1, $2, $3, $4, $5, 'failed', now())
"""


def run_floor(settings: Settings, kind: str, seconds: float, job_id: str) -> Figure:
    """The floor in a process of its own (as the gateway is), like the load generator."""
    env = {**os.environ, **settings_env(settings)}
    out = subprocess.run(
        [sys.executable, "-m", "bench.gateway", "--floor", kind, "--seconds", str(seconds), "--job", job_id],
        env=env, capture_output=True, text=True, timeout=seconds + 60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the {kind} floor failed: {out.stderr[-2000:]}")
    return msgspec.json.decode(out.stdout.strip().splitlines()[-1], type=Figure)


# ---------------------------------------------------------------------------------------------- the stack


def _job(job_id: str, key: str = f"uploads/x/{UPLOAD_KEY_NAME}") -> ClipJobMessage:
    return ClipJobMessage(id=job_id, source=UploadSource(key=key), start_sec=CLIP[0], end_sec=CLIP[1],
                          precision="keyframe")


def wait_started(child: Child, base_url: str, what: str = "the gateway") -> None:
    """Wait for a gateway process to answer GET /health (GATEWAY_START_SEC at most); RuntimeError with its exit
    when it dies or times out first."""
    deadline = time.monotonic() + GATEWAY_START_SEC
    with httpx.Client() as http:
        while not healthy(http, base_url):
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start: {child.describe_exit()}")
            time.sleep(0.2)


@dataclass
class Stack:
    settings: Settings
    base_url: str
    gateway: Child | None = None
    workers: list[Child] = field(default_factory=list)

    def start_gateway(self, **changes: Any) -> None:
        self.stop_gateway()
        settings = msgspec.structs.replace(self.settings, **changes)
        self.gateway = spawn_service(settings, "gateway", "gateway")
        wait_started(self.gateway, self.base_url)

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.stop(STOP_GRACE_SEC)
            self.gateway = None

    def start_workers(self) -> None:
        self.workers = [spawn_service(self.settings, stage, "worker", stage) for stage in STAGES]

    def stop_workers(self) -> None:
        for child in self.workers:  # all asked at once, then waited for one by one
            if child.proc.poll() is None:
                child.proc.terminate()
        for child in self.workers:
            child.stop(STOP_GRACE_SEC)
        self.workers = []


@contextmanager
def gateway_stack(data_dir: Path, private_postgres: bool = False) -> Iterator[Stack]:
    servers = [start_nats(data_dir / "nats"), start_s3(data_dir / "s3", S3_KEY, S3_SECRET)]
    stack: Stack | None = None
    try:
        postgres = (start_postgres(data_dir / "pg") if private_postgres
                    else ensure_postgres(load_settings().database_url, data_dir / "pg"))
        servers.append(postgres)
        tag = secrets.token_hex(3)
        settings = load_settings(
            {}, nats_url=servers[0].url, s3_endpoint_url=servers[1].url, s3_access_key=S3_KEY,
            s3_secret_key=S3_SECRET, database_url=postgres.url, db_schema=f"bench_{tag}", s3_bucket=f"bench-{tag}",
            scratch_dir=str(data_dir / "scratch"), gateway_port=free_port(), log_level="warning", auth="on",
            rate_limit_per_min=BIG, queue_backlog_limit=BIG,
        )
        init_in_child(settings)
        stack = Stack(settings, f"http://127.0.0.1:{settings.gateway_port}")
        yield stack
    finally:
        if stack is not None:
            stack.stop_workers()
            stack.stop_gateway()
            asyncio.run(_drop_schema(stack.settings))
        for server in reversed(servers):
            server.stop()


async def _drop_schema(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE')
    finally:
        await conn.close()


async def _prepare(stack: Stack, source: Path) -> tuple[str, str]:
    """A key, the uploaded source, the floor's stream; (token, upload key)."""
    settings = stack.settings
    token, _ = await create_key(settings, "bench", max_in_flight=BIG, jobs_per_day=BIG, source_seconds_per_day=BIG,
                             upload_gib_per_day=BIG)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.base_url, headers=headers, timeout=30) as http:
        slot = (await http.post("/api/uploads", json={"filename": UPLOAD_KEY_NAME, "contentType": "video/mp4",
                                                      "sizeBytes": source.stat().st_size})).raise_for_status().json()
        async with httpx.AsyncClient(timeout=30) as s3:
            (await s3.put(slot["url"], content=source.read_bytes(), headers=slot["headers"])).raise_for_status()
    nc = await connect(settings, "bench")
    js = nc.jetstream()
    from nats.js.api import StorageType, StreamConfig

    await js.add_stream(StreamConfig(name=FLOOR_STREAM, subjects=[FLOOR_SUBJECT], storage=StorageType.FILE,
                                     max_msgs=100_000))
    await nc.close()
    async with open_storage(settings) as storage:
        assert await storage.head(slot["key"]) is not None
    return token, slot["key"]


async def _done_job(stack: Stack, token: str, key: str) -> str:
    """A job run to `done` (workers must be running): the GET target."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.base_url, headers=headers, timeout=30) as http:
        body = {"source": {"type": "upload", "key": key}, "startSec": CLIP[0], "endSec": CLIP[1]}
        job_id = (await http.post("/api/jobs", json=body)).raise_for_status().json()["id"]
        deadline = time.monotonic() + DONE_TIMEOUT_SEC
        while time.monotonic() < deadline:
            status = (await http.get(f"/api/jobs/{job_id}")).json()["status"]
            if status == "done":
                return str(job_id)
            if status in ("failed", "canceled", "expired"):
                raise RuntimeError(f"the GET target job ended {status}")
            await asyncio.sleep(0.2)
    raise TimeoutError(f"job {job_id} was not done within {DONE_TIMEOUT_SEC} s")


# -------------------------------------------------------------------------------------------------- wrk


def run_wrk(url: str, method: str, body: dict[str, Any] | None, token: str | None, seconds: float,
            work: Path) -> Figure:
    script = work / f"{method.lower()}-{secrets.token_hex(3)}.lua"
    script.write_text(WRK_SCRIPT.format(
        method=method, auth=f'wrk.headers["Authorization"] = "Bearer {token}"' if token else "",
        body=json.dumps(json.dumps(body)) if body is not None else "nil",
    ))
    out = subprocess.run(
        ["wrk", "-t", str(WRK_THREADS), "-c", str(CONNECTIONS), "-d", f"{max(1, round(seconds))}s", "--timeout", "5s",
         "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr or out.stdout}")
    found = json.loads(out.stdout.strip().splitlines()[-1])
    rate = found["requests"] / (found["duration_us"] / 1e6)
    return Figure(rate, found["p50_ms"], found["p99_ms"], found["non2xx"] + found["errors"], found["requests"])


# ------------------------------------------------------------------------------------------------ phases


@dataclass
class Phase:
    post: Series = field(default_factory=Series)
    post_floor: Series = field(default_factory=Series)
    get: Series = field(default_factory=Series)
    get_floor: Series = field(default_factory=Series)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("post", "get"):
            mine = getattr(self, name).median()
            out[name] = mine.as_dict()
            if getattr(self, f"{name}_floor").runs:
                floor = getattr(self, f"{name}_floor").median()
                out[f"{name}_floor"] = floor.as_dict()
                out[f"{name}_ratio"] = round(mine.rate / floor.rate, 3)
        return out


def measure(stack: Stack, phase: Phase, token: str | None, key: str, job_id: str, seconds: float, runs: int,
            work: Path, floors: bool = True) -> None:
    body = {"source": {"type": "upload", "key": key}, "startSec": CLIP[0], "endSec": CLIP[1],
            "precision": "keyframe"}
    for _ in range(runs):  # interleaved: each round sees the same load on the machine
        if floors:
            phase.post_floor.runs.append(run_floor(stack.settings, "post", seconds, job_id))
        phase.post.runs.append(run_wrk(f"{stack.base_url}/api/jobs", "POST", body, token, seconds, work))
        if floors:
            phase.get_floor.runs.append(run_floor(stack.settings, "get", seconds, job_id))
        phase.get.runs.append(run_wrk(f"{stack.base_url}/api/jobs/{job_id}", "GET", None, token, seconds, work))


_BEGAN = time.monotonic()


def say(what: str) -> None:
    print(f"[{time.monotonic() - _BEGAN:6.1f} s] {what}", file=sys.stderr, flush=True)


def benchmark(seconds: float, runs: int, processes: int | None, private_postgres: bool) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("bench.gateway needs wrk: apt-get install -y wrk")
    DATA.mkdir(parents=True, exist_ok=True)
    source = make_test_pattern(DATA / f"source-{SOURCE_SEC}s-360p.mp4", seconds=SOURCE_SEC)
    load_before = os.getloadavg()
    with (tempfile.TemporaryDirectory(dir=DATA.resolve()) as tmp,
          gateway_stack(Path(tmp) / "stack", private_postgres) as stack):
        work = Path(tmp)
        gateway_changes: dict[str, Any] = {} if processes is None else {"gateway_processes": processes}
        stack.settings = msgspec.structs.replace(stack.settings, **gateway_changes)
        say("stack up")
        stack.start_gateway()
        say("gateway up")
        token, key = asyncio.run(_prepare(stack, source))
        stack.start_workers()
        job_id = asyncio.run(_done_job(stack, token, key))
        say("done job made")
        stack.stop_workers()
        say("workers stopped")
        idle, auth_off, busy = Phase(), Phase(), Phase()
        measure(stack, idle, token, key, job_id, seconds, runs, work)
        say(f"idle: {idle.summary()}")
        stack.start_gateway(auth="off")
        measure(stack, auth_off, None, key, job_id, seconds, runs, work, floors=False)
        say(f"auth off: {auth_off.summary()}")
        stack.start_gateway()
        stack.start_workers()
        measure(stack, busy, token, key, job_id, seconds, runs, work)
        say(f"busy: {busy.summary()}")
    return {
        "machine": f"{platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()})",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "postgres": "private" if private_postgres else "the machine's",
        "seconds_per_run": seconds, "runs": runs, "connections": CONNECTIONS,
        "workers_idle": idle.summary(), "auth_off_idle": auth_off.summary(), "workers_busy": busy.summary(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each load run, s")
    parser.add_argument("--runs", type=int, default=3, help="rounds per figure (the median is reported)")
    parser.add_argument("--processes", type=int, help="GATEWAY_PROCESSES (default: the setting's default)")
    parser.add_argument("--private-postgres", action="store_true",
                        help="a PostgreSQL cluster of its own (when the machine's is shared and out of connections)")
    parser.add_argument("--floor", choices=("post", "get"), help=argparse.SUPPRESS)  # the floor's own process
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        settings = load_settings()
        figure = asyncio.run(_floor(settings, args.floor, args.seconds, args.job, CONNECTIONS))
        print(msgspec.json.encode(figure).decode())
        return
    began = time.time()
    results = benchmark(args.seconds, args.runs, args.processes, args.private_postgres)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"gateway-{int(began)}.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {out} in {time.time() - began:.0f} s")


if __name__ == "__main__":
    main()
