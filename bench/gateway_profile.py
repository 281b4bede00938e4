"""`python -m bench.gateway_profile`: where the gateway's CPU goes per hot request, by cProfile on a CPU clock.

The stack of bench.gateway_cpu (AUTH on, an upload source, a done job to read); one gateway process runs under
cProfile (`python -m bench.gateway_profile --serve`: `clipjet gateway` with GATEWAY_PROCESSES=1 and the profiler on
from its app factory to its exit) while wrk drives POST /api/jobs, then (another process) GET /api/jobs/{id}.
Prints each run's top functions by own and by cumulative CPU time, per request (µs); cProfile's own overhead
inflates every figure (compare shares, not absolute values, with bench.gateway_cpu).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec
from litestar.types import ASGIApp

from bench.gateway import (
    CLIP,
    DATA,
    GATEWAY_START_SEC,
    SOURCE_SEC,
    STOP_GRACE_SEC,
    _done_job,
    _prepare,
    gateway_stack,
    run_wrk,
    say,
)
from services.stack.devstack import free_port
from services.stack.localstack import healthy
from services.stack.supervisor import Child
from shared.media.testpattern import make_test_pattern
from shared.settings import load_settings, settings_env

OUT_ENV = "CLIPJET_BENCH_PROFILE_OUT"


def profiled_app() -> ASGIApp:
    """uvicorn's factory in the served process: the gateway's app; SIGUSR1 starts the profiler, SIGUSR2 stops it
    and writes its stats (so start-up and warm-up are left out)."""
    from services.gateway.app import app_from_environment

    profiler = cProfile.Profile(time.process_time)

    def stop(*_: object) -> None:
        profiler.disable()
        profiler.dump_stats(os.environ[OUT_ENV])

    signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
    signal.signal(signal.SIGUSR2, stop)
    return app_from_environment()


def serve() -> None:
    from services.cli import _run_gateway

    _run_gateway(load_settings(), factory="bench.gateway_profile:profiled_app")


def profile_run(stack_settings: object, method: str, path: str, body: dict[str, object] | None, token: str,
                seconds: float, work: Path, top: int) -> str:
    settings = msgspec.structs.replace(stack_settings, gateway_port=free_port(), gateway_processes=1)  # type: ignore[type-var]
    out = work / f"{method.lower()}.pstats"
    child = Child("profiled", [sys.executable, "-m", "bench.gateway_profile", "--serve"],
                  {**os.environ, **settings_env(settings), OUT_ENV: str(out)})
    base_url = f"http://127.0.0.1:{settings.gateway_port}"
    deadline = time.monotonic() + GATEWAY_START_SEC
    with httpx.Client() as http:
        while not healthy(http, base_url):
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the profiled gateway did not start: {child.describe_exit()}")
            time.sleep(0.2)
    run_wrk(f"{base_url}{path}", method, body, token, 1, work)  # warm-up
    child.proc.send_signal(signal.SIGUSR1)
    figure = run_wrk(f"{base_url}{path}", method, body, token, seconds, work)
    child.proc.send_signal(signal.SIGUSR2)
    while not out.exists():
        time.sleep(0.1)
    time.sleep(0.5)
    child.stop(STOP_GRACE_SEC)
    requests = max(1, figure.requests)
    text = io.StringIO()
    stats = pstats.Stats(str(out), stream=text)
    text.write(f"== {method} {path}: {figure.requests} requests profiled, "
               f"total CPU {stats.total_tt:.2f} s, ~{stats.total_tt / requests * 1e6:.0f} µs/request with "
               f"cProfile's overhead\n")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_profile", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    DATA.mkdir(parents=True, exist_ok=True)
    source = make_test_pattern(DATA / f"source-{SOURCE_SEC}s-360p.mp4", seconds=SOURCE_SEC)
    with (tempfile.TemporaryDirectory(dir=DATA.resolve()) as tmp,
          gateway_stack(Path(tmp) / "stack") as stack):
        work = Path(tmp)
        stack.settings = msgspec.structs.replace(stack.settings, gateway_processes=1)
        stack.start_gateway()
        token, key = asyncio.run(_prepare(stack, source))
        stack.start_workers()
        job_id = asyncio.run(_done_job(stack, token, key))
        stack.stop_workers()
        stack.stop_gateway()
        say("stack up, done job made")
        body = {"source": {"type": "upload", "key": key}, "startSec": CLIP[0], "endSec": CLIP[1],
                "precision": "keyframe"}
        print(profile_run(stack.settings, "POST", "/api/jobs", body, token, args.seconds, work, args.top))
        print(profile_run(stack.settings, "GET", f"/api/jobs/{job_id}", None, token, args.seconds, work, args.top))


if __name__ == "__main__":
    main()
