"""Soak: N mixed jobs (stream copy, smart cut, subtitles with the small shipped model) through the stack.

`python -m bench.soak [--jobs 2000]` (also `make soak`). The stack is bench/stack.py's: NATS, S3, PostgreSQL on
loopback, the gateway, one process per stage and the reaper, each its own process. Source: 60 s of 640x360
30 fps H.264 (keyframe every 2 s) + AAC with speech (shared/media/speech.py), uploaded once. Jobs are sent
`--concurrency` at a time in the mix copy:smart:subs (`--mix`, default 4:4:2); every job asks for another
range (no request repeats, so none is answered from an earlier result): copy jobs `precision: keyframe`, smart
cuts the default precision from a start between keyframes, subtitle jobs a short clip with `subs.enabled`.

Checked at the end (the run fails when one does not hold):
- none lost: every job ended `done` exactly once (one terminal event on `<prefix>.events.<id>`, and its row
  in PostgreSQL is `done`); no job failed;
- RSS of every process flat after warm-up: the median of the samples over the last tenth of the run minus the
  median over the tenth after warm-up (`--warmup`, a share of the jobs), within `--max-growth-mb` (the same with
  each tenth's minimum is reported beside it, not checked; `python -m bench.rss_trend` gives every tenth);
- scratch and S3 staging empty: no file left under SCRATCH_DIR, no object under `staging/` once the reaper has
  passed (bounded wait);
- p95 POST → done per job type, recorded.
The run's figures go to bench/results/soak-<time>.json and are printed.
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec

from bench.copy_path import UPLOAD_KEY, Series, upload_source
from bench.stack import BenchStack, bench_stack
from bench.subs import SPEECH_TEXT, rss_mb
from shared.jobs.contracts import JobEvent
from shared.media.speech import make_speech_video
from shared.runtime.bus import connect
from shared.storage.s3 import open_storage

DATA = Path(".data/bench")
RESULTS = Path("bench/results")
SOURCE_SEC = 60.0
CLIP_SEC = {"copy": 8.0, "smart": 8.0, "subs": 5.0}  # short clips: the soak is about counts, not clip size
START_STEP_SEC = 0.01  # job i of a type starts at FIRST_START_SEC + (i % STARTS) * step: each range its own
FIRST_START_SEC = 1.005  # between keyframes (every 2 s): a smart cut re-encodes a head
STARTS = 4000
JOB_TIMEOUT_SEC = 300.0  # POST → done of one job on a loaded machine
SAMPLE_SEC = 2.0  # RSS sampling period, s
CLEAN_TIMEOUT_SEC = 60.0  # for the reaper to empty staging after the last job
REAPER_INTERVAL_SEC = 2.0
END_SETTLE_SEC = 2.0  # after the last job: late duplicate end events would arrive by then
POST_ATTEMPTS = 3
JOB_COUNTS = """SELECT status, count(*) AS n FROM jobs WHERE id = ANY($1::uuid[]) GROUP BY status"""


def job_body(kind: str, i: int) -> dict[str, Any]:
    """The request of the i-th job of a type: its own range."""
    start = round(FIRST_START_SEC + (i % STARTS) * START_STEP_SEC, 3)
    body: dict[str, Any] = {"source": {"type": "upload", "key": UPLOAD_KEY}, "startSec": start,
                            "endSec": round(start + CLIP_SEC[kind], 3), "priority": "normal"}
    if kind == "copy":
        body["precision"] = "keyframe"
    if kind == "subs":
        body["subs"] = {"enabled": True}
    return body


def mixed_kinds(jobs: int, mix: dict[str, int]) -> list[str]:
    """`jobs` job types in the proportions of `mix`, interleaved (4:4:2 → copy smart subs copy smart subs ...)."""
    left, cycle = dict(mix), []
    while any(left.values()):
        for kind in mix:
            if left[kind]:
                cycle.append(kind)
                left[kind] -= 1
    return [cycle[i % len(cycle)] for i in range(jobs)]


@dataclass
class RssSampler:
    """RSS of every stack process every SAMPLE_SEC, tagged with the number of jobs ended so far."""

    stack: BenchStack
    samples: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (jobs ended, name → MB)
    ended: int = 0

    def sample(self) -> dict[str, float]:
        now = {c.name: round(rss_mb(c.proc.pid), 1) for c in self.stack.children if c.proc.poll() is None}
        self.samples.append((self.ended, now))
        return now

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            try:
                await asyncio.wait_for(stop.wait(), SAMPLE_SEC)
            except TimeoutError:
                pass

    def window(self, lo: int, hi: int, of: Callable[[list[float]], float] = statistics.median) -> dict[str, float]:
        """Per process, the median (or `of`) RSS over the samples taken while [lo, hi] jobs had ended."""
        names = {name for _, s in self.samples for name in s}
        return {name: round(of([s[name] for n, s in self.samples if lo <= n <= hi and name in s]), 1)
                for name in sorted(names) if any(lo <= n <= hi and name in s for n, s in self.samples)}


class Driver:
    """Sends jobs to the gateway and records every end event of every job (to see duplicates)."""

    def __init__(self, stack: BenchStack) -> None:
        self.stack = stack
        self.ends: dict[str, list[JobEvent]] = {}
        self._waiting: dict[str, asyncio.Future[JobEvent]] = {}
        self.post_retries = 0

    async def __aenter__(self) -> Driver:
        self.nc = await connect(self.stack.settings, "soak")
        await self.nc.subscribe(f"{self.stack.settings.subject_prefix}.events.*", cb=self._on_event)
        self.http = httpx.AsyncClient(base_url=self.stack.base_url, timeout=JOB_TIMEOUT_SEC)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self.nc.close()

    async def _on_event(self, msg: Any) -> None:
        event = msgspec.json.decode(msg.data, type=JobEvent)
        self.ends.setdefault(event.job_id, []).append(event)
        future = self._waiting.get(event.job_id)
        if future is not None and not future.done():
            future.set_result(event)

    async def run(self, body: dict[str, Any]) -> tuple[str, float, str]:
        """(job id, seconds from POST to its end event, its status)."""
        began = time.perf_counter()
        # a pooled connection the server closed as idle fails the next request (ReadError): the POST is sent
        # again under the same Idempotency-Key, so a job is never submitted twice
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        for attempt in range(POST_ATTEMPTS):
            try:
                response = await self.http.post("/api/jobs", json=body, headers=headers)
                break
            except httpx.TransportError:
                if attempt == POST_ATTEMPTS - 1:
                    raise
                self.post_retries += 1
        if response.is_error:
            raise RuntimeError(f"POST /api/jobs {body} → {response.status_code} {response.text[:300]}")
        job_id = response.json()["id"]
        future = self._waiting.setdefault(job_id, asyncio.get_running_loop().create_future())
        if self.ends.get(job_id) and not future.done():
            future.set_result(self.ends[job_id][0])
        event = await asyncio.wait_for(future, JOB_TIMEOUT_SEC)
        return job_id, time.perf_counter() - began, event.status


async def run_mixed(
    stack: BenchStack, kinds: list[str], concurrency: int, sampler: RssSampler, first: int = 0,
) -> dict[str, Any]:
    """Every job of `kinds` through the stack, `concurrency` at a time; per type the POST → done times, the
    job ids and the statuses. `first`: index of the first job (another run's ranges stay apart)."""
    times: dict[str, Series] = {kind: Series(kind, []) for kind in set(kinds)}
    statuses: Counter[str] = Counter()
    ids: list[str] = []
    counters: Counter[str] = Counter()
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    for kind in kinds:
        queue.put_nowait((kind, job_body(kind, first + counters[kind])))
        counters[kind] += 1
    async with Driver(stack) as driver:
        async def worker() -> None:
            while not queue.empty():
                kind, body = queue.get_nowait()
                job_id, seconds, status = await driver.run(body)
                ids.append(job_id)
                statuses[status] += 1
                if status == "done":
                    times[kind].seconds.append(seconds)
                sampler.ended += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - began
        await asyncio.sleep(END_SETTLE_SEC)
        per_job = Counter(len(driver.ends.get(job_id, [])) for job_id in ids)
        not_done = [j for j in ids if [e.status for e in driver.ends.get(j, [])] != ["done"]]
    return {
        "jobs": len(ids), "wall_sec": round(wall, 1), "jobs_per_min": round(len(ids) / wall * 60, 1),
        "statuses": dict(statuses), "end_events_per_job": {str(k): v for k, v in sorted(per_job.items())},
        "not_done_exactly_once": not_done[:20], "ids": ids, "post_retries": driver.post_retries,
        "post_to_done": {kind: s.summary() for kind, s in times.items() if s.seconds},
    }


async def db_statuses(stack: BenchStack, ids: list[str]) -> dict[str, int]:
    settings = stack.settings
    db = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.db_schema})
    try:
        rows = await db.fetch(JOB_COUNTS, [uuid.UUID(i) for i in ids])
    finally:
        await db.close()
    return {row["status"]: row["n"] for row in rows}


def scratch_left(stack: BenchStack) -> list[str]:
    """Files of jobs left under SCRATCH_DIR (the scratch gate's own bookkeeping, `.quota*` and `.holders/` of
    the running workers, is not a job's)."""
    root = Path(stack.settings.scratch_dir)
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.relative_to(root).parts[0].startswith("."))


async def staging_left(stack: BenchStack) -> list[str]:
    """Objects still under staging/ once the reaper had CLEAN_TIMEOUT_SEC to delete them."""
    async with open_storage(stack.settings) as storage:
        deadline = time.monotonic() + CLEAN_TIMEOUT_SEC
        while True:
            left = await storage.list_keys("staging/")
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(REAPER_INTERVAL_SEC)


def speech_source() -> Path:
    """The soak's source, made once (under a temporary name, then renamed: a present file is complete)."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / "speech-60s-360p.mp4"
    if not path.is_file():
        made = make_speech_video(DATA / f"speech-60s-360p-{os.getpid()}.mp4", SPEECH_TEXT, offset_sec=2.0,
                                 gap_sec=0.6, seconds=SOURCE_SEC, size="640x360").path
        made.replace(path)
    return path


def growth(sampler: RssSampler, jobs: int, warmup: int) -> dict[str, dict[str, float]]:
    """Per process: RSS after warm-up (median over the next tenth of the jobs), at the end (median over the last
    tenth), and the difference (the check); reported beside them, not checked, the same with each tenth's
    minimum (a process whose RSS swings within a tenth, as the transcriber's does, has a flat minimum)."""
    tenth = max(1, (jobs - warmup) // 10)
    after_warmup, low_after = sampler.window(warmup, warmup + tenth), sampler.window(warmup, warmup + tenth, min)
    end, low_end = sampler.window(jobs - tenth, jobs), sampler.window(jobs - tenth, jobs, min)
    return {name: {"after_warmup_mb": after_warmup[name], "end_mb": end[name],
                   "growth_mb": round(end[name] - after_warmup[name], 1),
                   "min_growth_mb": round(low_end[name] - low_after[name], 1)}
            for name in after_warmup if name in end}


async def soak(jobs: int, concurrency: int, mix: dict[str, int], warmup_share: float, max_growth_mb: float,
               model: str) -> dict[str, Any]:
    source = speech_source()
    with (tempfile.TemporaryDirectory(dir=DATA, prefix="soak-") as work,
          bench_stack(Path(work) / "stack", reaper=True, asr_model=model,
                      reaper_interval_sec=REAPER_INTERVAL_SEC) as stack):
        await upload_source(stack, source)
        sampler = RssSampler(stack)
        stop = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(stop))
        try:
            run = await run_mixed(stack, mixed_kinds(jobs, mix), concurrency, sampler)
        finally:
            stop.set()
            await sampling
        rows = await db_statuses(stack, run["ids"])
        staging = await staging_left(stack)
        scratch = scratch_left(stack)
    warmup = round(jobs * warmup_share)
    rss = growth(sampler, jobs, warmup)
    problems = []
    if run["not_done_exactly_once"] or rows != {"done": jobs}:
        problems.append(f"jobs not done exactly once: {run['not_done_exactly_once']}; rows {rows}")
    if grown := {n: g["growth_mb"] for n, g in rss.items() if g["growth_mb"] > max_growth_mb}:
        problems.append(f"RSS grew after warm-up by more than {max_growth_mb} MB: {grown}")
    if staging:
        problems.append(f"{len(staging)} staging objects left, e.g. {staging[:5]}")
    if scratch:
        problems.append(f"{len(scratch)} scratch files left, e.g. {scratch[:5]}")
    run.pop("ids")
    return {"jobs": jobs, "concurrency": concurrency, "mix": mix, "model": model, "warmup_jobs": warmup,
            **run, "db_statuses": rows, "rss_mb": rss, "staging_left": len(staging), "scratch_left": len(scratch),
            "rss_samples": sampler.samples, "problems": problems}


def parse_mix(text: str) -> dict[str, int]:
    weights = [int(x) for x in text.split(":")]
    if len(weights) != len(CLIP_SEC) or min(weights) < 0 or not sum(weights):
        raise argparse.ArgumentTypeError("--mix is copy:smart:subs, e.g. 4:4:2")
    return {kind: w for kind, w in zip(CLIP_SEC, weights, strict=True) if w}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs in all")
    parser.add_argument("--concurrency", type=int, default=4, help="jobs in flight at once")
    parser.add_argument("--mix", type=parse_mix, default=parse_mix("4:4:2"), help="copy:smart:subs weights")
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the jobs before RSS counts as warm")
    parser.add_argument("--max-growth-mb", type=float, default=15.0, help="RSS growth after warm-up that fails")
    parser.add_argument("--model", default="tiny.en", help="speech model of the subtitle jobs (ASR_MODEL)")
    args = parser.parse_args()
    began = time.time()
    results = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began)),
               **asyncio.run(soak(args.jobs, args.concurrency, args.mix, args.warmup, args.max_growth_mb,
                                  args.model))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"soak-{int(began)}.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "rss_samples"}, indent=2))
    print(f"written to {out}")
    if results["problems"]:
        raise SystemExit("soak failed: " + "; ".join(results["problems"]))


if __name__ == "__main__":
    main()
