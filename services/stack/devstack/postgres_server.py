"""PostgreSQL: reuse a reachable server, or run a private cluster on loopback."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from services.stack.devstack.process import (
    LOOPBACK,
    PROBE_TIMEOUT_S,
    DevStackError,
    RunningServer,
    free_port,
    log_tail,
    spawn,
    tcp_open,
    wait_ready,
)

PG_READY_TIMEOUT_S = 30.0
INITDB_TIMEOUT_S = 120.0
PG_CONFIG_TIMEOUT_S = 10.0
PG_USER = "postgres"
PG_URL = f"postgresql://{PG_USER}@{LOOPBACK}:{{port}}/postgres"
PG_DATA_MODE = 0o700
PG_SYSTEM_BIN_DIRS = "/usr/lib/postgresql/*/bin"
UNIX_SOCKET_PATH_MAX_CHARS = 107


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
    if parts.hostname and not tcp_open(parts.port or 5432, parts.hostname):
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
        raise DevStackError(f"initdb exited with {done.returncode}; log {log_path}:\n{log_tail(log_path)}")


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
        proc = spawn(argv, log_path, signal.SIGINT, cwd=pgdata, **run_as)
        server = RunningServer("postgres", PG_URL.format(port=port), proc, extra, stop_signal=signal.SIGINT)
    wait_ready(server, lambda: postgres_reachable(server.url, PROBE_TIMEOUT_S), PG_READY_TIMEOUT_S, log_path)
    return server


def ensure_postgres(url: str, data_dir: Path) -> RunningServer:
    """Reuse the server at ``url`` when reachable (``process`` None), else start a private one in
    ``data_dir``, on url's port when that is a free loopback port."""
    if postgres_reachable(url):
        return RunningServer("postgres", url, None, {})
    parts = urlsplit(url)
    wanted = parts.port if parts.hostname in (LOOPBACK, "localhost") else None
    return start_postgres(data_dir, wanted if wanted and not tcp_open(wanted) else None)

