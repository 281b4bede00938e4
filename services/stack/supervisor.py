"""The local stack's supervisor: a service that exits is restarted with backoff; a crash loop stops only it.

Each supervised service is a name and a ``start`` function returning something :class:`Running`. ``tick()``
(called by the stack's main thread, so every process is started by that thread: their parent-death signal is
tied to the thread that forked them) looks at each one: an exit is logged with its code and the service is
started again after a pause that doubles from ``backoff_s`` up to ``backoff_max_s`` (back to ``backoff_s`` after a
run of ``stable_s``); a service that exits again after ``loop_restarts`` restarts within ``loop_window_s`` is
marked failed, reported with its last lines, and left stopped while the others keep serving. Every change is
one status line and a JSON status file (name → state, pid, restarts, last exit code).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from services.stack.devstack import DevStackError, RunningServer, log_tail, stop_with_parent
from shared.settings import Settings

LOG_TAIL_LINES = 40
SOURCE_WIDTH = 12  # "transcribe.1" fits
CHILD_KILL_WAIT_S = 5.0  # after SIGKILL of a child's process group
READER_JOIN_S = 1.0
STATUS_FILE_MODE = 0o644
RUNNING, RESTARTING, FAILED = "running", "restarting", "failed"

_print_lock = threading.Lock()


def say(message: str, source: str = "stack") -> None:
    """One line to stdout prefixed with its source, never interleaved with a child's line."""
    with _print_lock:
        print(f"{source:<{SOURCE_WIDTH}}| {message}", flush=True)


class Running(Protocol):
    """A started service: its pid, its exit code once it exited, a stop, and its last output."""

    @property
    def pid(self) -> int: ...

    def exit_code(self) -> int | None: ...

    def stop(self, grace_s: float) -> None: ...

    def last_lines(self) -> str: ...


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

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            say(line, self.name)

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def last_lines(self) -> str:
        self._reader.join(timeout=READER_JOIN_S)
        return "\n".join(self.tail) or "(no output)"

    def describe_exit(self) -> str:
        return f"{self.name} exited with code {self.proc.returncode}; its last lines:\n{self.last_lines()}"

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
                try:
                    self.proc.wait(timeout=CHILD_KILL_WAIT_S)
                except subprocess.TimeoutExpired:  # stuck in the kernel: the stop goes on with the others
                    say(f"{self.name} did not exit {CHILD_KILL_WAIT_S:.0f} s after SIGKILL; leaving it")
        self._reader.join(timeout=READER_JOIN_S)


@dataclass
class ServerRun:
    """A dev server (NATS, S3, PostgreSQL) this stack started, seen as :class:`Running`."""

    server: RunningServer

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def exit_code(self) -> int | None:
        return None if self.server.process is None else self.server.process.poll()

    def stop(self, grace_s: float) -> None:
        self.server.stop(grace_s)

    def last_lines(self) -> str:
        log = self.server.extra.get("log")
        return log_tail(Path(log)) if log else "(see its log under the data folder)"


@dataclass(frozen=True)
class Policy:
    """Restart pauses and what counts as a crash loop (STACK_RESTART_* and STACK_CRASH_LOOP_* settings)."""

    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    stable_s: float = 30.0
    loop_restarts: int = 5
    loop_window_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(settings.stack_restart_backoff_sec, settings.stack_restart_backoff_max_sec,
                   settings.stack_stable_run_sec, settings.stack_crash_loop_restarts,
                   settings.stack_crash_loop_window_sec)


@dataclass
class Supervised:
    """One service under supervision and its restart history."""

    name: str
    start: Callable[[], Running]
    run: Running | None = None
    state: str = RUNNING
    started_at: float = 0.0
    next_start_at: float = 0.0
    pause_s: float = 0.0
    restarts: collections.deque[float] = field(default_factory=collections.deque)  # monotonic times
    restarts_total: int = 0
    last_exit: int | None = None


class Supervisor:
    """Starts services, restarts those that exit, and marks crash-looping ones failed."""

    def __init__(self, policy: Policy, status_path: Path | None = None,
                 guard: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext) -> None:
        self.policy = policy
        self.status_path = status_path
        self.guard = guard  # held around every start, so an interrupt never leaves an untracked process
        self.services: dict[str, Supervised] = {}

    def add(self, name: str, start: Callable[[], Running], run: Running | None = None) -> Supervised:
        """Supervise ``name``: start it now, or adopt ``run`` when it was started already."""
        with self.guard():
            service = Supervised(name, start, run or start(), started_at=time.monotonic())
        self.services[name] = service
        self._changed(announce=False)
        return service

    def failed(self) -> list[str]:
        return [s.name for s in self.services.values() if s.state == FAILED]

    def tick(self) -> None:
        """Look at every service once: note exits, start the ones whose pause is over."""
        changed = False
        for service in self.services.values():
            now = time.monotonic()
            if service.state == RUNNING and service.run is not None and (code := service.run.exit_code()) is not None:
                self._exited(service, code, now)
                changed = True
            elif service.state == RESTARTING and now >= service.next_start_at:
                self._restart(service)
                changed = True
        if changed:
            self._changed()

    def _exited(self, service: Supervised, code: int | None, now: float) -> None:
        policy, ran_s = self.policy, now - service.started_at
        service.last_exit = code
        while service.restarts and now - service.restarts[0] > policy.loop_window_s:
            service.restarts.popleft()
        if len(service.restarts) >= policy.loop_restarts:
            service.state = FAILED
            last = service.run.last_lines() if service.run is not None else "(it did not start)"
            say(f"{service.name} FAILED: it exited again (code {code}) after {len(service.restarts)} restarts "
                f"within {policy.loop_window_s:g} s; it is not restarted, the other services keep serving. "
                f"Fix the cause and restart the stack. Its last lines:\n{last}")
            return
        stable = ran_s >= policy.stable_s or service.pause_s == 0.0
        service.pause_s = policy.backoff_s if stable else min(service.pause_s * 2, policy.backoff_max_s)
        service.state, service.next_start_at = RESTARTING, now + service.pause_s
        say(f"{service.name} exited with code {code} after {ran_s:.1f} s; restarting it in {service.pause_s:g} s "
            f"(restart {len(service.restarts) + 1} within {policy.loop_window_s:g} s)")

    def _restart(self, service: Supervised) -> None:
        now = time.monotonic()
        service.restarts.append(now)
        service.restarts_total += 1
        service.started_at = now
        try:
            with self.guard():
                service.run = service.start()
        except (DevStackError, OSError, subprocess.SubprocessError) as exc:
            say(f"{service.name} did not start again: {exc}")
            service.run = None
            self._exited(service, None, time.monotonic())
            return
        service.state = RUNNING
        say(f"{service.name} restarted (pid {service.run.pid})")

    def status_line(self) -> str:
        by_state: dict[str, list[str]] = {RUNNING: [], RESTARTING: [], FAILED: []}
        for service in self.services.values():
            by_state[service.state].append(service.name)
        parts = [f"{len(by_state[RUNNING])} running"]
        parts += [f"{len(names)} {state} ({', '.join(names)})" for state, names in by_state.items()
                  if state != RUNNING and names]
        return "status: " + ", ".join(parts)

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {s.name: {"state": s.state, "pid": s.run.pid if s.run is not None else None,
                         "restarts": s.restarts_total, "lastExit": s.last_exit} for s in self.services.values()}

    def _changed(self, announce: bool = True) -> None:
        if announce:
            say(self.status_line())
        if self.status_path is not None:
            partial = self.status_path.with_suffix(".tmp")
            partial.write_text(json.dumps(self.snapshot(), indent=1))
            partial.chmod(STATUS_FILE_MODE)
            partial.replace(self.status_path)

    def run_until(self, done: Callable[[], bool], timeout_s: float | None, poll_s: float) -> bool:
        """Tick every ``poll_s`` until ``done()``; False when ``timeout_s`` passed first (None: no limit)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not done():
            if deadline is not None and time.monotonic() > deadline:
                return False
            self.tick()
            time.sleep(poll_s)
        return True

    def stop_all(self, grace_s: float, order: Iterator[str] | None = None) -> None:
        """SIGTERM every running service at once (in ``order``, default reversed start order), then wait for
        each within ``grace_s``."""
        names = list(order) if order is not None else list(reversed(self.services))
        runs = [self.services[n].run for n in names if self.services[n].run is not None]
        for run in runs:
            if isinstance(run, Child) and run.exit_code() is None:
                with contextlib.suppress(ProcessLookupError):
                    run.proc.terminate()
        for run in runs:
            run.stop(grace_s)
