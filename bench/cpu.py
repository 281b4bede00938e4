"""CPU seconds per process (and its waited-for children) from /proc, to see where a run's CPU went."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
COMMAND_CHARS = 70
# /proc/<pid>/stat fields after the command name: utime, stime, cutime, cstime are fields 14-17 of the file
CPU_FIELDS = slice(11, 15)


def _cpu_seconds(pid: int) -> float:
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[CPU_FIELDS]) / CLOCK_TICKS


def _command(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def snapshot() -> dict[int, tuple[str, float]]:
    """pid → (command line, CPU seconds so far) for every process."""
    pids = (int(p.name) for p in PROC.iterdir() if p.name.isdigit())
    return {pid: (_command(pid)[:COMMAND_CHARS], _cpu_seconds(pid)) for pid in pids}


def cpu_used(before: dict[int, tuple[str, float]], top: int = 6) -> dict[str, float]:
    """CPU seconds used since `before` by the busiest processes that existed then."""
    used = [(cmd, round(_cpu_seconds(pid) - cpu, 2)) for pid, (cmd, cpu) in before.items() if cmd]
    used.sort(key=lambda item: item[1], reverse=True)
    return dict(used[:top])


def cpu_seconds_of(pids: list[int]) -> float:
    """CPU seconds so far of these processes and their waited-for children (e.g. a worker and its ffmpeg)."""
    return sum(_cpu_seconds(pid) for pid in pids)
