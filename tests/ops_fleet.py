"""Real service processes, each with an ops port of its own, and scrapes of their Prometheus `/metrics`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.stack.devstack.process import free_port
from shared.settings import Settings, settings_env

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_SEC = 120.0  # imports and a model load of a fresh process on 2 busy cores
STOP_TIMEOUT_SEC = 20.0
POLL_SEC = 0.2


class Scrape:
    """One `/metrics` answer: the families it names and the value of every sample."""

    def __init__(self, text: str) -> None:
        self.families: set[str] = set()
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for family in text_string_to_metric_families(text):
            self.families.add(family.name)
            for sample in family.samples:
                self.samples[sample.name].append((sample.labels, sample.value))

    def total(self, name: str, **labels: str) -> float:
        """Sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
        return sum(value for have, value in self.samples.get(name, ())
                   if all(have.get(k) == v for k, v in labels.items()))


class OpsFleet:
    """`clipjet` processes on the test's servers, each logging to <folder>/<name>.log, each with its ops port."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.settings = settings
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str, *argv: str, **env: str) -> int:
        """Start `python -m services ARGV`; its ops port."""
        port = self.ports[name] = free_port()
        environ = {**os.environ, **settings_env(self.settings), "PYTHONPATH": str(REPO), "METRICS_PORT": str(port),
                   **env}
        with (self.folder / f"{name}.log").open("ab") as out:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "services", *argv], cwd=REPO, env=environ,
                                                stdout=out, stderr=subprocess.STDOUT)
        return port

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    async def get(self, name: str, path: str) -> httpx.Response:
        async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
            return await http.get(f"http://127.0.0.1:{self.ports[name]}{path}")

    async def scrape(self, name: str) -> Scrape:
        response = await self.get(name, "/metrics")
        assert response.status_code == 200, response.text
        return Scrape(response.text)

    async def wait_status(self, name: str, path: str, status: int, timeout_sec: float = START_TIMEOUT_SEC) -> None:
        """Poll `path` on the process's ops port until it answers `status`."""
        deadline = time.monotonic() + timeout_sec
        while True:
            try:
                if (await self.get(name, path)).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            proc = self.procs[name]
            assert proc.poll() is None, f"{name} exited ({proc.returncode}):\n{self.log(name)[-3000:]}"
            assert time.monotonic() < deadline, f"{name}: {path} never answered {status}:\n{self.log(name)[-3000:]}"
            await asyncio.sleep(POLL_SEC)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=STOP_TIMEOUT_SEC)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_SEC)
