"""How many CPUs this process may really use: the container's CPU limit (cgroup v2 `cpu.max`, v1 CFS quota), the
CPU affinity mask, or os.cpu_count(), whichever is smallest. Thread counts follow it, so a pod limited to 2 CPUs on a
64-core node runs 2 encoder threads, not 64 throttled ones."""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
V1_CPU_CONTROLLERS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroup_paths(proc_self_cgroup: Path) -> dict[str, str]:
    """controller list ('' for cgroup v2) -> this process' cgroup path, from /proc/self/cgroup."""
    text = _read(proc_self_cgroup) or ""
    paths = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths[parts[1]] = parts[2].lstrip("/")
    return paths


def _quota_cpus(quota: int, period: int) -> int | None:
    """Whole CPUs a CFS quota allows (at least 1), None when unlimited or unreadable."""
    if quota <= 0 or period <= 0:
        return None
    return max(1, quota // period)


def _v2_limit(folder: Path) -> int | None:
    text = _read(folder / "cpu.max")  # "max 100000" (no limit) or "<quota> <period>"
    if not text:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        return _quota_cpus(int(fields[0]), int(fields[1]))
    except ValueError:
        return None


def _v1_limit(folder: Path) -> int | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    try:
        return _quota_cpus(int(quota), int(period))
    except ValueError:
        return None


def cgroup_cpu_limit(cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> int | None:
    """The CPU limit of this process' cgroup in whole CPUs, None when there is none. Inside a container the cgroup
    namespace makes its own cgroup the root; on a host the process' path from /proc/self/cgroup is checked first."""
    own = _own_cgroup_paths(proc_self_cgroup)
    v2_candidates = [cgroup_root / own[""]] if own.get("") else []
    for folder in (*v2_candidates, cgroup_root):
        limit = _v2_limit(folder)
        if limit is not None:
            return limit
    for controller in V1_CPU_CONTROLLERS:
        base = cgroup_root / controller
        candidates = [base / own[controller]] if own.get(controller) else []
        for folder in (*candidates, base):
            limit = _v1_limit(folder)
            if limit is not None:
                return limit
    return None


def _affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def available_cpus(cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> int:
    """CPUs this process may use: the smaller of its cgroup CPU limit and its affinity mask (os.cpu_count() where
    neither can be read), at least 1."""
    cpus = _affinity_cpus()
    limit = cgroup_cpu_limit(cgroup_root, proc_self_cgroup)
    return max(1, min(cpus, limit) if limit is not None else cpus)
