"""`python -m bench.capacity`: how many replicas, NATS nodes and database connections a target load needs.

    python -m bench.capacity --copy-per-min 10000
    python -m bench.capacity --subtitled-per-min 1000 --gpu
    python -m bench.capacity --measure --validate 20 --copy-per-min 600   # measure here first, then plan

The plan uses the per-job stage costs in bench/capacity_profile.json (committed; `--measure` measures them
again on a small real run: a stack on loopback, every stage its own process, jobs one at a time) and the
assumptions printed with it (bench/capacity_model.py; CAPACITY.md says where each comes from). `--validate N`
checks the model on this machine: it predicts the throughput of the local stack (one replica per stage) and
then measures N copy jobs queued at once.
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
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import asyncpg

from bench.capacity_model import Assumptions, Profile, StageCost, plan, predicted_throughput
from bench.copy_path import CLIP_SEC, JobRunner, clip_range
from bench.cpu import cpu_seconds_of
from bench.stack import BenchStack, bench_stack
from bench.subs import SPEECH_OFFSET_SEC, SPEECH_TEXT, STARTS_SEC
from shared.jobs.pipeline import STAGES as STAGE_ORDER
from shared.media.speech import make_speech_video
from shared.media.testpattern import make_test_pattern
from shared.settings import load_settings
from shared.storage.s3 import open_storage

PROFILE_PATH = Path(__file__).with_name("capacity_profile.json")
DATA = Path(".data/bench")
RESULTS = Path("bench/results")
SOURCE_SEC = 600.0
SPEECH_SOURCE_SEC = 60.0
KEYS = {"copy": "uploads/0192f3a4-5b6c-7d8e-9f01-0000000000c1/source.mp4",
        "subtitled": "uploads/0192f3a4-5b6c-7d8e-9f01-0000000000c2/source.mp4"}
STAGE_SPANS = """
SELECT e.data->>'stage' AS stage,
       extract(epoch FROM max(f.ts) - max(e.ts)) AS wall_sec
FROM job_events e JOIN job_events f ON f.job_id = e.job_id AND f.type = 'stage_finished'
                                     AND f.data->>'stage' = e.data->>'stage'
WHERE e.job_id = $1 AND e.type = 'stage_started' GROUP BY 1
"""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def request(kind: str, start: float) -> dict[str, Any]:
    body: dict[str, Any] = {"source": {"type": "upload", "key": KEYS[kind]}, "startSec": start,
                            "endSec": start + CLIP_SEC, "priority": "normal", "precision": "keyframe"}
    if kind == "subtitled":
        body["subs"] = {"enabled": True}
    return body


def server_pids(data_dir: Path) -> list[int]:
    """The stack's servers (NATS, S3): processes whose command line names its data folder."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(data_dir).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def run_and_wait_sec(pid: int) -> tuple[float, float]:
    """Seconds a process's threads ran, and waited to run (run queue), so far (/proc/<pid>/task/*/schedstat)."""
    run = wait = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            fields = task.read_text().split()
        except OSError:
            continue
        run, wait = run + int(fields[0]), wait + int(fields[1])
    return run / 1e9, wait / 1e9


def runnable_wall(wall: float, ran: float, waited: float, cpu: float) -> float:
    """The wall time a stage would take on a machine with a free core: the measured span less the share its
    threads spent waiting for a CPU (a loaded machine), never below its own CPU time over the machine's cores."""
    share = ran / (ran + waited) if ran + waited > 0 else 1.0
    return max(wall * share, cpu / (os.cpu_count() or 1))


def machine_busy_sec() -> float:
    """Core-seconds every process of the machine spent so far (/proc/stat, not idle or iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS


async def sources(stack: BenchStack) -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    copy = make_test_pattern(DATA / "source-600s-720p.mp4", seconds=SOURCE_SEC, size="1280x720", fps=30,
                             gop_frames=60, video_bitrate="2M")
    speech = make_speech_video(DATA / "speech-60s-720p.mp4", SPEECH_TEXT, offset_sec=SPEECH_OFFSET_SEC, gap_sec=0.6,
                               seconds=SPEECH_SOURCE_SEC, size="1280x720")
    async with open_storage(stack.settings) as storage:
        await storage.ensure_bucket()
        await storage.put_file(KEYS["copy"], copy, "video/mp4", {"sha256": "bench"})
        await storage.put_file(KEYS["subtitled"], speech.path, "video/mp4", {"sha256": "bench"})


async def measure_kind(stack: BenchStack, runner: JobRunner, db: asyncpg.Connection, kind: str, jobs: int,
                       data_dir: Path) -> Profile:
    """`jobs` jobs of one kind one at a time (after a warm-up): core-seconds per stage process and per server,
    and each stage's span in job_events."""
    stage_pids = {c.name: c.pid for c in stack.children if c.name != "gateway"}
    shared_pids = server_pids(data_dir) + [c.pid for c in stack.children if c.name == "gateway"]
    cpu: dict[str, list[float]] = {}
    wall: dict[str, list[float]] = {}  # runnable_wall of each job
    measured: dict[str, list[float]] = {}  # the span in job_events
    servers: list[float] = []
    starts = [clip_range(900 + i, SOURCE_SEC)[0] for i in range(jobs + 1)] if kind == "copy" else \
        [STARTS_SEC[i % len(STARTS_SEC)] for i in range(jobs + 1)]
    for i, start in enumerate(starts):
        before = {name: cpu_seconds_of([pid]) for name, pid in stage_pids.items()}
        sched = {name: run_and_wait_sec(pid) for name, pid in stage_pids.items()}
        before_servers = cpu_seconds_of(shared_pids)
        response = await runner.http.post("/api/jobs", json=request(kind, start))
        response.raise_for_status()
        job_id = response.json()["id"]
        await runner.done(job_id, timeout=300)
        await asyncio.sleep(0.3)  # let the stages write their last events and go idle
        if i == 0:
            continue  # warm-up: models loaded, connections open, page cache
        spans = {r["stage"]: float(r["wall_sec"]) for r in await db.fetch(STAGE_SPANS, uuid.UUID(job_id))}
        for name, pid in stage_pids.items():
            if name in spans:
                used = cpu_seconds_of([pid]) - before[name]
                ran, waited = (now - then for now, then in zip(run_and_wait_sec(pid), sched[name], strict=True))
                cpu.setdefault(name, []).append(used)
                measured.setdefault(name, []).append(spans[name])
                wall.setdefault(name, []).append(runnable_wall(spans[name], ran, waited, used))
        servers.append(cpu_seconds_of(shared_pids) - before_servers)
    route = [s for s in STAGE_ORDER if s in wall]
    stages = tuple(StageCost(s, round(statistics.median(cpu[s]), 3), round(statistics.median(wall[s]), 3),
                             round(statistics.median(measured[s]), 3)) for s in route)
    return Profile(kind, stages, servers_cpu_sec=round(statistics.median(servers), 3),
                   nats_messages=len(stages) + 1)  # the entry publish, one per hop, the end event


async def validate(stack: BenchStack, runner: JobRunner, profile: Profile, jobs: int) -> dict[str, Any]:
    """Predict the local stack's throughput for copy jobs queued at once, then measure it. The cores the stack
    had are the machine's less what other processes used during the run (this machine is shared)."""
    ours = [c.pid for c in stack.children] + server_pids(Path(stack.settings.scratch_dir).parent)  # the data dir
    cores = os.cpu_count() or 1
    slots = stack.settings.worker_concurrency
    ours_before, busy_before = cpu_seconds_of(ours), machine_busy_sec()
    began = time.perf_counter()
    ids = []
    for i in range(jobs):
        response = await runner.http.post("/api/jobs", json=request("copy", clip_range(1200 + i, SOURCE_SEC)[0]))
        response.raise_for_status()
        ids.append(response.json()["id"])
    await asyncio.gather(*(runner.done(job_id, timeout=600) for job_id in ids))
    seconds = time.perf_counter() - began
    others = (machine_busy_sec() - busy_before) - (cpu_seconds_of(ours) - ours_before)
    free_cores = max(0.1, cores - others / seconds)
    nominal, nominal_bound = predicted_throughput(profile, cores, slots)
    loaded, loaded_bound = predicted_throughput(profile, free_cores, slots)
    measured = jobs / seconds
    return {
        "jobs": jobs, "slots_per_stage": slots, "cores": cores, "cores_left_by_other_processes": round(free_cores, 2),
        "predicted_per_min_idle_machine": round(nominal * 60, 1), "predicted_bound_idle_machine": nominal_bound,
        "predicted_per_min_cores_left": round(loaded * 60, 1), "predicted_bound_cores_left": loaded_bound,
        "measured_per_min": round(measured * 60, 1), "measured_over_predicted": round(measured / loaded, 2),
        "load_average": os.getloadavg()[0],
    }


async def measure(jobs: int, validate_jobs: int) -> dict[str, Any]:
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA) as work, bench_stack(Path(work).resolve() / "stack") as stack:
        data_dir = Path(work).resolve() / "stack"
        await sources(stack)
        settings = stack.settings
        db = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.db_schema})
        try:
            async with JobRunner(stack) as runner:
                profiles = {kind: await measure_kind(stack, runner, db, kind, jobs, data_dir)
                            for kind in ("copy", "subtitled")}
                check = await validate(stack, runner, profiles["copy"], validate_jobs) if validate_jobs else None
        finally:
            await db.close()
    return {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "jobs_per_kind": jobs,
            "load_average": os.getloadavg()[0], "asr_model": stack.settings.asr_model,
            "profiles": {k: asdict(p) for k, p in profiles.items()}, "validation": check}


def load_profiles(path: Path) -> dict[str, Profile]:
    raw = json.loads(path.read_text())["profiles"]
    return {kind: Profile(kind, tuple(StageCost(**s) for s in p["stages"]), p["servers_cpu_sec"], p["nats_messages"])
            for kind, p in raw.items()}


def default_assumptions() -> Assumptions:
    """The model's defaults, with the deployment's own numbers where the code has them (services/k8s.py)."""
    from services import k8s

    settings = load_settings({})
    return Assumptions(slots_per_replica=settings.worker_concurrency,
                       nats_replicas=max(3, settings.nats_stream_replicas),
                       db_pool_max=int(getattr(k8s, "DB_POOL_MAX", settings.db_pool_max)),
                       max_replicas=k8s.MAX_REPLICAS)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--copy-per-min", type=float, default=0.0, help="stream-copy clips per minute")
    parser.add_argument("--subtitled-per-min", type=float, default=0.0, help="clips with subtitles per minute")
    parser.add_argument("--gpu", action="store_true", help="the transcriber runs on GPUs (batched)")
    parser.add_argument("--profile", type=Path, default=PROFILE_PATH, help="stage costs (JSON) to plan with")
    parser.add_argument("--measure", action="store_true", help="measure the stage costs here first (writes --profile)")
    parser.add_argument("--jobs", type=int, default=4, help="--measure: jobs of each kind, one at a time")
    parser.add_argument("--validate", type=int, default=0, metavar="N",
                        help="--measure: then predict and measure N copy jobs queued at once")
    base = default_assumptions()
    for f in fields(Assumptions):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(base, f.name)),
                            default=getattr(base, f.name), help="assumption (default %(default)s)")
    args = parser.parse_args()
    if args.measure:
        measured = asyncio.run(measure(args.jobs, args.validate))
        args.profile.write_text(json.dumps(measured, indent=2) + "\n")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"capacity-{int(time.time())}.json").write_text(json.dumps(measured, indent=2))
        print(json.dumps(measured, indent=2))
    assumptions = Assumptions(**{f.name: getattr(args, f.name) for f in fields(Assumptions)})
    load = {"copy": args.copy_per_min / 60, "subtitled": args.subtitled_per_min / 60}
    load = {kind: rate for kind, rate in load.items() if rate > 0}
    if not load:
        return
    result = plan(load, load_profiles(args.profile), assumptions, gpu=args.gpu)
    print(json.dumps({"load_per_min": {k: v * 60 for k, v in load.items()}, "gpu": args.gpu,
                      "assumptions": asdict(assumptions), "plan": result.as_dict()}, indent=2))


if __name__ == "__main__":
    main()
