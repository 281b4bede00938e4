"""At the queue limit a job is written but deferred (429 + Retry-After); the reaper starts it once there is room."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from services.reaper.handler import reap_once
from shared.db import jobs
from shared.runtime.resources import Resources
from tests.conftest import Workers, wait_for_job
from tests.http_source import MediaServer


@pytest.mark.settings(queue_backlog_limit=0, outbox_grace_sec=0)
async def test_deferred_job_waits_for_room_then_runs(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path
) -> None:
    workers.start()
    with MediaServer(sample_video.parent) as origin:
        response = await client.post("/api/jobs", json={
            "source": {"type": "url", "url": origin.url(sample_video.name)}, "startSec": 1, "endSec": 3,
        })
        assert response.status_code == 429
        retry_after = resources.settings.backpressure_retry_after_sec
        assert response.headers["Retry-After"] == str(retry_after)
        error = response.json()["error"]
        assert (error["code"], error["retryAfterSec"]) == ("queue_full", retry_after)
        job_id = error["jobId"]
        view = (await client.get(f"/api/jobs/{job_id}")).json()
        assert view["status"] == "queued"
        info = await resources.js.consumer_info(resources.settings.nats_stream, "fetch-normal")
        assert info.num_pending == 0  # written, not published

        assert (await reap_once(resources)).republished == 0  # still no room
        more_room = msgspec.structs.replace(resources.settings, queue_backlog_limit=10)
        roomy = dataclasses.replace(resources, settings=more_room)
        assert (await reap_once(roomy)).republished == 1
        job = await wait_for_job(client, job_id)
    assert job["status"] == "done"
    events = [e["type"] for e in await jobs.job_events(resources.db, uuid.UUID(job_id))]
    assert events[:3] == ["queued", "deferred", "republished"]
