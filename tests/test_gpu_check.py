"""bench/gpu_check.sh on a machine without an NVIDIA GPU: a clean skip, and its measurement steps as a CPU dry run
(libx264, CPU ASR, the real stack) so the code a GPU run depends on is exercised here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"
SKIP_TIMEOUT_SEC = 60
DRY_RUN_TIMEOUT_SEC = 300
BROKEN_DRIVER = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."

pytestmark = pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a machine with nvidia-smi: the "
                                "check would run for real (bench/gpu_check.sh)")


def run(*args: str, env: dict[str, str] | None = None, timeout: float = SKIP_TIMEOUT_SEC
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env=env, cwd=ROOT)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain `text` (e.g. a stack's data folder)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in argv:
            found.append(argv)
    return found


def test_without_nvidia_smi_it_skips_before_starting_anything(tmp_path: Path) -> None:
    work = tmp_path / "work"
    began = time.monotonic()
    done = run("--work", str(work))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SKIPPED: no NVIDIA GPU (nvidia-smi not found)"
    assert time.monotonic() - began < SKIP_TIMEOUT_SEC / 2
    assert not work.exists()  # no media made, no server's data folder
    assert processes_mentioning(str(work)) == []


def test_a_driver_that_does_not_answer_is_a_skip_with_its_words(tmp_path: Path) -> None:
    """A container with nvidia-smi but no driver behind it (nvidia-smi exits 9 with this line)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho \"{BROKEN_DRIVER}\"\nexit 9\n")
    smi.chmod(0o755)
    done = run("--work", str(tmp_path / "work"), env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"SKIPPED: no NVIDIA GPU (nvidia-smi exited 9: {BROKEN_DRIVER})"
    assert not (tmp_path / "work").exists()


def test_cpu_dry_run_measures_and_runs_both_jobs_on_the_real_stack(tmp_path: Path) -> None:
    """`--cpu`: the same steps with libx264 and CPU ASR on small media; the stack is gone afterwards."""
    work, figures = tmp_path / "work", tmp_path / "figures.json"
    done = run("--cpu", "--work", str(work), "--json", str(figures), timeout=DRY_RUN_TIMEOUT_SEC)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("PASSED")
    report = json.loads(figures.read_text())
    assert report["problems"] == []
    parts = report["parts"]
    assert parts["libx264_fps"]["frames"] == 60  # 2 s at 30 fps, every frame encoded
    assert parts["libx264_fps"]["fps"] > 0
    asr = parts["asr_batch_1"]
    assert asr["device"] == "cpu" and asr["words_per_clip"][0] > 10 and asr["x_real_time"] > 0
    stack = parts["stack"]
    assert stack["reencode_job"]["cut_path"] == "reencode"
    assert stack["subtitles_job"]["subtitles"]["engine"] == "faster-whisper"
    assert stack["subtitles_job"]["words"] > 10
    assert stack["encoder_process"] == "libx264"
    assert processes_mentioning(str(work)) == []  # NATS, S3 (and a private PostgreSQL) and the services stopped
