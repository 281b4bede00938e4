"""Full re-encode of a 30 s clip, side by side: a clipjet job (POST → done) against the bare ffmpeg command
and against yt-dlp `--download-sections --force-keyframes-at-cuts`, on the same range of the same source.

The stack runs with FORCE_CUT_PATH=reencode so that every job takes the encoder (the source is H.264/AAC and
would otherwise be cut by stream copy). Runs are interleaved (job, ffmpeg, yt-dlp on one range, then the
next range), so each sees the same machine; the median of each is reported. yt-dlp reads the file from a
local HTTP server through an HTML page (`<video src=...>`), which its generic extractor understands offline.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.copy_path import JobRunner, upload_source
from bench.cpu import cpu_seconds_of
from bench.stack import bench_stack
from tests.http_source import MediaServer

CLIP_SEC = 30.0
FIRST_START_SEC = 301.3  # not on a keyframe (2 s GOP)
START_STEP_SEC = 37.7  # each run cuts another range: no request repeats an earlier one
PAGE = "page.html"
COMMAND_TIMEOUT_SEC = 300.0
YT_DLP = str(Path(sys.executable).with_name("yt-dlp"))


def reencode_range(i: int) -> tuple[float, float]:
    start = round(FIRST_START_SEC + i * START_STEP_SEC, 3)
    return start, start + CLIP_SEC


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children)."""
    began, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SEC, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {done.stderr[-1000:]}")
    return time.perf_counter() - began, children_cpu() - cpu


def bare_ffmpeg(source: Path, out: Path, start: float, end: float) -> tuple[float, float]:
    return timed(["ffmpeg", "-v", "error", "-y", "-ss", f"{start}", "-to", f"{end}", "-i", str(source),
                  "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-c:a", "copy", str(out)])


def yt_dlp(page_url: str, out: Path, start: float, end: float) -> tuple[float, float]:
    out.unlink(missing_ok=True)
    return timed([YT_DLP, "--ignore-config", "--no-cache-dir", "--no-progress", "-q", "--no-warnings",
                  "--download-sections", f"*{start}-{end}", "--force-keyframes-at-cuts", "-o", str(out), page_url])


def summary(runs: list[tuple[float, float]]) -> dict[str, object]:
    """Median wall and CPU seconds, and each run's (wall, CPU)."""
    return {
        "median_sec": round(statistics.median(w for w, _ in runs), 3),
        "median_cpu_sec": round(statistics.median(c for _, c in runs), 3),
        "runs_sec_cpu": [(round(w, 3), round(c, 3)) for w, c in runs],
    }


async def job_run(runner: JobRunner, pids: list[int], start: float, end: float) -> tuple[float, float]:
    """(POST → done seconds, CPU seconds of the gateway and workers with their ffmpeg children)."""
    cpu = cpu_seconds_of(pids)
    wall = await runner.run(start, end)
    return wall, cpu_seconds_of(pids) - cpu


async def reencode_benchmarks(source: Path, work: Path, runs: int) -> dict[str, object]:
    """Median seconds (wall and CPU) of the job, the bare ffmpeg command and yt-dlp over `runs` ranges (plus
    one warm-up). The job's CPU counts the gateway and worker processes with their ffmpeg children, not the
    NATS, S3 and PostgreSQL servers; on a busy machine the CPU figures are the steadier comparison."""
    served = work / "served"
    served.mkdir(parents=True, exist_ok=True)
    (served / source.name).unlink(missing_ok=True)
    (served / source.name).symlink_to(source.resolve())
    (served / PAGE).write_text(f'<html><body><video src="{source.name}"></video></body></html>')
    job: list[tuple[float, float]] = []
    ffmpeg: list[tuple[float, float]] = []
    ytdlp: list[tuple[float, float]] = []
    with bench_stack(work / "stack", force_cut_path="reencode") as stack, MediaServer(served) as origin:
        await upload_source(stack, source)
        pids = [child.proc.pid for child in stack.children]
        async with JobRunner(stack) as runner:
            for i in range(runs + 1):
                start, end = reencode_range(i)
                took = (
                    await job_run(runner, pids, start, end),
                    await asyncio.to_thread(bare_ffmpeg, source, work / "bare.mp4", start, end),
                    await asyncio.to_thread(yt_dlp, origin.url(PAGE), work / "ytdlp.mp4", start, end),
                )
                if i == 0:
                    continue  # warm-up: page cache, connections, the encoder's first start
                for series, value in zip((job, ffmpeg, ytdlp), took, strict=True):
                    series.append(value)
    return {
        "clip_sec": CLIP_SEC, "clipjet_reencode_job": summary(job), "bare_ffmpeg_libx264": summary(ffmpeg),
        "yt_dlp_force_keyframes": summary(ytdlp),
        "job_over_bare_ffmpeg_wall": round(statistics.median(w for w, _ in job) / statistics.median(
            w for w, _ in ffmpeg), 3),
        "job_over_bare_ffmpeg_cpu": round(statistics.median(c for _, c in job) / statistics.median(
            c for _, c in ffmpeg), 3),
    }
