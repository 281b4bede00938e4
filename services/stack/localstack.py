"""`clipjet stack`: NATS, S3 and PostgreSQL on loopback, every service as a supervised child, and a demo clip.

Servers and their data live under ``settings.data_dir`` (``.data/`` by default):

* NATS (JetStream) is our own on port 14222, unless ``NATS_URL`` is set in the environment: that server is
  reused (the machine's default 127.0.0.1:4222 may be an old NATS, so it is never assumed).
* S3 is our own SeaweedFS on port 18333, with the key ``S3_ACCESS_KEY`` and a secret generated for this data
  folder (``stackidentity``) unless ``S3_SECRET_KEY`` is set.
* PostgreSQL at ``DATABASE_URL`` is reused when reachable, else a private cluster runs in ``data_dir/pg``. The
  tables go to schema ``clipjet_stack_<id>`` (``<id>`` random per data folder) unless ``DB_SCHEMA`` is set; the
  stack never drops a schema.

The fixed ports can be changed with ``CLIPJET_STACK_NATS_PORT`` and ``CLIPJET_STACK_S3_PORT`` (the gateway's
with ``GATEWAY_PORT``); a fixed port that is taken is replaced by a free one, and the table says so. The
effective settings are written to ``data_dir/stack.env``: ``set -a; . .data/stack.env; set +a`` points the
``clipjet`` command (or ``honcho start -e .data/stack.env``) at the running stack.

Every service and every server the stack started is supervised (services/stack/supervisor.py): one that exits is
started again, a crash loop stops only that one. ``STACK_SCALE`` / ``--scale trim=2`` runs more worker
processes per stage (``trim.1``, ``trim.2``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import msgspec

from services.init import InitFailed, run_init
from services.registry import GATEWAY, NOTIFIER, REAPER, service_commands
from services.stack.devstack import (
    DevStackError,
    RunningServer,
    ensure_postgres,
    free_port,
    start_nats,
    start_postgres,
    start_s3,
)
from services.stack.stackdemo import CLIP_NAME, run_demo
from services.stack.stackidentity import stack_identity
from services.stack.stackkey import ENV_NAME as API_KEY_ENV
from services.stack.stackkey import stack_api_key
from services.stack.supervisor import Child, Policy, ServerRun, Supervisor, say
from shared.jobs.pipeline import installed_stages
from shared.settings import Settings, read_stack_env, settings_env

__all__ = [
    "CLIP_NAME", "NATS_PORT_ENV", "S3_PORT_ENV", "Child", "init_in_child", "read_stack_env", "run_stack",
    "spawn_service",
    "wait_healthy",
]

LOOPBACK = "127.0.0.1"
NATS_PORT_ENV, DEFAULT_NATS_PORT = "CLIPJET_STACK_NATS_PORT", 14222
S3_PORT_ENV, DEFAULT_S3_PORT = "CLIPJET_STACK_S3_PORT", 18333
HEALTH_TIMEOUT_S = 60.0  # gateway start-up
HEALTH_POLL_S = 0.25
HTTP_TIMEOUT_S = 30.0  # one HTTP request of the demo (the upload included)
CHILD_STOP_GRACE_S = 5.0  # on top of settings.shutdown_grace_sec, before SIGKILL
SERVE_POLL_S = 0.25  # how often the supervisor looks at its services
ENV_FILE_MODE = 0o600
STATUS_FILE = "stack-status.json"
MAX_SCALE = 16  # most processes of one stage
PG_DEFAULT_PORT = 5432


class StackError(RuntimeError):
    """The stack could not be brought up or the demo failed."""


def parse_scale(text: str, stages: tuple[str, ...]) -> dict[str, int]:
    """``"trim=2,fetch=2"`` → processes per stage (every stage in ``stages``: 1 unless named). ValueError
    with what to write instead for anything else."""
    scale = dict.fromkeys(stages, 1)
    for item in filter(None, (part.strip() for part in text.split(","))):
        stage, _, count = item.partition("=")
        stage = stage.strip()
        if stage not in stages:
            raise ValueError(f"scale {item!r}: {stage!r} is not a stage this stack runs ({', '.join(stages)})")
        if not count.strip().isdigit() or not 1 <= int(count) <= MAX_SCALE:
            raise ValueError(f"scale {item!r}: write STAGE=N with N from 1 to {MAX_SCALE}, e.g. trim=2")
        scale[stage] = int(count)
    return scale


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


def _nats(data_dir: Path) -> tuple[RunningServer, Callable[[], RunningServer]]:
    if url := os.environ.get("NATS_URL"):
        first = urlsplit(url.split(",")[0].strip())
        try:
            socket.create_connection((first.hostname or LOOPBACK, first.port or 4222), timeout=2.0).close()
        except OSError as exc:
            raise StackError(f"NATS_URL={url} is set but that server does not answer ({exc})") from exc
        return RunningServer("nats", url, None), lambda: RunningServer("nats", url, None)
    port = _pick_port("nats", int(os.environ.get(NATS_PORT_ENV, DEFAULT_NATS_PORT)))
    return start_nats(data_dir / "nats", port), lambda: start_nats(data_dir / "nats", port)  # the same store


def _start_servers(settings: Settings, data_dir: Path, supervisor: Supervisor) -> Settings:
    """Start or reuse NATS, S3 and PostgreSQL (the ones started are supervised); the settings naming them."""
    nats, restart_nats = _nats(data_dir)
    s3_port = _pick_port("s3", int(os.environ.get(S3_PORT_ENV, DEFAULT_S3_PORT)))

    def s3() -> RunningServer:
        return start_s3(data_dir / "s3", settings.s3_access_key, settings.s3_secret_key, s3_port)

    first_s3 = s3()
    postgres = ensure_postgres(settings.database_url, data_dir / "pg")
    pg_port = urlsplit(postgres.url).port or PG_DEFAULT_PORT  # a private cluster's URL always names its port
    restarts = {"nats": restart_nats, "s3": s3, "postgres": lambda: start_postgres(data_dir / "pg", pg_port)}
    say(f"{'server':<9} {'state':<8} url")
    for server in (nats, first_s3, postgres):
        say(f"{server.name:<9} {'reused' if server.process is None else 'started':<8} {server.url}")
        if server.process is not None:
            start = restarts[server.name]
            supervisor.add(server.name, lambda start=start: ServerRun(start()), ServerRun(server))
    return msgspec.structs.replace(settings, nats_url=nats.url, s3_endpoint_url=first_s3.url,
                                   database_url=postgres.url)


def _effective(settings: Settings, data_dir: Path, demo: bool) -> Settings:
    """Settings for the children: this folder's S3 secret and schema, local scratch, the gateway on a free
    port, private fetches for local use."""
    identity = stack_identity(data_dir)
    if "S3_SECRET_KEY" not in os.environ:
        settings = msgspec.structs.replace(settings, s3_secret_key=identity.s3_secret_key)
    if "DB_SCHEMA" not in os.environ:
        settings = msgspec.structs.replace(settings, db_schema=identity.schema)
    allow_private = settings.fetch_allow_private if "FETCH_ALLOW_PRIVATE" in os.environ else demo
    if allow_private:
        say("!" * 78)
        say("FETCH_ALLOW_PRIVATE is ON: URL sources may reach loopback and private networks.")
        say("That is for local use only; never expose this stack.")
        say("!" * 78)
    port = _pick_port("gateway", settings.gateway_port)
    cors = settings.s3_cors_origins if "S3_CORS_ORIGINS" in os.environ else page_origins(settings.gateway_host, port)
    metrics_host = settings.metrics_host if "METRICS_HOST" in os.environ else LOOPBACK  # as everything else here
    return msgspec.structs.replace(
        settings, data_dir=data_dir, scratch_dir=data_dir / "scratch", fetch_allow_private=allow_private,
        gateway_port=port, s3_cors_origins=cors, metrics_host=metrics_host,
    )


def page_origins(host: str, port: int) -> str:
    """The origins a browser may open the web page at (the bucket's CORS lets them upload)."""
    hosts = [host, "localhost"] if host == "127.0.0.1" else [host]
    return ",".join(f"http://{name}:{port}" for name in hosts)


def spawn_service(settings: Settings, name: str, *args: str) -> Child:
    """``python -m services ARGS`` with ``settings`` in its environment."""
    return Child(name, [sys.executable, "-m", "services", *args], {**os.environ, **settings_env(settings)})


def init_in_child(settings: Settings) -> None:
    """`clipjet init` for ``settings`` in a child process (for callers whose event loop is running: benchmarks)."""
    done = subprocess.run([sys.executable, "-m", "services", "init"], env={**os.environ, **settings_env(settings)},
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StackError(f"clipjet init failed: {done.stderr[-2000:]}")


def _check_alive(children: list[Child]) -> None:
    """Raise with its last lines when a child has exited."""
    for child in children:
        if child.proc.poll() is not None:
            raise StackError(child.describe_exit())


def healthy(http: httpx.Client, base_url: str) -> bool:
    """Whether ``GET /health`` answers 200 now."""
    with contextlib.suppress(httpx.HTTPError, httpx.InvalidURL):
        return http.get(f"{base_url}/health", timeout=HEALTH_POLL_S * 4).status_code == 200
    return False


def wait_healthy(http: httpx.Client, base_url: str, children: list[Child]) -> None:
    """Poll ``GET /health`` until 200 (bounded); raise early when a child dies (unsupervised callers)."""

    def ready() -> bool:
        _check_alive(children)
        return healthy(http, base_url)

    if not Supervisor(Policy()).run_until(ready, HEALTH_TIMEOUT_S, HEALTH_POLL_S):
        raise StackError(f"gateway not healthy at {base_url}/health after {HEALTH_TIMEOUT_S:.0f} s; "
                         "its last lines:\n" + "\n".join(children[0].tail))


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


class _Demo(threading.Thread):
    """The demo in a thread of its own, so the main thread keeps supervising (and is the only one starting
    processes) while it runs."""

    def __init__(self, base_url: str, data_dir: Path, api_key: str) -> None:
        super().__init__(name="demo", daemon=True)
        self.base_url, self.data_dir, self.api_key = base_url, data_dir, api_key
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with httpx.Client(trust_env=False, timeout=HTTP_TIMEOUT_S) as http:
                run_demo(http, self.base_url, self.data_dir, self.api_key)
        except Exception as exc:  # whatever stops the demo is the stack's failure, reported by the main thread
            self.error = exc


def _bring_up(supervisor: Supervisor, effective: Settings, scale: dict[str, int], http: httpx.Client,
              metrics_ports: dict[str, int]) -> str:
    """The gateway, then every worker process, the reaper and the notifier (`clipjet init` ran before); the
    gateway's URL. Each process gets an ops port of its own (/metrics, /livez, /readyz), noted in `metrics_ports`,
    unless METRICS_PORT is 0."""
    commands = service_commands(tuple(scale))

    def service(name: str, args: tuple[str, ...]) -> Callable[[], Child]:
        ops = effective
        if effective.metrics_port > 0:  # many processes on one machine: one free port each (kept on restarts)
            metrics_ports[name] = free_port()
            ops = msgspec.structs.replace(effective, metrics_port=metrics_ports[name])
        return lambda: spawn_service(ops, name, *args)

    supervisor.add(GATEWAY, service(GATEWAY, commands[GATEWAY]))
    base_url = f"http://{effective.gateway_host}:{effective.gateway_port}"

    def gateway_up() -> bool:
        if GATEWAY in supervisor.failed():
            raise StackError(f"the gateway keeps exiting; see its lines above (health: {base_url}/health)")
        return healthy(http, base_url)

    if not supervisor.run_until(gateway_up, HEALTH_TIMEOUT_S, HEALTH_POLL_S):
        raise StackError(f"gateway not healthy at {base_url}/health after {HEALTH_TIMEOUT_S:.0f} s")
    for stage, count in scale.items():
        for n in range(1, count + 1):
            supervisor.add(f"{stage}.{n}", service(f"{stage}.{n}", commands[stage]))
    supervisor.add(REAPER, service(REAPER, commands[REAPER]))
    supervisor.add(NOTIFIER, service(NOTIFIER, commands[NOTIFIER]))
    return base_url


def _write_env(env_file: Path, effective: Settings, api_key: str) -> None:
    with os.fdopen(os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, ENV_FILE_MODE), "w") as out:
        os.fchmod(out.fileno(), ENV_FILE_MODE)  # it holds the S3 secret and the API key
        values = {**settings_env(effective), API_KEY_ENV: api_key}
        out.writelines(f"{k}={shlex.quote(v)}\n" for k, v in values.items())  # sourced by a shell and by honcho


def run_stack(settings: Settings, *, demo: bool, exit_after_demo: bool, scale: dict[str, int] | None = None) -> int:
    """Bring the stack up, optionally run the demo, serve until Ctrl-C/SIGTERM; 0 when all went well.

    ``scale``: worker processes per stage (default: one per stage of INSTALLED_STAGES)."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env_file = data_dir / "stack.env"
    scale = scale or dict.fromkeys(installed_stages(settings.installed_stages), 1)
    interrupts = _Interrupts()
    supervisor = Supervisor(Policy.from_settings(settings), data_dir / STATUS_FILE, interrupts.held)
    code = 0
    metrics_ports: dict[str, int] = {}
    try:
        with interrupts.held():
            identity_settings = _effective(settings, data_dir, demo)
            started = _start_servers(identity_settings, data_dir, supervisor)
            effective = msgspec.structs.replace(identity_settings, nats_url=started.nats_url,
                                                s3_endpoint_url=started.s3_endpoint_url,
                                                database_url=started.database_url)
            say("init      migrations, streams and consumers, bucket (`clipjet init`)")
            asyncio.run(run_init(effective))  # the services only wait for what it makes
            api_key = "" if effective.auth == "off" else stack_api_key(effective, data_dir)
            _write_env(env_file, effective, api_key)
        with httpx.Client(trust_env=False, timeout=HTTP_TIMEOUT_S) as http:
            base_url = _bring_up(supervisor, effective, scale, http, metrics_ports)
        say(supervisor.status_line())
        if metrics_ports:
            say("metrics   " + ", ".join(f"{name} :{port}" for name, port in metrics_ports.items())
                + f"  (http://{LOOPBACK}:PORT/metrics, /livez, /readyz)")
        say(f"gateway   {base_url}  (API docs {base_url}/schema)")
        say(f"settings  {env_file}  (set -a; . {env_file}; set +a)")
        if api_key:
            say(f"api key   {api_key}  (admin; {API_KEY_ENV} in {env_file.name})")
        if demo:
            runner = _Demo(base_url, data_dir, api_key)
            runner.start()
            supervisor.run_until(lambda: not runner.is_alive(), None, SERVE_POLL_S)
            if runner.error is not None:
                raise StackError(f"demo: {type(runner.error).__name__}: {runner.error}")
        if not (demo and exit_after_demo):
            say(f"web page  open {base_url}/" + (f"#key={api_key}" if api_key else ""))
            say(f"serving; press Ctrl-C to stop (status in {data_dir / STATUS_FILE})")
            supervisor.run_until(lambda: False, None, SERVE_POLL_S)
    except KeyboardInterrupt:
        say("stopping")
    except (StackError, DevStackError, InitFailed, httpx.HTTPError, OSError, subprocess.SubprocessError) as exc:
        say(f"FAILED: {exc}")
        code = 1
    finally:
        interrupts.closing = True
        supervisor.stop_all(settings.shutdown_grace_sec + CHILD_STOP_GRACE_S)
        interrupts.restore()
    if failed := supervisor.failed():
        say(f"these services had failed (crash loop): {', '.join(failed)}")
        code = code or 1
    say("stopped" if code == 0 else "stopped after a failure")
    return code
