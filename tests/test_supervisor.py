"""The local stack's supervisor on real processes: restarts with doubling backoff, a crash loop stops only the
crashing service, a SIGKILLed one comes back, and the status file says so."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from services.stack.supervisor import FAILED, RUNNING, Child, Policy, Supervisor

FAST = Policy(backoff_s=0.05, backoff_max_s=0.4, stable_s=30.0, loop_restarts=3, loop_window_s=30.0)
WAIT_S = 20.0  # bound of every wait below (a few restarts of a Python process on a busy machine)
POLL_S = 0.02
STOP_GRACE_S = 5.0
CRASH_CODE = 3


def _python(name: str, code: str) -> Child:
    return Child(name, [sys.executable, "-c", code], dict(os.environ))


def _crasher() -> Child:
    return _python("crasher", f"import sys; print('boom', flush=True); sys.exit({CRASH_CODE})")


def _steady() -> Child:
    return _python("steady", "import time; print('up', flush=True); time.sleep(120)")


@pytest.fixture
def supervisor(tmp_path: Path) -> Supervisor:
    return Supervisor(FAST, tmp_path / "status.json")


def _stop(supervisor: Supervisor) -> None:
    supervisor.stop_all(STOP_GRACE_S)


def test_crash_loop_stops_only_that_service(
    supervisor: Supervisor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        steady = supervisor.add("steady", _steady)
        steady_pid = steady.run.pid if steady.run else None
        crasher = supervisor.add("crasher", _crasher)
        assert supervisor.run_until(lambda: crasher.state == FAILED, WAIT_S, POLL_S), supervisor.snapshot()
        supervisor.run_until(lambda: False, 0.5, POLL_S)  # it stays failed: no further restart
        assert (crasher.restarts_total, crasher.last_exit) == (FAST.loop_restarts, CRASH_CODE)
        assert steady.state == RUNNING and steady.run is not None and steady.run.exit_code() is None
        assert steady.run.pid == steady_pid
        assert supervisor.failed() == ["crasher"]
    finally:
        _stop(supervisor)
    out = capsys.readouterr().out
    pauses = re.findall(rf"crasher exited with code {CRASH_CODE} after [\d.]+ s; restarting it in ([\d.]+) s", out)
    assert [float(p) for p in pauses] == [0.05, 0.1, 0.2]  # doubling from backoff_s
    assert "crasher FAILED" in out and "the other services keep serving" in out and "boom" in out
    assert "status: 1 running, 1 failed (crasher)" in out
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["crasher"]["state"] == FAILED and status["steady"]["state"] == RUNNING


def test_a_killed_service_is_started_again(supervisor: Supervisor, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        steady = supervisor.add("steady", _steady)
        assert steady.run is not None
        first_pid = steady.run.pid
        os.kill(first_pid, signal.SIGKILL)
        assert supervisor.run_until(lambda: steady.restarts_total == 1 and steady.state == RUNNING, WAIT_S, POLL_S)
        assert steady.run.pid != first_pid and steady.run.exit_code() is None
        assert steady.last_exit == -signal.SIGKILL
    finally:
        _stop(supervisor)
    out = capsys.readouterr().out
    assert f"steady exited with code {-signal.SIGKILL}" in out and "steady restarted (pid " in out


def test_a_stable_run_resets_the_backoff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A service that ran at least stable_s before exiting restarts after the first pause again."""
    policy = Policy(backoff_s=0.05, backoff_max_s=0.4, stable_s=0.3, loop_restarts=3, loop_window_s=30.0)
    supervisor = Supervisor(policy, tmp_path / "status.json")
    try:
        slow = supervisor.add("slow", lambda: _python("slow", "import time, sys; time.sleep(0.5); sys.exit(1)"))
        assert supervisor.run_until(lambda: slow.state == FAILED, WAIT_S, POLL_S), supervisor.snapshot()
    finally:
        _stop(supervisor)
    pauses = re.findall(r"slow exited with code 1 after [\d.]+ s; restarting it in ([\d.]+) s",
                        capsys.readouterr().out)
    assert [float(p) for p in pauses] == [0.05, 0.05, 0.05]
