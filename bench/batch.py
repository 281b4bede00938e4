"""`python -m bench.batch`: 10 clips of one 10-minute URL source in one batch against 10 separate jobs.

The whole stack runs as processes (bench/stack.py); the source is a 10-minute 640x360 2 Mb/s H.264/AAC MP4 on a
local HTTP origin (tests/http_source.py, socket send buffer 128 KiB as in bench/url_sources.py), with and
without Range support. Each run POSTs the 10 clips as one batch, and as 10 jobs at once, side by side, and
measures the bytes the origin sent and the wall time from the first POST to the last job's done event. Each run
and mode reads its own URL (`?run=`), so no earlier identical request is reused. Two layouts of the clips:
`spread`, one 30 s clip a minute (spans apart: the batch saves the per-job probes); `clustered`, ten 30 s clips
starting 6 s apart (overlapping: the batch reads the 84 s they cover once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.copy_path import JobRunner
from bench.stack import bench_stack
from shared.media.testpattern import make_test_pattern
from tests.http_source import MediaServer

DATA = Path(".data/bench")
SOURCE_SEC = 600
CLIPS = 10
CLIP_SEC = 30.0
LAYOUTS = {
    "spread": [(15.3 + 60 * i, 15.3 + 60 * i + CLIP_SEC) for i in range(CLIPS)],
    "clustered": [(240.3 + 6 * i, 240.3 + 6 * i + CLIP_SEC) for i in range(CLIPS)],
}
ORIGIN_SNDBUF_BYTES = 128 * 1024  # loopback autotunes buffers to MBs, which is not what a WAN carries
END_TIMEOUT_SEC = 600.0  # longest wait for one run's jobs, s
POST_TRIES = 20  # a POST the gateway sheds (429/503 without a job written) is sent again up to this often
PRECISION = "keyframe"  # stream copy: what is measured is the reading of the source, not encoding


async def _post(runner: JobRunner, body: dict[str, object]) -> dict[str, object]:
    """POST /api/jobs, sent again (the same body) after Retry-After while the gateway sheds load (429/503)."""
    for _ in range(POST_TRIES - 1):
        response = await runner.http.post("/api/jobs", json=body)
        if response.status_code not in (429, 503) or "jobId" in response.text:
            break
        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
    else:
        response = await runner.http.post("/api/jobs", json=body)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


async def one_run(runner: JobRunner, origin: MediaServer, url: str, clips: list[tuple[float, float]],
                  batch: bool) -> tuple[float, int]:
    """Seconds from the first POST to the last done event, and the bytes the origin sent meanwhile."""
    source = {"type": "url", "url": url}
    before, began = origin.bytes_sent, time.perf_counter()
    if batch:
        accepted = await _post(runner, {"source": source, "precision": PRECISION,
                                        "clips": [{"startSec": start, "endSec": end} for start, end in clips]})
        ids = [job["id"] for job in accepted["jobs"]]  # type: ignore[attr-defined]
    else:
        answers = await asyncio.gather(*(_post(runner, {
            "source": source, "precision": PRECISION, "startSec": start, "endSec": end,
        }) for start, end in clips))
        ids = [str(answer["id"]) for answer in answers]
    await asyncio.gather(*(runner.done(job_id, END_TIMEOUT_SEC) for job_id in ids))
    return time.perf_counter() - began, origin.bytes_sent - before


async def run(runs: int, origins: list[str], layouts: list[str]) -> dict[str, object]:
    DATA.mkdir(parents=True, exist_ok=True)
    source = make_test_pattern(DATA / "source-600s-360p.mp4", seconds=SOURCE_SEC, size="640x360",
                               video_bitrate="2M")
    size = source.stat().st_size
    results: dict[str, object] = {"source_bytes": size, "clips": CLIPS, "clip_sec": CLIP_SEC,
                                  "load_before": _load()}
    with tempfile.TemporaryDirectory(dir=DATA) as work, MediaServer(source.parent) as origin, \
            bench_stack(Path(work) / "stack", fetch_allow_networks="127.0.0.1/32", fetch_timeout_sec=600) as stack:
        origin.send_buffer_bytes = ORIGIN_SNDBUF_BYTES
        async with JobRunner(stack) as runner:
            for kind in origins:
                ranges = kind == "range_reads"
                origin.ranges = ranges
                for layout in layouts:
                    clips = LAYOUTS[layout]
                    samples: dict[str, list[tuple[float, int]]] = {"separate": [], "batch": []}
                    for i in range(runs):
                        for mode in ("separate", "batch"):  # side by side, alternating
                            url = f"{origin.url(source.name)}?run={layout}-{ranges}-{i}-{mode}"
                            samples[mode].append(await one_run(runner, origin, url, clips, mode == "batch"))
                    results[f"{kind}/{layout}"] = row = {
                        mode: {"median_sec": round(statistics.median(s[0] for s in got), 3),
                               "median_bytes": int(statistics.median(s[1] for s in got)),
                               "share_of_file": round(statistics.median(s[1] for s in got) / size, 3),
                               "runs_sec": [round(s[0], 3) for s in got]}
                        for mode, got in samples.items()
                    }
                    print(json.dumps({f"{kind}/{layout}": row}), file=sys.stderr, flush=True)  # as it comes
    results["load_after"] = _load()
    return results


def _load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batch")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--origins", default="range_reads,whole_download", help="range_reads, whole_download")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help=", ".join(LAYOUTS))
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.runs, args.origins.split(","), args.layouts.split(","))), indent=2))


if __name__ == "__main__":
    main()
