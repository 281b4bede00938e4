"""`python -m bench`: run the benchmarks and print the rows for BENCHMARKS.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.copy_path import STACK_SETTINGS, handoff, latency, throughput, upload_source
from bench.reencode import reencode_benchmarks
from bench.smartcut import smartcut
from bench.stack import bench_stack
from bench.subs import subs_benchmarks
from shared.media.testpattern import make_test_pattern

DATA = Path(".data/bench")
RESULTS = Path("bench/results")
SOURCE_SEC = 600
HANDOFF_RUNS = 10  # staged ranges handed over through S3 and read locally, each (bench.copy_path.handoff)


def machine() -> str:
    cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{platform.node()} ({cpu} cores, {platform.machine()}, Python {platform.python_version()})"


async def copy_benchmarks(runs: int, jobs: int, rounds: int) -> dict[str, object]:
    DATA.mkdir(parents=True, exist_ok=True)
    source = make_test_pattern(DATA / "source-600s-720p.mp4", seconds=SOURCE_SEC, size="1280x720", fps=30,
                               gop_frames=60, video_bitrate="2M")
    with tempfile.TemporaryDirectory(dir=DATA) as work, bench_stack(Path(work) / "stack", **STACK_SETTINGS) as stack:
        await upload_source(stack, source)
        series = await latency(stack, source, SOURCE_SEC, runs, Path(work))
        flows = [await throughput(stack, source, SOURCE_SEC, jobs, Path(work), round_=i) for i in range(rounds)]
        staging = await handoff(stack, source, SOURCE_SEC, HANDOFF_RUNS, Path(work))
    medians = {
        name: statistics.median(float(f[name]) for f in flows)  # type: ignore[arg-type]
        for name in ("clipjet_per_min", "reference_per_min")
    }
    return {"latency": {s.name: s.summary() for s in series}, "throughput_median": medians, "throughput": flows,
            "handoff": staging}


async def smartcut_benchmarks(runs: int) -> dict[str, object]:
    DATA.mkdir(parents=True, exist_ok=True)
    source = make_test_pattern(DATA / "source-600s-720p.mp4", seconds=SOURCE_SEC, size="1280x720", fps=30,
                               gop_frames=60, video_bitrate="2M")
    with tempfile.TemporaryDirectory(dir=DATA) as work, bench_stack(Path(work) / "stack") as stack:
        await upload_source(stack, source)
        return await smartcut(stack, source, SOURCE_SEC, runs, Path(work))


async def reencode_benchmark(runs: int) -> dict[str, object]:
    DATA.mkdir(parents=True, exist_ok=True)
    source = make_test_pattern(DATA / "source-600s-720p.mp4", seconds=SOURCE_SEC, size="1280x720", fps=30,
                               gop_frames=60, video_bitrate="2M")
    with tempfile.TemporaryDirectory(dir=DATA) as work:
        return await reencode_benchmarks(source, Path(work), runs)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--runs", type=int, default=20, help="sequential jobs for the latency figures")
    parser.add_argument("--jobs", type=int, default=50, help="jobs queued at once for the throughput figure")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (the median is reported)")
    parser.add_argument("--smartcut-runs", type=int, default=5, help="rounds of the smart-cut comparison (median)")
    parser.add_argument("--reencode-runs", type=int, default=5, help="30 s re-encodes of each kind (median)")
    parser.add_argument("--subs-runs", type=int, default=5, help="30 s clips with subtitles per shipped model")
    parser.add_argument("--only", choices=("copy", "smartcut", "reencode", "subs"), help="run one benchmark")
    args = parser.parse_args()
    began = time.time()
    results: dict[str, object] = {"machine": machine(),
                                  "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began))}
    if args.only in (None, "copy"):
        results["copy"] = asyncio.run(copy_benchmarks(args.runs, args.jobs, args.rounds))
    if args.only in (None, "smartcut"):
        results["smartcut"] = asyncio.run(smartcut_benchmarks(args.smartcut_runs))
    if args.only in (None, "reencode"):
        results["reencode"] = asyncio.run(reencode_benchmark(args.reencode_runs))
    if args.only in (None, "subs"):
        results["subs"] = asyncio.run(subs_benchmarks(DATA, args.subs_runs))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench-{int(began)}.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
