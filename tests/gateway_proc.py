"""A real gateway process (`python -m services gateway`, uvicorn) on the tests' servers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import msgspec

from shared.settings import Settings, settings_env

REPO = Path(__file__).resolve().parent.parent
GATEWAY_START_TIMEOUT_SEC = 120.0  # imports and migrations of a fresh process on 2 busy cores
GATEWAY_STOP_TIMEOUT_SEC = 20.0


@contextmanager
def gateway_process(settings: Settings, port: int) -> Iterator[str]:
    with running_gateway(settings, port) as (_, url):
        yield url


@contextmanager
def running_gateway(settings: Settings, port: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The process (a test may stop it itself) and its base URL, once /health answers."""
    env = {**os.environ, **settings_env(msgspec.structs.replace(settings, gateway_port=port))}
    proc = subprocess.Popen([sys.executable, "-m", "services", "gateway"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT_SEC
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.2)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=GATEWAY_STOP_TIMEOUT_SEC)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=GATEWAY_STOP_TIMEOUT_SEC)
            raise
