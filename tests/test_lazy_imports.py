"""A process imports only what it runs: the stage list gives names without importing any stage's package, a
worker imports its own stage only, and heavy libraries come in only when used: PyAV with the first media
opened, yt-dlp with the first page read, NumPy and the speech engine with the transcriber, Litestar and
uvicorn with the gateway. Each check runs in a fresh interpreter (this one has them all)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.jobs.pipeline import SERVICE_PACKAGES

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("av", "numpy", "yt_dlp", "faster_whisper", "ctranslate2", "litestar", "uvicorn")
IMPORT_TIMEOUT_SEC = 60


def _imported(code: str) -> set[str]:
    """Top-level modules a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=IMPORT_TIMEOUT_SEC, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_the_stage_list_imports_no_stage() -> None:
    loaded = _imported("from services.registry import STAGES, service_commands\n"
                       "names = list(STAGES); service_commands(names)\n"
                       "import services.stack.localstack, services.k8s, services.cli")
    assert not {f"services.{p}" for p in SERVICE_PACKAGES} & loaded
    assert not set(HEAVY) & loaded
    assert "shared.runtime.worker" not in loaded  # NATS/S3 clients come with a worker, not with the names


@pytest.mark.parametrize("stage", list(SERVICE_PACKAGES))
def test_a_worker_imports_only_its_stage(stage: str) -> None:
    loaded = _imported(f"from services.registry import STAGES\nSTAGES[{stage!r}].handle\n"
                       "import services.cli, shared.runtime.resources, shared.net.fetchproxy")
    others = {f"services.{p}" for s, p in SERVICE_PACKAGES.items() if s != stage}
    assert f"services.{SERVICE_PACKAGES[stage]}" in loaded
    assert not others & loaded, f"the {stage} worker imports {sorted(others & loaded)}"
    # PyAV comes with the first media a stage opens, yt-dlp with the first page read, NumPy with the speech engine
    heavy = ({"av", "faster_whisper", "ctranslate2", "yt_dlp", "litestar", "uvicorn"}
             | ({"numpy"} if stage != "transcribe" else set())) & loaded
    assert not heavy, f"the {stage} worker imports {sorted(heavy)}"
