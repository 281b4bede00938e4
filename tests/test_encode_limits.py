"""The encoder's node-wide limits and start-up choices: encode slots shared by processes, encoder detection,
idempotent redelivery."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from services.encoder.handler import NoEncoder, pick_encoder
from services.encoder.handler import handle as encode
from services.fetcher.handler import handle as fetch
from services.stack.devstack import free_port
from shared.db import jobs
from shared.jobs.contracts import ClipJobMessage, UploadSource
from shared.jobs.ids import uuid7
from shared.jobs.pipeline import DEFAULT_ROUTE_LENGTH, FETCH, UPLOAD
from shared.media import hwenc
from shared.media.slots import SLOT_DIR, threads_per_encode
from shared.runtime.ops import serve_ops as serve_metrics
from shared.runtime.progress import Progress
from shared.runtime.resources import Resources
from shared.runtime.worker import StageDeps
from shared.settings import Settings
from shared.storage.clipstore import WRITE_META
from tests.conftest import Workers, wait_for_job
from tests.media import make_media
from tests.test_clip_pipeline import upload
from tests.test_delivery import fetch_worker_processes

WAIT_SEC = 60.0
SAMPLE_SEC = 0.005  # how often the process table is read while encodes run
JOBS = 4  # two worker processes x WORKER_CONCURRENCY 2: each takes two and waits for the one slot


@pytest.fixture(scope="module")
def mpeg2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_media(tmp_path_factory.mktemp("slots") / "mpeg2.mkv", seconds=8, video="mpeg2video",
                      audio="mp2", extra=("-q:v", "2"))


def ffmpeg_children(parents: set[int]) -> list[int]:
    """Parent pids of the running `ffmpeg` processes whose parent is in `parents`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm, _, rest = stat.partition(") ")
        if comm.endswith("(ffmpeg") and int(rest.split()[1]) in parents:
            found.append(int(rest.split()[1]))
    return found


async def lines_in(logs: list[Path], text: str, count: int) -> None:
    """Wait (bounded) until every log holds `text` at least `count` times."""
    async with asyncio.timeout(WAIT_SEC):
        while not all(log.is_file() and log.read_text().count(text) >= count for log in logs):  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # polling files another process writes


@pytest.mark.settings(max_parallel_encoders_per_node=1, worker_concurrency=2)
async def test_two_worker_processes_share_one_encode_slot(
    client: AsyncTestClient[Any], workers: Workers, settings: Settings, mpeg2: Path, tmp_path: Path
) -> None:
    workers.start(FETCH, UPLOAD)
    slot = settings.scratch_dir / SLOT_DIR / "slot-0.lock"
    slot.parent.mkdir(parents=True, exist_ok=True)
    holder = os.open(slot, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # the node's only slot is busy until we let go
    key = await upload(client, mpeg2)
    with fetch_worker_processes(settings, tmp_path, stage="encode") as start:
        procs = [start("enc-a"), start("enc-b")]
        ids = []
        for i in range(JOBS):
            body = {"source": {"type": "upload", "key": key}, "startSec": 0.52 + i, "endSec": 3.52 + i}
            ids.append((await client.post("/api/jobs", json=body)).json()["id"])
        await lines_in([tmp_path / "enc-a.log", tmp_path / "enc-b.log"], "encode_slot_wait", 2)
        pids = {p.pid for p in procs}
        assert ffmpeg_children(pids) == []  # all four wait; none encodes

        seen: list[list[int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                seen.append(ffmpeg_children(pids))
                stop.wait(SAMPLE_SEC)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        os.close(holder)
        try:
            done = [await wait_for_job(client, job_id, WAIT_SEC) for job_id in ids]
        finally:
            stop.set()
            sampler.join(timeout=5)
    assert all(job["status"] == "done" and job["result"]["cutPath"] == "reencode" for job in done)
    assert max(len(s) for s in seen) == 1  # never two encodes at once on the node
    assert {pid for s in seen for pid in s} == pids  # both processes encoded


def test_threads_split_the_cores_between_encodes() -> None:
    assert threads_per_encode(1, cores=8) == 8
    assert threads_per_encode(3, cores=8) == 2
    assert threads_per_encode(6, cores=2) == 1


def test_detection_picks_a_working_encoder_and_falls_back_to_libx264() -> None:
    working_hardware = [c for c in hwenc.CANDIDATES if c.hardware and hwenc.test_encode(c) is None]
    chosen = hwenc.detect_video_encoder.__wrapped__(hwenc.AUTO)
    assert chosen == (working_hardware[0] if working_hardware else hwenc.SOFTWARE)
    missing = hwenc.VideoEncoder("h264_vaapi", ("-qp", "23"), input_args=("-vaapi_device", "/dev/dri/absent"),
                                 upload_filters=("format=nv12", "hwupload"))
    assert hwenc.test_encode(missing)  # fails cleanly with a reason, no exception
    assert hwenc.detect_video_encoder.__wrapped__("h264_bogus") == hwenc.SOFTWARE
    for candidate in hwenc.CANDIDATES:
        if candidate.hardware and candidate not in working_hardware:
            assert hwenc.detect_video_encoder.__wrapped__(candidate.name) == hwenc.SOFTWARE


async def test_startup_reports_the_encoder_in_a_metric(settings: Settings, resources: Resources) -> None:
    async with pick_encoder(resources) as encoder:  # the ops port is the process's (services/cli.py), not the stage's
        pass
    chosen = hwenc.detect_video_encoder(settings.video_encoder)
    assert encoder == chosen
    labels = {"encoder": chosen.name, "hardware": str(chosen.hardware).lower()}
    assert REGISTRY.get_sample_value("clipjet_video_encoder", labels) == 1.0
    port = free_port()
    server = serve_metrics(port)
    assert server is not None
    try:
        async with httpx.AsyncClient() as http:
            body = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        assert serve_metrics(port) is None  # a second process on the node: no server, no crash
    finally:
        server.shutdown()
    assert f'clipjet_video_encoder{{encoder="{chosen.name}"' in body
    assert serve_metrics(0) is None


async def test_redelivered_encode_message_reuses_the_stored_clip(
    resources: Resources, mpeg2: Path, tmp_path: Path
) -> None:
    key = "uploads/encode-twice.mkv"
    await resources.storage.put_file(key, mpeg2, "video/x-matroska", {})
    job = ClipJobMessage(id=str(uuid7()), source=UploadSource(key=key), start_sec=1.2, end_sec=2.4)
    assert await jobs.begin_stage(resources.db, job, FETCH, 1) == "processing"
    encoder = await asyncio.to_thread(hwenc.detect_video_encoder, resources.settings.video_encoder)

    def deps(name: str, local: object = None) -> StageDeps:
        scratch = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}"
        scratch.mkdir()
        return StageDeps(resources, Progress(name, 0, DEFAULT_ROUTE_LENGTH), scratch, 1, local)

    staged = await fetch(job, deps("fetch"))
    assert staged is not None and staged.route == ["encode", "upload"]
    assert staged.plan is not None and staged.plan.cut_reason == "codec_not_mp4"
    with pytest.raises(NoEncoder):  # without its encoder the stage refuses (it must not copy instead)
        await encode(staged, deps("encode"))
    first = await encode(staged, deps("encode", encoder))
    clip_key = first.artifact("video").key  # type: ignore[union-attr]
    written = await resources.storage.head(clip_key)
    again = await encode(staged, deps("encode", encoder))
    rewritten = await resources.storage.head(clip_key)
    assert written is not None and rewritten is not None
    # each write of the clip records a fresh random id: the same id means the second delivery wrote nothing
    assert again == first and written.metadata[WRITE_META] == rewritten.metadata[WRITE_META]
