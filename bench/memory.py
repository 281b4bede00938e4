"""Memory of the stack's processes: idle RSS per worker, RSS after N jobs, the transcriber with its model.

`python -m bench.memory [--jobs 500]`. The stack is bench/stack.py's (gateway, one process per stage, the
reaper; NATS, S3 and PostgreSQL on loopback), source and job kinds as in bench/soak.py. Measured, in order:
1. references, each a fresh interpreter measured once its imports are done: a bare `import nats, asyncpg` (the
   floor of any worker: its two clients) and `import services.registry` (what every worker imported before
   the registry was lazy: every stage's code);
2. idle RSS of every process of the stack, `IDLE_SETTLE_SEC` after the gateway answers (median of three
   samples), before any job;
3. `--jobs` jobs (stream copy and smart cut, 1:1, `--concurrency` at a time): RSS after the first tenth
   (warm) and at the end, the growth between them;
4. the transcriber after `SUBS_JOBS` subtitle jobs with `--model` loaded (idle again, median of three samples).
Results go to bench/results/memory-<time>.json and are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.copy_path import upload_source
from bench.soak import DATA, RESULTS, RssSampler, growth, mixed_kinds, run_mixed, speech_source
from bench.stack import BenchStack, bench_stack
from bench.subs import rss_mb

IDLE_SETTLE_SEC = 5.0  # after the stack is up, before the idle samples
IDLE_SAMPLES = 3
SUBS_JOBS = 3
REFERENCE_TIMEOUT_SEC = 60.0
REFERENCES = {
    "bare `import nats, asyncpg`": "import nats, asyncpg",
    "`import services.registry` (every stage's code, before it was lazy)":
        "from services.registry import STAGES\nfor name in STAGES: STAGES[name]",
    "`import services.registry` now (names only)": "import services.registry",
}


def reference_rss(code: str) -> float:
    """RSS (MB) of a fresh interpreter that ran `code`, measured while it waits."""
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    proc = subprocess.Popen([sys.executable, "-c", f"{code}\nimport sys\nprint('ready', flush=True)\nsys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"reference {code!r} failed")
        return round(rss_mb(proc.pid), 1)
    finally:
        proc.kill()
        proc.wait(REFERENCE_TIMEOUT_SEC)


async def idle_rss(stack: BenchStack, names: tuple[str, ...] | None = None) -> dict[str, float]:
    """Per process, the median of IDLE_SAMPLES RSS samples a second apart."""
    samples: list[dict[str, float]] = []
    for _ in range(IDLE_SAMPLES):
        samples.append({c.name: rss_mb(c.proc.pid) for c in stack.children
                        if c.proc.poll() is None and (names is None or c.name in names)})
        await asyncio.sleep(1.0)
    return {name: round(statistics.median(s[name] for s in samples), 1) for name in samples[0]}


async def memory(jobs: int, concurrency: int, model: str) -> dict[str, Any]:
    references = {name: reference_rss(code) for name, code in REFERENCES.items()}
    source = speech_source()
    with (tempfile.TemporaryDirectory(dir=DATA, prefix="memory-") as work,
          bench_stack(Path(work) / "stack", reaper=True, asr_model=model) as stack):
        await upload_source(stack, source)
        await asyncio.sleep(IDLE_SETTLE_SEC)
        idle = await idle_rss(stack)
        sampler = RssSampler(stack)
        stop = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(stop))
        try:
            run = await run_mixed(stack, mixed_kinds(jobs, {"copy": 1, "smart": 1}), concurrency, sampler)
        finally:
            stop.set()
            await sampling
        after = await idle_rss(stack)
        subs = await run_mixed(stack, ["subs"] * SUBS_JOBS, 1, RssSampler(stack), first=jobs)
        transcriber = await idle_rss(stack, ("transcribe",))
    run.pop("ids")
    subs.pop("ids")
    return {"references_mb": references, "idle_mb": idle, "jobs": jobs, "concurrency": concurrency,
            "statuses": run["statuses"], "after_jobs_mb": after, "growth": growth(sampler, jobs, jobs // 10),
            "post_to_done": run["post_to_done"], "model": model, "subs_statuses": subs["statuses"],
            "transcriber_with_model_mb": transcriber.get("transcribe")}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=500, help="jobs before the RSS after load is read")
    parser.add_argument("--concurrency", type=int, default=4, help="jobs in flight at once")
    parser.add_argument("--model", default="base", help="the transcriber's speech model (ASR_MODEL)")
    args = parser.parse_args()
    began = time.time()
    results = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began)),
               **asyncio.run(memory(args.jobs, args.concurrency, args.model))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"memory-{int(began)}.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
