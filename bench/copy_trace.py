"""`python -m bench.copy_trace`: where the time and CPU of one upload stream-copy job go, hop by hop.

Runs sequential upload jobs on a bench stack and prints the median times (from the POST) of their job_events
(stage_started / stage_finished / done) and end event; the CPU seconds per job of the stack's processes
(gateway, workers with their ffmpeg children, SeaweedFS, NATS; not the shared PostgreSQL) beside the CPU of
the reference (bare ffmpeg -c copy + one S3 put: this process, its ffmpeg child, SeaweedFS), each over the same
clips one after the other; and the same-run costs of single operations measured from this process (S3 HEAD,
put, server-side copy, probe, ffmpeg copy over a signed URL and from the local file). CPU seconds hold up on a
loaded machine where wall times do not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import asyncpg

from bench.copy_path import COPY_PRECISION, STACK_SETTINGS, JobRunner, clip_range, reference_once, upload_source
from bench.cpu import PROC, cpu_seconds_of
from bench.stack import bench_stack
from shared.media.cut import copy_cut
from shared.media.probe import probe
from shared.media.testpattern import make_test_pattern
from shared.storage.s3 import open_storage, sha256_file

DATA = Path(".data/bench")
SOURCE_SEC = 600
CPU_FIRST_CLIP = 40  # clip numbers of the CPU phase (other ranges than the timed jobs)


def _stack_pids(roots: list[int], marker: str) -> dict[int, str]:
    """pid → command of the stack's processes: `roots` and their descendants, and the servers started for it
    (their command line names the stack's folder, `marker`)."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    found = {pid for pid in roots if pid in commands} | {pid for pid, cmd in commands.items() if marker in cmd}
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return {pid: commands[pid] for pid in found}


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _role(command: str) -> str:
    for name in ("weed", "nats-server", "gateway"):
        if name in command:
            return name
    return command.split("worker ")[-1].split()[0] if "worker " in command else "other"


async def cpu_per_job(stack: Any, runner: JobRunner, storage: Any, source: Path, work: Path,
                      runs: int) -> dict[str, object]:
    """CPU seconds per job of the stack's processes, and of the reference, over `runs` clips each, in turn."""
    pids = _stack_pids([c.pid for c in stack.children], str(work))
    servers = [pid for pid, cmd in pids.items() if _role(cmd) in ("weed", "nats-server")]
    by_role_before = {pid: cpu_seconds_of([pid]) for pid in pids}
    for i in range(runs):
        await runner.run(*clip_range(CPU_FIRST_CLIP + i, SOURCE_SEC), precision=COPY_PRECISION)
    used: dict[str, float] = {}
    for pid, before in by_role_before.items():
        role = _role(pids[pid])
        used[role] = used.get(role, 0.0) + cpu_seconds_of([pid]) - before
    job = sum(used.values()) / runs
    servers_before, self_before = cpu_seconds_of(servers), _self_cpu()
    for i in range(runs):
        await reference_once(stack, storage, source, work / f"cpu{i}.mp4", *clip_range(CPU_FIRST_CLIP + i, SOURCE_SEC))
    reference = (cpu_seconds_of(servers) - servers_before + _self_cpu() - self_before) / runs
    return {"job_cpu_sec": round(job, 3), "reference_cpu_sec": round(reference, 3),
            "job_over_reference": round(job / reference, 2),
            "job_cpu_sec_by_process": {k: round(v / runs, 3) for k, v in sorted(used.items()) if v > 0.0005}}


async def _timed(results: dict[str, list[float]], name: str, work: Awaitable[object]) -> object:
    began = time.perf_counter()
    value = await work
    results.setdefault(name, []).append(time.perf_counter() - began)
    return value


async def trace(runs: int, log_level: str = "warning") -> dict[str, object]:
    DATA.mkdir(parents=True, exist_ok=True)
    source = make_test_pattern(DATA / "source-600s-720p.mp4", seconds=SOURCE_SEC, size="1280x720", fps=30,
                               gop_frames=60, video_bitrate="2M")
    hops: dict[str, list[float]] = {}
    ops: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=DATA) as work, bench_stack(Path(work) / "stack", **STACK_SETTINGS,
                                                                      log_level=log_level) as stack:
        await upload_source(stack, source)
        db = await asyncpg.connect(stack.settings.database_url,
                                   server_settings={"search_path": stack.settings.db_schema})
        async with JobRunner(stack) as runner, open_storage(stack.settings) as storage:
            for i in range(2):
                await runner.run(*clip_range(i, SOURCE_SEC), precision=COPY_PRECISION)
            for i in range(runs):
                start, end = clip_range(i + 2, SOURCE_SEC)
                wall0 = time.time()
                job_id, total = await runner.run_job(start, end, precision=COPY_PRECISION)
                rows = await db.fetch("SELECT ts, type, data FROM job_events WHERE job_id = $1 ORDER BY ts, id",
                                      uuid.UUID(job_id))
                created = await db.fetchval("SELECT created_at FROM jobs WHERE id = $1", uuid.UUID(job_id))
                hops.setdefault("created", []).append(created.timestamp() - wall0)
                for row in rows:
                    data = json.loads(row["data"]) if isinstance(row["data"], str) else dict(row["data"])
                    name = f"{row['type']}:{data.get('stage', '')}"
                    hops.setdefault(name, []).append(row["ts"].timestamp() - wall0)
                hops.setdefault("end event seen", []).append(total)
            cpu = await cpu_per_job(stack, runner, storage, source, Path(work), runs)
            # the single operations, same S3 and files
            src_key = (await storage.list_keys("sources/"))[0]  # the checked copy of the upload
            url = await storage.internal_url(src_key, 600)
            for i in range(runs):
                start, end = clip_range(i + 2, SOURCE_SEC)
                out = Path(work) / f"c{i}.mp4"
                await _timed(ops, "HEAD", storage.head(src_key))
                await _timed(ops, "probe over signed URL", probe(url, keyframe_at=start))
                await _timed(ops, "ffmpeg copy over signed URL", copy_cut(url, out, seek_sec=start,
                                                                                  duration_sec=end - start))
                await _timed(ops, "ffmpeg copy from local file", copy_cut(str(source), out, seek_sec=start,
                                                                                  duration_sec=end - start))
                await _timed(ops, "sha256 of the clip", sha256_file(out))
                await _timed(ops, "S3 put of the clip", storage.put_file(f"t/{i}.mp4", out, "video/mp4",
                                                                                {"sha256": "x"}))
                await _timed(ops, "S3 server-side copy of the clip", storage.copy(f"t/{i}.mp4",
                                                                                         f"t/{i}c.mp4", "video/mp4"))
        await db.close()
    med = {k: round(statistics.median(v), 4) for k, v in hops.items()}
    return {"cpu_per_job": cpu, "hops_median_sec_from_post": dict(sorted(med.items(), key=lambda kv: kv[1])),
            "ops_median_sec": {k: round(statistics.median(v), 4) for k, v in ops.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.copy_trace")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--log-level", default="warning", help="the services' (info: each stage's steps, timed)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(trace(args.runs, args.log_level)), indent=1))


if __name__ == "__main__":
    main()
