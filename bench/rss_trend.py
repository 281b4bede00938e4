"""RSS trend of a soak's processes after warm-up: per tenth of the jobs the median and the minimum, and the slope.

`python -m bench.rss_trend bench/results/soak-<time>.json [...] [--warmup 0.1] [--process fetch]`. Reads the
`rss_samples` a soak recorded (bench/soak.py: [jobs ended, {process: RSS MB}] every 2 s). After the warm-up
share of the jobs, the rest is cut in tenths; for each, the median and the minimum RSS of the samples taken
then. The slope is the least-squares line through the tenths' medians, in MB per 100 jobs: a process that
leaks per job climbs at a steady slope, one that oscillates (the transcriber's model buffers) has a flat one
and a flat minimum. Printed as one table per result file.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

WINDOWS = 10  # the jobs after warm-up are cut in this many windows
PER_JOBS = 100  # the slope is given per this many jobs


def windows(samples: list[tuple[int, dict[str, float]]], process: str, jobs: int, warmup: int) -> list[dict[str, Any]]:
    """The windows after warm-up: their job range and the median and minimum RSS of `process` in each."""
    width = max(1, (jobs - warmup) // WINDOWS)
    rows = []
    for lo in range(warmup, jobs - width + 1, width):
        hi = lo + width
        seen = [s[process] for ended, s in samples if lo <= ended <= hi and process in s]
        if seen:
            rows.append({"jobs": (lo, hi), "median_mb": round(statistics.median(seen), 1),
                         "min_mb": round(min(seen), 1)})
    return rows


def slope_per_jobs(rows: list[dict[str, Any]], key: str) -> float:
    """Least-squares slope of `key` against the windows' middle job, MB per PER_JOBS jobs (0 with < 2 windows)."""
    if len(rows) < 2:
        return 0.0
    xs = [(r["jobs"][0] + r["jobs"][1]) / 2 for r in rows]
    return round(statistics.linear_regression(xs, [r[key] for r in rows]).slope * PER_JOBS, 2)


def trend(result: dict[str, Any], warmup_share: float, processes: list[str]) -> dict[str, Any]:
    samples = [(int(ended), rss) for ended, rss in result["rss_samples"]]
    jobs = result["jobs"]
    warmup = round(jobs * warmup_share)
    names = processes or sorted({name for _, s in samples for name in s})
    out = {}
    for name in names:
        rows = windows(samples, name, jobs, warmup)
        out[name] = {"windows": rows, "slope_median_mb_per_100": slope_per_jobs(rows, "median_mb"),
                     "slope_min_mb_per_100": slope_per_jobs(rows, "min_mb")}
    return {"jobs": jobs, "warmup_jobs": warmup, "processes": out}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rss_trend", description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="soak result files (bench/results/soak-*.json)")
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the jobs before RSS counts as warm")
    parser.add_argument("--process", action="append", default=[], help="only this process (repeatable)")
    args = parser.parse_args()
    for path in args.results:
        found = trend(json.loads(path.read_text()), args.warmup, args.process)
        print(f"{path}: {found['jobs']} jobs, warm-up {found['warmup_jobs']}")
        for name, t in found["processes"].items():
            cells = "  ".join(f"{r['median_mb']:.1f}/{r['min_mb']:.1f}" for r in t["windows"])
            slopes = f"{t['slope_median_mb_per_100']:+6.2f} MB/100 jobs (min {t['slope_min_mb_per_100']:+6.2f})"
            print(f"  {name:<11} slope {slopes}  median/min per tenth: {cells}")


if __name__ == "__main__":
    main()
