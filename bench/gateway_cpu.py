"""`python -m bench.gateway_cpu`: the gateway's CPU per request, next to its database + publish floor's.

On a shared machine requests per second say more about the neighbours than about the gateway; CPU seconds
per request do not (much). The stack is bench.gateway's (AUTH on, one key, the rate limit and quotas checked
on every request); the gateway runs `--processes` uvicorn processes (default 1). `wrk` (32 connections) drives
POST /api/jobs (an upload source) and GET /api/jobs/{id} (a done job, with signed URLs) for `--seconds`; the
gateway processes' user + system CPU over the run, divided by the requests answered, is its CPU per request.
The floor (a bare asyncpg INSERT + JetStream publish per POST, a bare asyncpg SELECT per GET, in a process of
its own) is measured the same way. `--profile DIR` also records each gateway process with py-spy (speedscope
files) during a second run of each kind. Two HTTP-only references (bench/hello.py: a bare ASGI app and a
one-handler Litestar app under the same uvicorn) show what HTTP and the framework alone cost per request.
`--ab` (a gateway without the raw routes) and `--base DIR` (the gateway of another tree, e.g. `git archive` of the
commit before) measure a second gateway on the same stack, interleaved round by round, so both share the same
minutes' load. wrk comes from Debian's `wrk` package; py-spy from the venv or PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from bench.cpu import CLOCK_TICKS
from bench.gateway import STOP_GRACE_SEC, Stack, run_floor, run_wrk, say, wait_started
from bench.gateway_target import gateway_target
from services.stack.devstack import free_port
from services.stack.supervisor import Child
from shared.settings import settings_env

PROC = Path("/proc")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (uvicorn's supervisor and its workers)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in (PROC / str(current) / "task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


def user_system(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds so far of these processes (/proc/<pid>/stat fields 14 and 15)."""
    user = system = 0.0
    for pid in pids:
        try:
            fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]) / CLOCK_TICKS, system + int(fields[12]) / CLOCK_TICKS
    return user, system


def fast_parts(pid: int) -> dict[str, bool]:
    """Whether the process has uvloop and httptools loaded (uvicorn imports each only when it runs with it)."""
    try:
        maps = (PROC / str(pid) / "maps").read_text()
    except OSError:
        return {"uvloop": False, "httptools": False}
    return {"uvloop": "/uvloop/" in maps, "httptools": "/httptools/" in maps}


def gateway_cpu(stack: Stack, method: str, url: str, body: dict[str, Any] | None, token: str, seconds: float,
                work: Path, profile: Path | None = None, gateway: Child | None = None) -> dict[str, float]:
    """One wrk run; the gateway's CPU µs per answered request (and the rate, for what it is worth). `gateway`:
    another gateway process than the stack's (the one `url` names)."""
    gateway = gateway or stack.gateway
    assert gateway is not None
    pids = descendants(gateway.proc.pid)
    spies = []
    if profile is not None:
        for pid in pids[1:] or pids:
            out = profile / f"{method.lower()}-{pid}.speedscope.json"
            spies.append(subprocess.Popen(
                [_py_spy(), "record", "--pid", str(pid), "--format",
                 "speedscope", "--output", str(out), "--duration", str(max(1, round(seconds))), "--rate", "200",
                 "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)
    before = user_system(pids)
    figure = run_wrk(url, method, body, token, seconds, work)
    user, system = (after - then for after, then in zip(user_system(pids), before, strict=True))
    used = user + system
    for spy in spies:
        spy.wait(timeout=seconds + 30)
    return {"cpu_us_per_req": round(used / max(1, figure.requests) * 1e6, 1),
            "system_share": round(system / used, 2) if used else 0.0, "requests": figure.requests,
            "req_per_s": round(figure.rate, 1), "p99_ms": round(figure.p99_ms, 1), "bad": figure.bad}


def _py_spy() -> str:
    """py-spy next to this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy") or str(beside)


def http_reference(app: str, seconds: float, work: Path) -> dict[str, float]:
    """An HTTP-only reference (bench/hello.py) under uvicorn as the gateway runs, one process: its CPU µs per GET."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"bench.hello:{app}", "--port", str(port), "--http", "httptools",
         "--loop", "uvloop", "--log-level", "warning", "--no-access-log"])
    try:
        url = f"http://127.0.0.1:{port}/api/jobs/0193a3c2-0000-7000-8000-000000000000"
        deadline = time.monotonic() + 30
        while subprocess.run(["curl", "-sf", "-o", "/dev/null", url]).returncode != 0:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"bench.hello:{app} did not start")
            time.sleep(0.2)
        run_wrk(url, "GET", None, None, 1, work)  # warm-up
        before = user_system([server.pid])
        figure = run_wrk(url, "GET", None, None, seconds, work)
        used = sum(user_system([server.pid])) - sum(before)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return {"cpu_us_per_req": round(used / max(1, figure.requests) * 1e6, 1), "req_per_s": round(figure.rate, 1)}


def floor_cpu(stack: Stack, kind: str, seconds: float, job_id: str) -> dict[str, float]:
    figure = run_floor(stack.settings, kind, seconds, job_id)
    return {"cpu_us_per_req": round(figure.cpu_sec / max(1, figure.requests) * 1e6, 1),
            "requests": figure.requests, "req_per_s": round(figure.rate, 1)}


def start_other_gateway(stack: Stack, name: str, argv: list[str],
                        env: dict[str, str] | None = None) -> tuple[Child, str]:
    """A second gateway (`argv`, with `env` added) on a port of its own, sharing the stack; its URL."""
    settings = msgspec.structs.replace(stack.settings, gateway_port=free_port())
    child = Child(name, argv, {**os.environ, **settings_env(settings), **(env or {})})
    base_url = f"http://127.0.0.1:{settings.gateway_port}"
    wait_started(child, base_url, f"the {name} gateway")
    return child, base_url


def other_gateways(stack: Stack, ab: bool, base: Path | None) -> dict[str, tuple[Child, str]]:
    """`plain`: every request through Litestar (bench/gateway_plain.py); `base`: `clipjet gateway` of another tree
    (`git archive` of an earlier commit, run with that tree's code only: `python -P`)."""
    others = {}
    if ab:
        others["plain"] = start_other_gateway(stack, "plain", [sys.executable, "-m", "bench.gateway_plain"])
    if base is not None:
        others["base"] = start_other_gateway(stack, "base", [sys.executable, "-P", "-m", "services", "gateway"],
                                             {"PYTHONPATH": str(base.resolve())})
    return others


def benchmark(seconds: float, runs: int, processes: int, profile: Path | None, ab: bool = False,
              base: Path | None = None, private_postgres: bool = False) -> dict[str, Any]:
    with gateway_target(processes, private_postgres=private_postgres) as target:
        stack, work, token, job_id, body = target.stack, target.work, target.token, target.job_id, target.post_body
        say("stack up, done job made")
        assert stack.gateway is not None
        pids = descendants(stack.gateway.proc.pid)
        parts = {pid: fast_parts(pid) for pid in (pids[1:] or pids)}  # uvicorn's workers (the process itself if 1)
        post_url, get_url = f"{stack.base_url}/api/jobs", f"{stack.base_url}/api/jobs/{job_id}"
        before = sum(user_system(pids))
        time.sleep(seconds)  # no requests: what the gateway spends on its own (timers, heartbeats)
        idle_ms_per_s = (sum(user_system(pids)) - before) / seconds * 1e3
        gateway_cpu(stack, "POST", post_url, body, token, 1, work)  # warm-up: caches, prepared statements
        gateway_cpu(stack, "GET", get_url, None, token, 1, work)
        rows: dict[str, list[dict[str, float]]] = {"post": [], "post_floor": [], "get": [], "get_floor": []}
        others = other_gateways(stack, ab, base)
        for name, (child, url) in others.items():  # their warm-up
            rows |= {f"post_{name}": [], f"get_{name}": []}
            gateway_cpu(stack, "POST", f"{url}/api/jobs", body, token, 1, work, gateway=child)
            gateway_cpu(stack, "GET", f"{url}/api/jobs/{job_id}", None, token, 1, work, gateway=child)
        for _ in range(runs):
            rows["post"].append(gateway_cpu(stack, "POST", post_url, body, token, seconds, work))
            rows["post_floor"].append(floor_cpu(stack, "post", seconds, job_id))
            rows["get"].append(gateway_cpu(stack, "GET", get_url, None, token, seconds, work))
            rows["get_floor"].append(floor_cpu(stack, "get", seconds, job_id))
            for name, (child, url) in others.items():
                rows[f"post_{name}"].append(gateway_cpu(stack, "POST", f"{url}/api/jobs", body, token, seconds,
                                                        work, gateway=child))
                rows[f"get_{name}"].append(gateway_cpu(stack, "GET", f"{url}/api/jobs/{job_id}", None, token,
                                                       seconds, work, gateway=child))
        for child, _ in others.values():
            child.stop(STOP_GRACE_SEC)
        for app in ("bare", "litestar"):
            rows[f"http_{app}"] = [http_reference(app, seconds, work) for _ in range(runs)]
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            gateway_cpu(stack, "POST", post_url, body, token, seconds, work, profile)
            gateway_cpu(stack, "GET", get_url, None, token, seconds, work, profile)
    out: dict[str, Any] = {"processes": processes, "seconds": seconds, "runs": runs, "serving_processes": parts,
                           "idle_cpu_ms_per_s": round(idle_ms_per_s, 1)}
    for name, series in rows.items():
        out[name] = {"cpu_us_per_req": statistics.median(r["cpu_us_per_req"] for r in series),
                     "system_share": statistics.median(r.get("system_share", 0.0) for r in series),
                     "req_per_s": statistics.median(r["req_per_s"] for r in series),
                     "bad": sum(r.get("bad", 0) for r in series)}
    for name in ("post", "get"):
        out[f"{name}_cpu_ratio"] = round(out[f"{name}_floor"]["cpu_us_per_req"] / out[name]["cpu_us_per_req"], 3)
        for other in [key.removeprefix(f"{name}_") for key in rows if key.startswith(f"{name}_")]:
            if other != "floor":
                out[f"{name}_{other}_cpu_ratio"] = round(
                    out[f"{name}_floor"]["cpu_us_per_req"] / out[f"{name}_{other}"]["cpu_us_per_req"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each wrk run, s")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (the median is reported)")
    parser.add_argument("--processes", type=int, default=1, help="GATEWAY_PROCESSES")
    parser.add_argument("--profile", type=Path, help="also record py-spy speedscope profiles into this folder")
    parser.add_argument("--ab", action="store_true",
                        help="also measure a gateway without the raw routes (bench/gateway_plain.py), interleaved")
    parser.add_argument("--base", type=Path,
                        help="also measure the gateway of this tree (`git archive` of an earlier commit), interleaved")
    parser.add_argument("--private-postgres", action="store_true",
                        help="a PostgreSQL server of its own (when the machine's is shared and out of connections)")
    args = parser.parse_args()
    print(json.dumps(benchmark(args.seconds, args.runs, args.processes, args.profile, args.ab, args.base,
                               args.private_postgres), indent=2))


if __name__ == "__main__":
    main()
