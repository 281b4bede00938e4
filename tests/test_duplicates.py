"""Idempotency of every stage: each stage message is delivered twice, in flight, and still one result, one `done`.

A tap on every stage subject in `services.registry.STAGES` publishes a second copy of each message (without its
Nats-Msg-Id, so the server stores both) the moment the first is published. Stages added later are covered as
soon as the load's jobs pass them: the test fails when a stage never got a message.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from services.registry import STAGES
from shared.db import jobs
from shared.runtime.resources import Resources
from tests.chaos import load_specs
from tests.conftest import Workers, wait_for_job
from tests.http_source import MediaServer
from tests.test_delivery import queues_empty

COPY_HEADER = "Clipjet-Test-Copy"
SPEC_INDEXES = (0, 3, 7, 11, 22)  # a plain copy clip, a poster and thumbnails, frame precision, subtitles, a clip
# the encoder re-encodes


async def test_every_stage_message_delivered_twice_gives_one_result_and_one_done(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path
) -> None:
    copied: dict[str, int] = {}  # Nats-Msg-Id → copies published
    stages_copied: set[str] = set()

    async def copy(msg: Any) -> None:
        headers = msg.headers or {}
        original = headers.get("Nats-Msg-Id", "")
        if COPY_HEADER in headers or copied.get(original):
            return
        copied[original] = 1
        stages_copied.add(msg.subject.split(".")[1])
        await resources.js.publish(msg.subject, msg.data, headers={COPY_HEADER: original})

    for stage in STAGES:
        await resources.nc.subscribe(resources.subjects.stage_wildcard(stage), cb=copy)
    await resources.nc.flush()  # the server knows the taps before the first job is published
    workers.start()
    specs = [load_specs()[i] for i in SPEC_INDEXES]
    with MediaServer(sample_video.parent) as origin:
        ids = []
        for spec in specs:
            response = await client.post("/api/jobs", json=spec.body(origin.url(sample_video.name)))
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        ended = [await wait_for_job(client, job_id) for job_id in ids]
        await queues_empty(resources)
        await asyncio.sleep(resources.settings.heartbeat_ms / 1000)  # let the last copies' runs write their events
    assert [job["status"] for job in ended] == ["done"] * len(ids), [(j["errorCode"], j["errorMessage"]) for j in ended]
    stages_run: set[str] = set()
    for job in ended:
        events = await jobs.job_events(resources.db, uuid.UUID(job["id"]))
        assert [e["type"] for e in events].count("done") == 1
        stages_run |= {e["data"]["stage"] for e in events if e["type"] == "stage_started"}
        again = (await client.get(f"/api/jobs/{job['id']}")).json()
        assert again["result"] == job["result"]
    assert stages_run == set(STAGES), f"stages no job passed: {set(STAGES) - stages_run}; extend SPEC_INDEXES"
    assert stages_copied == set(STAGES)
    clips = [key for key in await resources.storage.list_keys("results/") if key.endswith("/clip.mp4")]
    assert sorted(key.split("/")[3] for key in clips) == sorted(job["result"]["sha256"] for job in ended)
