"""Scratch quota: a full node stops pulling (the message waits in the queue), the gateway refuses new jobs with
503 scratch_full, and when space frees the waiting job runs to the end."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from shared.runtime.resources import Resources
from shared.settings import load_settings
from shared.storage.scratch import LEDGER, ScratchQuota
from tests.conftest import Workers, wait_for_job
from tests.http_source import MediaServer

MIB = 1024 * 1024
WAIT_SEC = 20.0  # bound on every wait for the gateway to notice a change


async def _submit(client: AsyncTestClient[Any], url: str) -> Any:
    return await client.post("/api/jobs", json={"source": {"type": "url", "url": url}, "startSec": 1, "endSec": 3})


async def _submit_until(client: AsyncTestClient[Any], url: str, status: int, accepted: list[str]) -> Any:
    """Submit jobs until the gateway answers `status` (bounded); the ids of jobs accepted meanwhile go to `accepted`."""
    async with asyncio.timeout(WAIT_SEC):
        while True:
            response = await _submit(client, url)
            if response.status_code == status:
                return response
            assert response.status_code in (202, 503), response.text
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            await asyncio.sleep(0.1)


@pytest.mark.settings(nvme_scratch_gb=1 / 1024, scratch_reserve_mb=1, scratch_report_sec=0.2)
async def test_full_scratch_stops_pulling_until_space_frees(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path
) -> None:
    settings = resources.settings
    other = ScratchQuota(settings)  # another process on the node holds the whole quota
    held = other.reserve(other.quota)
    with MediaServer(sample_video.parent) as origin:
        url = origin.url(sample_video.name)
        first = await _submit(client, url)  # no report yet: accepted, queued
        assert first.status_code == 202, first.text
        accepted = [first.json()["id"]]
        workers.start()
        refused = await _submit_until(client, url, 503, accepted)  # the workers report the node full
        assert refused.json()["error"]["code"] == "scratch_full" and "Retry-After" in refused.headers
        info = await resources.js.consumer_info(settings.nats_stream, "fetch-normal")
        assert info.num_pending == len(accepted) and info.num_ack_pending == 0  # in the queue: nobody pulled
        assert {(await client.get(f"/api/jobs/{j}")).json()["status"] for j in accepted} == {"queued"}

        other.release(held)
        for job_id in accepted:
            job = await wait_for_job(client, job_id)
            assert job["status"] == "done", job
        again = await _submit_until(client, url, 202, [])  # the gateway takes jobs again
        assert (await wait_for_job(client, again.json()["id"]))["status"] == "done"
    await workers.stop()  # a stage releases its reservation after its ack, which may come after the job is done
    assert ScratchQuota(settings).used() == 0


def test_a_dead_process_reservation_is_dropped(tmp_path: Path) -> None:
    settings = load_settings({}, scratch_dir=str(tmp_path), nvme_scratch_gb=1 / 1024, scratch_reserve_mb=1)
    code = (
        "from shared.storage.scratch import ScratchQuota; from shared.settings import load_settings; "
        f"ScratchQuota(load_settings({{}}, scratch_dir={str(tmp_path)!r}, nvme_scratch_gb=1/1024)).reserve({MIB})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).parent.parent)
    quota = ScratchQuota(settings)
    assert quota.has_room() and quota.used() == 0
    ticket = quota.reserve(MIB)
    assert not quota.has_room()
    quota.release(ticket)
    assert quota.has_room()


@pytest.mark.settings(nvme_scratch_gb=1 / 1024, scratch_reserve_mb=0.25)
async def test_whole_download_larger_than_the_scratch_quota_is_refused(
    client: AsyncTestClient[Any], workers: Workers, sample_video: Path
) -> None:
    """A server without ranges means a whole download: one that could never fit in scratch fails at once."""
    assert sample_video.stat().st_size > MIB
    workers.start()
    with MediaServer(sample_video.parent) as origin:
        origin.ranges = False
        job = await wait_for_job(client, (await _submit(client, origin.url(sample_video.name))).json()["id"])
        assert origin.bytes_sent < sample_video.stat().st_size  # refused before the body was read
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "source_too_large", 1)


def test_a_live_process_reservation_counts_until_it_is_killed(tmp_path: Path) -> None:
    """Liveness comes from the volume (a holder file the process keeps locked), not from process ids, which a
    process in another pod or PID namespace could not see."""
    settings = load_settings({}, scratch_dir=str(tmp_path), nvme_scratch_gb=1 / 1024, scratch_reserve_mb=1)
    code = (
        "import sys, time; from shared.storage.scratch import ScratchQuota; from shared.settings import load_settings; "
        f"ScratchQuota(load_settings({{}}, scratch_dir={str(tmp_path)!r}, nvme_scratch_gb=1/1024)).reserve({MIB}); "
        "print('reserved', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"reserved\n"
        quota = ScratchQuota(settings)
        assert quota.used() == MIB and not quota.has_room()  # the other process is alive: its space is taken
        ledger = json.loads((tmp_path / LEDGER).read_text())
        assert all(str(holder) != str(child.pid) for holder, _ in ledger.values())  # no process id decides
    finally:
        child.kill()
        child.wait(timeout=WAIT_SEC)
    assert quota.used() == 0 and quota.has_room()  # killed: the kernel dropped its lock, its space is free


def test_each_scratch_volume_has_its_own_quota(tmp_path: Path) -> None:
    one, two = (load_settings({}, scratch_dir=str(tmp_path / n), nvme_scratch_gb=1 / 1024) for n in ("a", "b"))
    full = ScratchQuota(one)
    full.reserve(full.quota)
    assert not full.has_room() and ScratchQuota(two).used() == 0 and ScratchQuota(two).has_room()
