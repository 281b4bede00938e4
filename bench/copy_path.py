"""Stream-copy clips: POST → done latency and throughput, side by side with bare ffmpeg + one S3 put.

Source: a 10-minute 1280x720 30 fps H.264/AAC file with a 2 s GOP, uploaded once. Each job asks for a
30 s clip at a different start; the reference cuts the same range from a local copy with
`ffmpeg -ss A -to B -i SRC -c copy` and puts the output into the same S3 server.
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
from shared.bus import connect
from shared.contracts import JobEvent
from shared.storage import open_storage

CLIP_SEC = 30.0
FIRST_START_SEC = 31.3  # not on a keyframe: the copy starts at the keyframe before
START_STEP_SEC = 17.1  # each job cuts somewhere else
JOB_TIMEOUT_SEC = 60.0
UPLOAD_KEY = "uploads/0192f000-0000-7000-8000-00000000be7c/source.mp4"  # the form POST /api/uploads makes
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

    async def run_job(self, start: float, end: float, priority: str = "fast", **extra: object) -> tuple[str, float]:
        """The job's id and the seconds from sending the POST to its done event."""
        began = time.perf_counter()
        body: dict[str, object] = {
            "source": {"type": "upload", "key": UPLOAD_KEY}, "startSec": start, "endSec": end, "priority": priority,
            **extra,
        }
        response = await self.http.post("/api/jobs", json=body)
        response.raise_for_status()
        job_id = response.json()["id"]
        future = self._ends.setdefault(job_id, asyncio.get_running_loop().create_future())
        if job_id in self._early:
            future.set_result(self._early.pop(job_id))
        event = await asyncio.wait_for(future, JOB_TIMEOUT_SEC)
        if event.status != "done":
            raise RuntimeError(f"job {job_id} ended {event.status}: {event.error_code}")
        return job_id, time.perf_counter() - began


async def reference_once(stack: BenchStack, storage: Any, source: Path, out: Path, start: float, end: float) -> float:
    """Bare ffmpeg stream copy of the same range from a local file, then one S3 put of its output."""
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
    """Sequential jobs, each followed by the reference on the same range (interleaved, same conditions)."""
    ours, bare = Series("clipjet job POST→done", []), Series("ffmpeg -c copy + S3 put", [])
    async with JobRunner(stack) as runner, open_storage(stack.settings) as storage:
        for i in range(2):  # warm-up: connections, page cache
            await runner.run(*clip_range(i, source_sec), precision=COPY_PRECISION)
            await reference_once(stack, storage, source, work / "warm.mp4", *clip_range(i, source_sec))
        for i in range(runs):
            start, end = clip_range(i + 2, source_sec)
            ours.seconds.append(await runner.run(start, end, precision=COPY_PRECISION))
            bare.seconds.append(await reference_once(stack, storage, source, work / f"ref{i}.mp4", start, end))
    return [ours, bare]


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
