"""The gateway's request log, from a real gateway process: one JSON line per request with its request id (the
client's X-Request-Id when sane, else a new one, echoed back) and the job's id; library loggers (uvicorn) write
the same JSON lines; the API key never appears."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path
from typing import Any

import httpx

from services.stack.devstack.process import free_port
from shared.runtime.resources import Resources
from shared.settings import Settings
from tests.conftest import make_key
from tests.ops_fleet import OpsFleet

WAIT_SEC = 120.0
POLL_SEC = 0.2
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def _lines(text: str) -> list[dict[str, Any]]:
    """Every line of the log as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _requests(fleet: OpsFleet) -> list[dict[str, Any]]:
    return [line for line in _lines(fleet.log("gateway")) if line.get("event") == "request"]


async def test_gateway_logs_each_request_with_its_request_id_and_job_id(
    settings: Settings, resources: Resources, tmp_path: Path
) -> None:
    api_port = free_port()
    fleet = OpsFleet(settings, tmp_path)
    token = await make_key(resources.db, admin=True)
    try:
        fleet.start("gateway", "gateway", GATEWAY_PORT=str(api_port), GATEWAY_PROCESSES="1", LOG_LEVEL="info")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", trust_env=False, timeout=30,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
            async with asyncio.timeout(WAIT_SEC):
                while True:
                    try:
                        if (await http.get("/health")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert fleet.procs["gateway"].poll() is None, fleet.log("gateway")[-3000:]
                    await asyncio.sleep(POLL_SEC)
            body = {"source": {"type": "url", "url": "http://127.0.0.1:9/clip.mp4"}, "startSec": 1, "endSec": 2}
            created = await http.post("/api/jobs", json=body, headers={"X-Request-Id": "client-req.42"})
            assert created.status_code == 202, created.text
            assert created.headers["x-request-id"] == "client-req.42"
            job_id = created.json()["id"]
            read = await http.get(f"/api/jobs/{job_id}", headers={"X-Request-Id": "bad id with spaces"})
            assert GENERATED_ID.fullmatch(read.headers["x-request-id"])
            missing = await http.get("/no/such/route")
            assert missing.status_code == 404 and GENERATED_ID.fullmatch(missing.headers["x-request-id"])
        with socket.create_connection(("127.0.0.1", api_port), timeout=5) as raw:  # uvicorn logs a warning
            raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            raw.recv(1024)

        async with asyncio.timeout(WAIT_SEC):
            while len(_requests(fleet)) < 4 or "Invalid HTTP request" not in fleet.log("gateway"):  # noqa: ASYNC110
                await asyncio.sleep(POLL_SEC)
    finally:
        fleet.stop()

    by_id = {line["request_id"]: line for line in _requests(fleet)}
    post = by_id["client-req.42"]
    assert (post["method"], post["route"], post["status"], post["job_id"]) == ("POST", "/api/jobs", 202, job_id)
    read_line = by_id[read.headers["x-request-id"]]
    assert (read_line["route"], read_line["status"], read_line["job_id"]) == ("/api/jobs/{job_id}", 200, job_id)
    assert read_line["path"] == f"/api/jobs/{job_id}"
    assert by_id[missing.headers["x-request-id"]]["route"] == "unmatched"
    text = fleet.log("gateway")
    assert token not in text
    uvicorn = [line for line in _lines(text) if line.get("logger", "").startswith("uvicorn")]
    assert any("Invalid HTTP request" in line["event"] for line in uvicorn), uvicorn
