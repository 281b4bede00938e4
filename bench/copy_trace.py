"""`python -m bench.copy_trace`: where the time of one upload stream-copy job goes, hop by hop.

Runs sequential upload jobs on a bench stack and prints, per job, the times (from the POST) of its job_events
(stage_started / stage_finished / done), the end event, and the same-run costs of the fetcher's and uploader's
single operations measured from this process (S3 HEAD, put, server-side copy, probe, ffmpeg copy over a signed
URL and from the local file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import asyncpg

from bench.copy_path import COPY_PRECISION, STACK_SETTINGS, JobRunner, clip_range, upload_source
from bench.stack import bench_stack
from shared.media.cut import copy_cut
from shared.media.probe import probe
from shared.media.testpattern import make_test_pattern
from shared.storage.s3 import open_storage, sha256_file

DATA = Path(".data/bench")
SOURCE_SEC = 600


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
    return {"hops_median_sec_from_post": dict(sorted(med.items(), key=lambda kv: kv[1])),
            "ops_median_sec": {k: round(statistics.median(v), 4) for k, v in ops.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.copy_trace")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--log-level", default="warning", help="the services' (info: each stage's steps, timed)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(trace(args.runs, args.log_level)), indent=1))


if __name__ == "__main__":
    main()
