"""`python -m bench.gateway_profile`: where the gateway's CPU goes per hot request, by cProfile on a CPU clock.

The stack of bench.gateway_cpu (AUTH on, an upload source, a done job to read); one gateway process runs under
cProfile (`python -m bench.gateway_profile --serve`: `clipjet gateway` with GATEWAY_PROCESSES=1 and the profiler on
from its app factory to its exit) while wrk drives POST /api/jobs, then (another process) GET /api/jobs/{id}.
Prints each run's top functions by own and by cumulative CPU time, per request (µs); cProfile's own overhead
inflates every figure (compare shares, not absolute values, with bench.gateway_cpu).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import signal
import sys
import time
from pathlib import Path

import msgspec
from litestar.types import ASGIApp

from bench.gateway import STOP_GRACE_SEC, run_wrk, say, wait_started
from bench.gateway_target import gateway_target
from services.stack.devstack import free_port
from services.stack.supervisor import Child
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
    wait_started(child, base_url, "the profiled gateway")
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
    with gateway_target(1) as target:
        settings, token, work = target.stack.settings, target.token, target.work
        target.stack.stop_gateway()
        say("stack up, done job made")
        print(profile_run(settings, "POST", "/api/jobs", target.post_body, token, args.seconds, work, args.top))
        print(profile_run(settings, "GET", f"/api/jobs/{target.job_id}", None, token, args.seconds, work, args.top))


if __name__ == "__main__":
    main()
