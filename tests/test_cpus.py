"""available_cpus follows the container's CPU limit (cgroup v2 cpu.max, v1 CFS quota), not the node's cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.runtime.cpus import available_cpus, cgroup_cpu_limit


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def no_self(tmp_path: Path) -> Path:
    """A /proc/self/cgroup naming the root cgroup (as inside a container's cgroup namespace)."""
    path = tmp_path / "self-cgroup"
    _write(path, "0::/")
    return path


@pytest.mark.parametrize(("cpu_max", "expected"), [("100000 100000", 1), ("250000 100000", 2), ("50000 100000", 1)])
def test_cgroup_v2_quota_limits_the_count(tmp_path: Path, no_self: Path, cpu_max: str, expected: int) -> None:
    _write(tmp_path / "cg" / "cpu.max", cpu_max)
    assert cgroup_cpu_limit(tmp_path / "cg", no_self) == expected
    assert available_cpus(tmp_path / "cg", no_self) == min(expected, _affinity())


def test_cgroup_v2_nested_path_of_this_process_wins(tmp_path: Path) -> None:
    _write(tmp_path / "cg" / "cpu.max", "max 100000")
    _write(tmp_path / "cg" / "kubepods" / "pod1" / "cpu.max", "100000 100000")
    _write(tmp_path / "self", "0::/kubepods/pod1")
    assert cgroup_cpu_limit(tmp_path / "cg", tmp_path / "self") == 1


def test_cgroup_v1_cfs_quota(tmp_path: Path, no_self: Path) -> None:
    _write(tmp_path / "cg" / "cpu,cpuacct" / "cpu.cfs_quota_us", "300000")
    _write(tmp_path / "cg" / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(tmp_path / "cg", no_self) == 3


@pytest.mark.parametrize("files", [
    {"cpu.max": "max 100000"},  # v2 without a limit
    {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},  # v1 without a limit
    {"cpu.max": "garbage"},
    {},  # no cgroup file system at all
])
def test_no_limit_falls_back_to_the_cpus_this_process_may_run_on(tmp_path: Path, no_self: Path,
                                                                  files: dict[str, str]) -> None:
    for name, text in files.items():
        _write(tmp_path / "cg" / name, text)
    assert cgroup_cpu_limit(tmp_path / "cg", no_self) is None
    assert available_cpus(tmp_path / "cg", no_self) == _affinity()


def test_thread_counts_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whisper threads, encoder slots' threads and gateway processes all follow the limit."""
    import services.gateway.app as gateway_app
    import shared.media.slots as slots
    import shared.settings as settings_module

    for module in (gateway_app, slots, settings_module):
        monkeypatch.setattr(module, "available_cpus", lambda: 3)
    settings = settings_module.Settings()
    assert settings.asr_cpu_threads == 3
    assert gateway_app.gateway_processes(settings) == 3
    assert slots.threads_per_encode(1) == 3
    assert settings_module._default_encoders() == 1
