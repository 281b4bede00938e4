"""Stream-copy clips: POST → done latency and throughput, side by side with bare ffmpeg + one S3 put.

Source: a 10-minute 1280x720 30 fps H.264/AAC file with a 2 s GOP, uploaded once and served over HTTP (with
Range and ETag) by a local origin in this process. Each job asks for a 30 s clip at a different start, as an
upload source and as a URL source; the references cut the same range with `ffmpeg -ss A -to B -i SRC -c copy`
from the local file and from the origin's URL, and put the output into the same S3 server.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec

from bench.cpu import cpu_used, snapshot
from bench.stack import BenchStack
from shared.jobs.contracts import JobEvent
from shared.runtime.bus import connect
from shared.storage.s3 import open_storage
from tests.http_source import MediaServer

CLIP_SEC = 30.0
FIRST_START_SEC = 31.3  # not on a keyframe: the copy starts at the keyframe before
START_STEP_SEC = 17.1  # each job cuts somewhere else
JOB_TIMEOUT_SEC = 60.0
UPLOAD_KEY = "uploads/0192f3a4-5b6c-7d8e-9f01-23456789abcd/source.mp4"  # the form POST /api/uploads makes
STACK_SETTINGS: dict[str, object] = {"fetch_allow_networks": "127.0.0.1/32"}  # the URL jobs' origin is on loopback
COPY_PRECISION = "keyframe"  # the stream-copy path (the default, auto, smart-cuts these starts: bench/smartcut.py)
THROUGHPUT_FIRST_CLIP = 100  # clip numbers of the throughput rounds start here (latency runs use the first ones)


@dataclass
class Series:
    name: str
    seconds: list[float]

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.seconds)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        return {"n": len(ordered), "median": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def clip_range(i: int, source_sec: float) -> tuple[float, float]:
    start = (FIRST_START_SEC + i * START_STEP_SEC) % (source_sec - CLIP_SEC - 5)
    return round(start, 3), round(start + CLIP_SEC, 3)


async def upload_source(stack: BenchStack, source: Path) -> None:
    async with open_storage(stack.settings) as storage:
        await storage.ensure_bucket()
        if await storage.head(UPLOAD_KEY) is None:
            await storage.put_file(UPLOAD_KEY, source, "video/mp4", {"sha256": "bench"})


class JobRunner:
    """POSTs jobs to the gateway and learns they ended from `<prefix>.events.*` (no polling delay)."""

    def __init__(self, stack: BenchStack) -> None:
        self.stack = stack
        self._ends: dict[str, asyncio.Future[JobEvent]] = {}
        self._early: dict[str, JobEvent] = {}

    async def __aenter__(self) -> JobRunner:
        self.nc = await connect(self.stack.settings, "bench")
        await self.nc.subscribe(f"{self.stack.settings.subject_prefix}.events.*", cb=self._on_event)
        self.http = httpx.AsyncClient(base_url=self.stack.base_url, timeout=JOB_TIMEOUT_SEC)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self.nc.close()

    async def _on_event(self, msg: Any) -> None:
        event = msgspec.json.decode(msg.data, type=JobEvent)
        future = self._ends.get(event.job_id)
        if future is None:
            self._early[event.job_id] = event
        elif not future.done():
            future.set_result(event)

    async def run(self, start: float, end: float, priority: str = "fast", **extra: object) -> float:
        """Seconds from sending the POST to the job's done event (`extra`: more request fields, e.g. subs)."""
        return (await self.run_job(start, end, priority, **extra))[1]

    async def run_job(self, start: float, end: float, priority: str = "fast", url: str = "",
                      **extra: object) -> tuple[str, float]:
        """The job's id and the seconds from sending the POST to its done event (`url`: a URL source instead of
        the upload)."""
        began = time.perf_counter()
        source = {"type": "url", "url": url} if url else {"type": "upload", "key": UPLOAD_KEY}
        body: dict[str, object] = {"source": source, "startSec": start, "endSec": end, "priority": priority, **extra}
        response = await self.http.post("/api/jobs", json=body)
        response.raise_for_status()
        job_id = response.json()["id"]
        await self.done(job_id)
        return job_id, time.perf_counter() - began

    async def done(self, job_id: str, timeout: float = JOB_TIMEOUT_SEC) -> JobEvent:
        """The job's end event, once it is published (raises unless the job ended done)."""
        future = self._ends.setdefault(job_id, asyncio.get_running_loop().create_future())
        if job_id in self._early:
            future.set_result(self._early.pop(job_id))
        event = await asyncio.wait_for(future, timeout)
        if event.status != "done":
            raise RuntimeError(f"job {job_id} ended {event.status}: {event.error_code}")
        return event


async def reference_once(
    stack: BenchStack, storage: Any, source: Path | str, out: Path, start: float, end: float
) -> float:
    """Bare ffmpeg stream copy of the same range from a local file or URL, then one S3 put of its output."""
    began = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-y", "-ss", f"{start}", "-to", f"{end}", "-i", str(source), "-c", "copy",
        "-movflags", "+faststart", str(out), stdin=subprocess.DEVNULL,
    )
    if await proc.wait() != 0:
        raise RuntimeError("reference ffmpeg failed")
    await storage._client.put_object(Bucket=stack.settings.s3_bucket, Key=f"reference/{out.name}",
                                     Body=out.read_bytes())
    return time.perf_counter() - began


async def latency(stack: BenchStack, source: Path, source_sec: float, runs: int, work: Path) -> list[Series]:
    """Sequential jobs, upload and URL source, each followed by its reference on the same range (interleaved,
    same conditions): bare ffmpeg from the local file or from the origin's URL, then one S3 put."""
    ours, bare = Series("clipjet job POST→done", []), Series("ffmpeg -c copy + S3 put", [])
    ours_url, bare_url = Series("clipjet URL job POST→done", []), Series("ffmpeg -c copy from the URL + S3 put", [])
    with MediaServer(source.parent) as origin:
        url = origin.url(source.name)
        async with JobRunner(stack) as runner, open_storage(stack.settings) as storage:
            for i in range(2):  # warm-up: connections, page cache
                await runner.run(*clip_range(i, source_sec), precision=COPY_PRECISION)
                await runner.run(*clip_range(i, source_sec), url=url, precision=COPY_PRECISION)
                await reference_once(stack, storage, source, work / "warm.mp4", *clip_range(i, source_sec))
            for i in range(runs):
                start, end = clip_range(i + 2, source_sec)
                ours.seconds.append(await runner.run(start, end, precision=COPY_PRECISION))
                bare.seconds.append(await reference_once(stack, storage, source, work / f"ref{i}.mp4", start, end))
                ours_url.seconds.append(await runner.run(start, end, url=url, precision=COPY_PRECISION))
                bare_url.seconds.append(await reference_once(stack, storage, url, work / f"url{i}.mp4", start, end))
    return [ours, bare, ours_url, bare_url]


async def throughput(
    stack: BenchStack, source: Path, source_sec: float, jobs: int, work: Path, round_: int = 0
) -> dict[str, object]:
    """`jobs` queued at once: jobs/min through the pipeline, and a reference loop with 2 clips at a time.

    Each round cuts other ranges (no request is identical to an earlier one, so none is reused).
    """
    first = THROUGHPUT_FIRST_CLIP + round_ * jobs
    async with JobRunner(stack) as runner:
        processes = snapshot()
        began = time.perf_counter()
        await asyncio.gather(*(runner.run(*clip_range(first + i, source_sec), "normal", precision=COPY_PRECISION)
                               for i in range(jobs)))
        ours = time.perf_counter() - began
        cpu = cpu_used(processes)
    gate = asyncio.Semaphore(2)  # the machine's cores

    async def one(i: int, storage: Any) -> None:
        async with gate:
            await reference_once(stack, storage, source, work / f"tp{i}.mp4", *clip_range(first + i, source_sec))

    async with open_storage(stack.settings) as storage:
        began = time.perf_counter()
        await asyncio.gather(*(one(i, storage) for i in range(jobs)))
        bare = time.perf_counter() - began
    return {"jobs": jobs, "clipjet_per_min": jobs / ours * 60, "reference_per_min": jobs / bare * 60,
            "clipjet_sec": ours, "reference_sec": bare, "clipjet_cpu_sec_by_process": cpu}


HANDOFF_TAIL_PAD_SEC = 1.0  # what the fetcher stages past endSec (TAIL_PAD_SEC's default)


async def _copy(source: str, out: Path, start: float, duration: float) -> None:
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-y", "-ss", f"{start}", "-i", source, "-t", f"{duration}", "-c", "copy",
        "-movflags", "+faststart", str(out), stdin=subprocess.DEVNULL,
    )
    if await proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed reading {source[:60]}")


async def handoff(stack: BenchStack, source: Path, source_sec: float, runs: int, work: Path) -> dict[str, object]:
    """What passing a staged range to the next stage costs: the fetcher's staged copy of one 30 s range (+ tail
    pad) is put into S3 and the next stage stream-copies the clip out of it through a signed URL (today's
    hand-off between fetcher and trimmer), against the same copy read from the local file (what a stage running
    on the same node could do: subject partitioning by job). Seconds per hand-off, interleaved."""
    s3, local = Series("S3 put + copy through a signed URL", []), Series("copy from the local file", [])
    async with open_storage(stack.settings) as storage:
        for i in range(runs + 1):  # the first round warms up
            start, end = clip_range(i + 500, source_sec)
            staged = work / f"staged{i}.mp4"
            await _copy(str(source), staged, start, end + HANDOFF_TAIL_PAD_SEC - start)
            began = time.perf_counter()
            await _copy(str(staged), work / f"local{i}.mp4", 0.0, CLIP_SEC)
            local_sec = time.perf_counter() - began
            began = time.perf_counter()
            key = f"staging/bench-{i}/source.mp4"
            await storage.put_file(key, staged, "video/mp4", {"sha256": "bench"})
            await _copy(await storage.internal_url(key, 600), work / f"s3{i}.mp4", 0.0, CLIP_SEC)
            s3_sec = time.perf_counter() - began
            await storage.delete(key)
            if i:
                local.seconds.append(local_sec)
                s3.seconds.append(s3_sec)
            size = staged.stat().st_size
    return {"staged_bytes": size, s3.name: s3.summary(), local.name: local.summary(),
            "handoff_cost_median_sec": statistics.median(s3.seconds) - statistics.median(local.seconds)}
