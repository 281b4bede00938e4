"""`clipjet stack`: NATS, S3 and PostgreSQL on loopback, every service as a child process, and a demo clip.

Servers and their data live under ``settings.data_dir`` (``.data/`` by default):

* NATS (JetStream) is our own on port 14222, unless ``NATS_URL`` is set in the environment: that server is
  reused (the machine's default 127.0.0.1:4222 may be an old NATS, so it is never assumed).
* S3 is our own SeaweedFS on port 18333, with the static key ``S3_ACCESS_KEY`` / ``S3_SECRET_KEY``.
* PostgreSQL at ``DATABASE_URL`` is reused when reachable, else a private cluster runs in ``data_dir/pg``.

The fixed ports can be changed with ``CLIPJET_STACK_NATS_PORT`` and ``CLIPJET_STACK_S3_PORT`` (the gateway's
with ``GATEWAY_PORT``); a fixed port that is taken is replaced by a free one, and the table says so. The
effective settings are written to ``data_dir/stack.env``: ``set -a; . .data/stack.env; set +a`` points the
``clipjet`` command (or ``honcho start -e .data/stack.env``) at the running stack.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import msgspec

from services.registry import STAGES
from shared.devstack import (
    DevStackError,
    RunningServer,
    ensure_postgres,
    free_port,
    start_nats,
    start_s3,
    stop_with_parent,
)
from shared.media.testpattern import make_test_pattern
from shared.settings import Settings, settings_env

LOOPBACK = "127.0.0.1"
NATS_PORT_ENV, DEFAULT_NATS_PORT = "CLIPJET_STACK_NATS_PORT", 14222
S3_PORT_ENV, DEFAULT_S3_PORT = "CLIPJET_STACK_S3_PORT", 18333
HEALTH_TIMEOUT_S = 60.0  # gateway start-up, migrations included
HEALTH_POLL_S = 0.25
HTTP_TIMEOUT_S = 30.0  # one HTTP request of the demo (the upload included)
JOB_TIMEOUT_S = 120.0  # how long the demo waits for its job
JOB_POLL_S = 0.25
CHILD_STOP_GRACE_S = 5.0  # on top of settings.shutdown_grace_sec, before SIGKILL
SERVE_POLL_S = 0.5
LOG_TAIL_LINES = 40
ENV_FILE_MODE = 0o600
SAMPLE_NAME, CLIP_NAME = "demo-sample.mp4", "demo-clip.mp4"
SAMPLE_SECONDS, SAMPLE_SIZE, SAMPLE_FPS, SAMPLE_GOP_FRAMES = 30, "1280x720", 30, 60
DEMO_START_S, DEMO_END_S = 12.5, 20.0
STACK_SCHEMA = "clipjet_stack"  # the local stack's tables, in whatever PostgreSQL it uses

_print_lock = threading.Lock()


class StackError(RuntimeError):
    """The stack could not be brought up or the demo failed."""


def say(message: str, source: str = "stack") -> None:
    """One line to stdout prefixed with its source, never interleaved with a child's line."""
    with _print_lock:
        print(f"{source:<8}| {message}", flush=True)


class Child:
    """A service process whose output is echoed line by line with its name in front, last lines kept."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=stop_with_parent(signal.SIGTERM))
        self._reader = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            say(line, self.name)

    def describe_exit(self) -> str:
        self._reader.join(timeout=1.0)
        tail = "\n".join(self.tail) or "(no output)"
        return f"{self.name} exited with code {self.proc.returncode}; its last lines:\n{tail}"

    def stop(self, grace_s: float) -> None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL its process group."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                say(f"{self.name} did not stop within {grace_s:.0f} s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=CHILD_STOP_GRACE_S)
        self._reader.join(timeout=1.0)


def _pick_port(what: str, wanted: int) -> int:
    """``wanted`` when it is free on loopback, else a free port (and say so)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            sock.bind((LOOPBACK, wanted))
            return wanted
    port = free_port()
    say(f"{what}: port {wanted} is taken; using {port} instead")
    return port


def _nats(data_dir: Path) -> RunningServer:
    if url := os.environ.get("NATS_URL"):
        first = urlsplit(url.split(",")[0].strip())
        try:
            socket.create_connection((first.hostname or LOOPBACK, first.port or 4222), timeout=2.0).close()
        except OSError as exc:
            raise StackError(f"NATS_URL={url} is set but that server does not answer ({exc})") from exc
        return RunningServer("nats", url, None)
    return start_nats(data_dir / "nats", _pick_port("nats", int(os.environ.get(NATS_PORT_ENV, DEFAULT_NATS_PORT))))


def _start_servers(settings: Settings, data_dir: Path, servers: list[RunningServer]) -> Settings:
    """Start or reuse NATS, S3 and PostgreSQL (appended to ``servers``); the settings that name them."""
    nats = _nats(data_dir)
    servers.append(nats)
    s3_port = _pick_port("s3", int(os.environ.get(S3_PORT_ENV, DEFAULT_S3_PORT)))
    s3 = start_s3(data_dir / "s3", settings.s3_access_key, settings.s3_secret_key, s3_port)
    servers.append(s3)
    postgres = ensure_postgres(settings.database_url, data_dir / "pg")
    servers.append(postgres)
    say(f"{'server':<9} {'state':<8} url")
    for server in servers:
        say(f"{server.name:<9} {'reused' if server.process is None else 'started':<8} {server.url}")
    return msgspec.structs.replace(settings, nats_url=nats.url, s3_endpoint_url=s3.url, database_url=postgres.url)


def _stack_schema(settings: Settings, database_url: str, fresh: bool) -> str:
    """The stack's own schema (STACK_SCHEMA unless DB_SCHEMA is set). A fresh data folder means a new, empty S3:
    the stack's schema starts empty too, so no job row points at an object that is gone."""
    if "DB_SCHEMA" in os.environ:
        return settings.db_schema
    if fresh:
        asyncio.run(_drop_schema(database_url, STACK_SCHEMA))
        say(f"postgres: fresh data folder, so schema {STACK_SCHEMA} starts empty")
    return STACK_SCHEMA


async def _drop_schema(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # a constant name, not user input
    finally:
        await conn.close()


def _effective(settings: Settings, data_dir: Path, demo: bool) -> Settings:
    """Settings for the children: local scratch, the gateway on a free port, private fetches for local use."""
    allow_private = settings.fetch_allow_private if "FETCH_ALLOW_PRIVATE" in os.environ else demo
    if allow_private:
        say("!" * 78)
        say("FETCH_ALLOW_PRIVATE is ON: URL sources may reach loopback and private networks.")
        say("That is for local use only; never expose this stack.")
        say("!" * 78)
    return msgspec.structs.replace(
        settings, data_dir=data_dir, scratch_dir=data_dir / "scratch", fetch_allow_private=allow_private,
        gateway_port=_pick_port("gateway", settings.gateway_port),
    )


def spawn_service(settings: Settings, name: str, *args: str) -> Child:
    """``python -m services ARGS`` with ``settings`` in its environment."""
    return Child(name, [sys.executable, "-m", "services", *args], {**os.environ, **settings_env(settings)})


def _check_alive(children: list[Child]) -> None:
    """Raise with its last lines when a child has exited."""
    for child in children:
        if child.proc.poll() is not None:
            raise StackError(child.describe_exit())


def wait_healthy(http: httpx.Client, base_url: str, children: list[Child]) -> None:
    """Poll ``GET /health`` until 200 (bounded); raise early when a child dies."""
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        _check_alive(children)
        try:
            response = http.get(f"{base_url}/health", timeout=HEALTH_POLL_S * 4)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(HEALTH_POLL_S)
    raise StackError(f"gateway not healthy at {base_url}/health after {HEALTH_TIMEOUT_S:.0f} s ({last}); "
                     "its last lines:\n" + "\n".join(children[0].tail))


def _ok(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.is_error:
        raise StackError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")
    return response.json() if response.content else {}


def _demo(http: httpx.Client, base_url: str, data_dir: Path) -> None:
    """Upload a sample, clip 12.5 to 20 s of it, download the clip, and print where it is."""
    started = time.monotonic()
    sample = make_test_pattern(data_dir / SAMPLE_NAME, seconds=SAMPLE_SECONDS, size=SAMPLE_SIZE, fps=SAMPLE_FPS,
                               gop_frames=SAMPLE_GOP_FRAMES)
    say(f"demo: sample {sample} ({sample.stat().st_size / 1e6:.1f} MB); uploading")
    slot = _ok(http.post(f"{base_url}/api/uploads", json={"filename": SAMPLE_NAME, "contentType": "video/mp4"}),
               "upload slot")
    with sample.open("rb") as body:
        _ok(http.request(slot["method"], slot["url"], headers=slot["headers"], content=body), "upload PUT")
    request = {"source": {"type": "upload", "key": slot["key"]}, "startSec": DEMO_START_S, "endSec": DEMO_END_S,
               "priority": "fast"}
    job_id = _ok(http.post(f"{base_url}/api/jobs", json=request), "create job")["id"]
    say(f"demo: job {job_id} queued; waiting up to {JOB_TIMEOUT_S:.0f} s")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (job := _ok(http.get(f"{base_url}/api/jobs/{job_id}"), "get job"))["status"] not in ("done", "failed"):
        if time.monotonic() > deadline:
            raise StackError(f"demo job {job_id} still {job['status']} (stage {job['stage']}) after "
                             f"{JOB_TIMEOUT_S:.0f} s")
        time.sleep(JOB_POLL_S)
    if job["status"] != "done":
        raise StackError(f"demo job {job_id} failed: {job.get('errorCode')}: {job.get('errorMessage')}")
    clip = data_dir / CLIP_NAME
    with http.stream("GET", job["urls"]["video"]) as response, clip.open("wb") as out:
        if response.is_error:
            raise StackError(f"clip download: HTTP {response.status_code}")
        for chunk in response.iter_bytes():
            out.write(chunk)
    result = job["result"]
    for line in (f"job       {job_id}  status {job['status']}  ({time.monotonic() - started:.1f} s in all)",
                 f"asked     {DEMO_START_S:g} to {DEMO_END_S:g} s; got {result['actualStartSec']:.3f} to "
                 f"{result['actualEndSec']:.3f} s ({result['durationSec']:.2f} s, {result['size']} bytes, "
                 f"{result.get('cutPath', 'copy')})",
                 f"clip      {clip}",
                 f"signed    {job['urls']['video']}",
                 "your own: curl -s -X POST " + base_url + "/api/jobs -H 'Content-Type: application/json' -d '"
                 + '{"source":{"type":"upload","key":"' + slot["key"] + '"},"startSec":3,"endSec":9}' + "'",
                 f"          then curl -s {base_url}/api/jobs/<id>   (uploads: POST {base_url}/api/uploads)"):
        say("demo: " + line)


class _Interrupts:
    """SIGINT/SIGTERM raise KeyboardInterrupt; while ``held`` (a server or child is starting, so none is left
    untracked) only once the hold ends; while ``closing``, never."""

    def __init__(self) -> None:
        self.holding = self.pending = self.closing = False
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: object) -> None:
        self.pending = not self.closing
        if self.pending and not self.holding:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending:
            raise KeyboardInterrupt

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def run_stack(settings: Settings, *, demo: bool, exit_after_demo: bool) -> int:
    """Bring the stack up, optionally run the demo, serve until Ctrl-C/SIGTERM; 0 when all went well."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env_file = data_dir / "stack.env"
    servers: list[RunningServer] = []
    children: list[Child] = []
    code = 0
    interrupts = _Interrupts()
    try:
        with interrupts.held():
            fresh = not (data_dir / "s3").exists()
            started = _start_servers(settings, data_dir, servers)
            schema = _stack_schema(settings, started.database_url, fresh)
            effective = _effective(msgspec.structs.replace(started, db_schema=schema), data_dir, demo)
            with os.fdopen(os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, ENV_FILE_MODE), "w") as out:
                os.fchmod(out.fileno(), ENV_FILE_MODE)  # it holds the S3 secret
                out.writelines(f"{k}={v}\n" for k, v in settings_env(effective).items())
            children.append(spawn_service(effective, "gateway", "gateway"))
        base_url = f"http://{effective.gateway_host}:{effective.gateway_port}"
        with httpx.Client(trust_env=False, timeout=HTTP_TIMEOUT_S) as http:
            wait_healthy(http, base_url, children)  # the gateway migrates the database before workers start
            with interrupts.held():
                children.extend(spawn_service(effective, stage, "worker", stage) for stage in STAGES)
                children.append(spawn_service(effective, "reaper", "reaper"))
            say(f"gateway   {base_url}  (API docs {base_url}/schema)")
            say(f"settings  {env_file}  (set -a; . {env_file}; set +a)")
            if demo:
                _demo(http, base_url, data_dir)
        if not (demo and exit_after_demo):
            say("serving; press Ctrl-C to stop")
            while True:
                _check_alive(children)
                time.sleep(SERVE_POLL_S)
    except KeyboardInterrupt:
        say("stopping")
    except (StackError, DevStackError, httpx.HTTPError, OSError, subprocess.SubprocessError) as exc:
        say(f"FAILED: {exc}")
        code = 1
    finally:
        interrupts.closing = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.proc.terminate()
        for child in children:
            child.stop(settings.shutdown_grace_sec + CHILD_STOP_GRACE_S)
        for server in reversed(servers):
            server.stop()
        interrupts.restore()
    say("stopped" if code == 0 else "stopped after a failure")
    return code
