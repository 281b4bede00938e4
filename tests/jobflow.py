"""The steps most end-to-end tests start with: upload a file, post a job, wait for it to end."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
from litestar.testing import AsyncTestClient

from shared.db import jobs
from shared.runtime.resources import Resources
from tests.conftest import JOB_TIMEOUT_SEC, wait_for_job


async def upload(client: AsyncTestClient[Any], path: Path) -> str:
    """Get an upload slot from the gateway and PUT the file straight to object storage; the upload's key."""
    slot = await client.post("/api/uploads", json={
        "filename": path.name, "contentType": "video/mp4", "sizeBytes": path.stat().st_size,
    })
    assert slot.status_code == 201, slot.text
    body = slot.json()
    async with httpx.AsyncClient() as s3:
        put = await s3.put(body["url"], content=path.read_bytes(), headers=body["headers"])
    assert put.status_code == 200, put.text
    return body["key"]


async def run_job(
    client: AsyncTestClient[Any], request: dict[str, Any], timeout: float = JOB_TIMEOUT_SEC
) -> dict[str, Any]:
    """POST /api/jobs with `request` (accepted: 202) and the job as it ended (done, failed or canceled)."""
    response = await client.post("/api/jobs", json=request)
    assert response.status_code == 202, response.text
    return await wait_for_job(client, response.json()["id"], timeout)


async def run_upload_job(
    client: AsyncTestClient[Any], path: Path, timeout: float = JOB_TIMEOUT_SEC, **request: Any
) -> dict[str, Any]:
    """Upload `path` and run a job on it: `request` holds the job's other fields (startSec, endSec, ...)."""
    source = {"type": "upload", "key": await upload(client, path)}
    return await run_job(client, {"source": source, **request}, timeout)


async def run_url_job(
    client: AsyncTestClient[Any], url: str, timeout: float = JOB_TIMEOUT_SEC, **request: Any
) -> dict[str, Any]:
    """Run a job on the media at `url`: `request` holds the job's other fields (startSec, endSec, ...)."""
    return await run_job(client, {"source": {"type": "url", "url": url}, **request}, timeout)


async def stages_run(res: Resources, job_id: str) -> list[str]:
    """The stages that started work on the job, in order (its `stage_started` events)."""
    events = await jobs.job_events(res.db, uuid.UUID(job_id))
    return [e["data"]["stage"] for e in events if e["type"] == "stage_started"]
