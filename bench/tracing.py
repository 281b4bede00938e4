"""`python -m bench.tracing`: the gateway's CPU per POST /api/jobs with tracing off, on, and (with
`--baseline-repo`) in a checkout without tracing code, side by side.

One gateway process (GATEWAY_PROCESSES=1), `wrk` POSTing jobs (bench.gateway's stack, key, upload and wrk
script), workers idle. CPU seconds of the gateway process over each run / requests answered = CPU per request;
each figure is the median of `--runs` rounds, the phases interleaved (their order rotating) round by round.
"on" exports every span to an OTLP/HTTP sink here that answers 200 (the SDK's batch processor and the export are
in the figure).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec

from bench.cpu import cpu_seconds_of
from bench.gateway import STOP_GRACE_SEC, run_wrk, say, wait_started
from bench.gateway_target import gateway_target
from services.stack.devstack import free_port
from services.stack.supervisor import Child
from shared.settings import Settings, settings_env


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def otlp_sink() -> Iterator[str]:
    """An OTLP/HTTP endpoint on loopback that takes every export (its base URL)."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@contextmanager
def gateway(settings: Settings, repo: Path | None) -> Iterator[Child]:
    """One gateway process of this checkout, or of `repo` (its code only: PYTHONSAFEPATH keeps this folder out)."""
    env = {**os.environ, **settings_env(settings)}
    if repo is not None:
        env |= {"PYTHONPATH": str(repo), "PYTHONSAFEPATH": "1"}
    child = Child("gateway", [sys.executable, "-m", "services", "gateway"], env)
    url = f"http://127.0.0.1:{settings.gateway_port}"
    try:
        wait_started(child, url)
        yield child
    finally:
        child.stop(STOP_GRACE_SEC)


def cpu_per_request_us(child: Child, url: str, body: dict[str, Any], token: str, seconds: float,
                       work: Path) -> tuple[float, float]:
    """(gateway CPU µs per answered request, requests/s) over one wrk run."""
    before = cpu_seconds_of([child.pid])
    figure = run_wrk(url, "POST", body, token, seconds, work)
    used = cpu_seconds_of([child.pid]) - before
    return used / max(1.0, figure.rate * seconds) * 1e6, figure.rate


def benchmark(seconds: float, runs: int, baseline: Path | None) -> dict[str, Any]:
    with gateway_target(1, done_job=False) as target, otlp_sink() as sink:  # migrations, the key and the upload
        stack, work, token, body = target.stack, target.work, target.token, target.post_body
        stack.stop_gateway()
        phases: dict[str, tuple[Settings, Path | None]] = {
            "off": (stack.settings, None),
            "on": (msgspec.structs.replace(stack.settings, otel_exporter_otlp_endpoint=sink), None),
        }
        if baseline is not None:
            phases["baseline"] = (stack.settings, baseline)
        cpu: dict[str, list[float]] = {name: [] for name in phases}
        rate: dict[str, list[float]] = {name: [] for name in phases}
        names = list(phases)
        for round_ in range(runs):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:  # each phase leads a round
                settings, repo = phases[name]
                with gateway(settings, repo) as child:
                    us, per_sec = cpu_per_request_us(child, f"{stack.base_url}/api/jobs", body, token, seconds, work)
                cpu[name].append(us)
                rate[name].append(per_sec)
                say(f"{name}: {us:.0f} µs CPU per request, {per_sec:.0f} requests/s")
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds_per_run": seconds, "runs": runs,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_us_per_post": {name: round(statistics.median(v)) for name, v in cpu.items()},
        "posts_per_sec": {name: round(statistics.median(v)) for name, v in rate.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each load run, s")
    parser.add_argument("--runs", type=int, default=3, help="rounds per figure (the median is reported)")
    parser.add_argument("--baseline-repo", type=Path, help="a checkout without tracing (e.g. the main branch)")
    args = parser.parse_args()
    print(json.dumps(benchmark(args.seconds, args.runs, args.baseline_repo), indent=2))


if __name__ == "__main__":
    main()
