"""Prometheus metrics of real processes: the gateway (two uvicorn processes), a worker per stage and the reaper are
scraped before and after two real jobs; every family is exported and moved.

The jobs pass every stage: one with subtitles (fetch, trim, transcribe, upload), one frame-precise clip between
two keyframes (fetch, encode, upload). The origin answers the first GET with 503 (a fetch retry: a redelivery),
and S3, behind a fault proxy, answers the first staging PUT with SlowDown (a botocore retry). The jobs are
queued before any worker runs, so the reaper's queue depth shows them waiting, then drains to zero.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest

from services.registry import STAGES
from services.stack.devstack.process import free_port
from shared.runtime.resources import Resources
from shared.settings import Settings
from tests.conftest import make_key
from tests.http_source import MediaServer
from tests.ops_fleet import OpsFleet, Scrape
from tests.s3_fault_proxy import FaultProxy, Request
from tests.speech import SpeechVideo

JOBS_TIMEOUT_SEC = 240.0  # two jobs through every stage, worker start-up included, on 2 busy cores
POLL_SEC = 0.3
GATEWAY_PROCESSES = 2


class FirstStagingPut:
    """Fail the first PUT of a staging object once (S3 SlowDown): botocore retries it."""

    def __init__(self) -> None:
        self.failed = 0

    def __call__(self, request: Request) -> bool:
        if self.failed == 0 and request.method == "PUT" and "/staging/" in request.target:
            self.failed += 1
            return True
        return False


async def _wait_for(what: str, check: Any, fleet: OpsFleet, timeout_sec: float = JOBS_TIMEOUT_SEC) -> Any:
    deadline = time.monotonic() + timeout_sec
    while not (result := await check()):
        dead = {name: proc.returncode for name, proc in fleet.procs.items() if proc.poll() is not None}
        assert not dead, f"processes exited: {dead}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(POLL_SEC)
    return result


@pytest.mark.timeout(480)  # seven processes start on 2 shared cores
@pytest.mark.settings(asr_model="tiny.en", asr_beam_size=1, queue_depth_interval_sec=0.3, reaper_interval_sec=1.0)
async def test_every_process_exports_its_metric_families_and_a_real_job_moves_them(
    settings: Settings, resources: Resources, sample_video: Path, speech_video: SpeechVideo, tmp_path: Path
) -> None:
    upstream = urlsplit(settings.s3_endpoint_url).port
    assert upstream is not None and sample_video.parent == speech_video.path.parent
    rule = FirstStagingPut()
    api_port = free_port()
    async with FaultProxy(upstream, rule) as proxy:
        through_proxy = msgspec.structs.replace(settings, s3_endpoint_url=proxy.url)
        fleet = OpsFleet(through_proxy, tmp_path)
        try:
            with MediaServer(sample_video.parent) as origin:
                origin.fail_first_gets = 1
                await _run(fleet, resources, origin, api_port, rule, origin.requests)
        finally:
            fleet.stop()


async def _run(fleet: OpsFleet, resources: Resources, origin: MediaServer, api_port: int,
               rule: FirstStagingPut, origin_requests: list[Any]) -> None:
    fleet.start("gateway", "gateway", GATEWAY_PORT=str(api_port), GATEWAY_PROCESSES=str(GATEWAY_PROCESSES))
    fleet.start("reaper", "reaper")
    api = f"http://127.0.0.1:{api_port}"
    token = await make_key(resources.db, admin=True)
    async with httpx.AsyncClient(base_url=api, trust_env=False, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"}) as http:

        async def gateway_up() -> bool:
            try:
                return (await http.get("/health")).status_code == 200
            except httpx.HTTPError:
                return False

        await _wait_for("the gateway", gateway_up, fleet)
        await fleet.wait_status("reaper", "/readyz", 200)
        gateway_before = await fleet.scrape("gateway")
        jobs = [
            {"source": {"type": "url", "url": origin.url("speech.mp4")}, "startSec": 5, "endSec": 12,
             "subs": {"enabled": True, "burnIn": False, "lang": "en"}},
            {"source": {"type": "url", "url": origin.url("sample.mp4")}, "startSec": 7.5, "endSec": 7.9,
             "precision": "frame", "poster": {}},  # a poster: the thumbs stage has work too
        ]
        ids = []
        for body in jobs:
            response = await http.post("/api/jobs", json=body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])

        async def queued() -> bool:  # the reaper sees both jobs waiting for a fetch worker
            return (await fleet.scrape("reaper")).total("clipjet_queue_messages", stage="fetch", state="pending") == 2

        await _wait_for("the queue depth", queued, fleet)
        for stage in STAGES:
            fleet.start(stage, "worker", stage)

        async def ended() -> list[dict[str, Any]] | None:
            try:
                views = [(await http.get(f"/api/jobs/{job_id}")).json() for job_id in ids]
            except httpx.TransportError:  # a kept-alive connection the gateway closed meanwhile: poll again
                return None
            return views if all(v["status"] in ("done", "failed") for v in views) else None

        views = await _wait_for("the jobs", ended, fleet)
        assert [v["status"] for v in views] == ["done", "done"], views
        await http.get(f"/api/jobs/{ids[0]}")

    gateway = await fleet.scrape("gateway")
    for family in ("clipjet_http_requests", "clipjet_http_request_seconds", "clipjet_s3_request_seconds"):
        assert family in gateway.families
    posts = {"route": "/api/jobs", "method": "POST", "status": "202"}
    # both POSTs counted exactly once, whichever of the gateway's processes took them
    assert gateway.total("clipjet_http_requests_total", **posts) - gateway_before.total(
        "clipjet_http_requests_total", **posts) == len(jobs)
    reads = {"route": "/api/jobs/{job_id}", "method": "GET"}
    assert gateway.total("clipjet_http_requests_total", **reads, status="200") > 0
    assert gateway.total("clipjet_http_request_seconds_count", **reads) > gateway_before.total(
        "clipjet_http_request_seconds_count", **reads)

    workers = {stage: await fleet.scrape(stage) for stage in STAGES}
    for stage, scrape in workers.items():
        for family in ("clipjet_stage_messages", "clipjet_stage_seconds", "clipjet_stage_claim_seconds",
                       "clipjet_stage_redeliveries", "clipjet_s3_request_seconds", "clipjet_s3_retries"):
            assert family in scrape.families, (stage, family)
        assert scrape.total("clipjet_stage_messages_total", stage=stage, outcome="ok") >= 1, stage
        assert scrape.total("clipjet_stage_seconds_count", stage=stage) >= 1, stage
        assert scrape.total("clipjet_stage_claim_seconds_count", stage=stage) >= 1, stage
    fetch = workers["fetch"]
    assert fetch.total("clipjet_stage_messages_total", outcome="retry", code="source_unreachable") == 1, (
        fetch.samples["clipjet_stage_messages_total"], origin_requests)
    assert fetch.total("clipjet_stage_redeliveries_total", stage="fetch") == 1
    assert fetch.total("clipjet_scratch_quota_bytes") == fleet.settings.scratch_bytes
    assert "clipjet_scratch_used_bytes" in fetch.families
    assert sum(s.total("clipjet_s3_request_seconds_count", outcome="ok") for s in workers.values()) > 0
    assert rule.failed == 1
    assert sum(s.total("clipjet_s3_retries_total") for s in workers.values()) == 1
    assert workers["transcribe"].total(
        "clipjet_asr_realtime_factor_count", engine="faster-whisper", model="tiny.en") == 1
    assert workers["encode"].total("clipjet_encode_seconds_count") == 1
    assert workers["encode"].total("clipjet_video_encoder") == 1

    async def drained() -> bool:  # every consumer back to nothing waiting, nothing in flight
        reaper = await fleet.scrape("reaper")
        return all(reaper.total("clipjet_queue_messages", stage=stage, state=state) == 0
                   for stage in STAGES for state in ("pending", "ack_pending"))

    await _wait_for("the queue to drain", drained, fleet, timeout_sec=30)
    reaper: Scrape = await fleet.scrape("reaper")
    assert {s["stage"] for s, _ in reaper.samples["clipjet_queue_messages"]} == set(STAGES)
