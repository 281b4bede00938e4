"""CPU cost of the gateway's per-request observation layer (services/gateway/observe.py): request id, metrics in
prometheus_client multiprocess mode (as `clipjet gateway` runs them) and the JSON request log line.

`python -m bench.observe_overhead [requests]` drives a bare ASGI app with and without the layer, in one process
(no sockets), and prints the microseconds it adds per request. Log lines go to /dev/null.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from typing import Any

DEFAULT_REQUESTS = 20_000


async def _bare_app(scope: Any, receive: Any, send: Any) -> None:
    scope["path_template"] = "/api/jobs/{job_id}"
    scope["path_params"] = {"job_id": "0190f6a4-0000-7000-8000-000000000000"}
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def _drive(app: Any, requests: int) -> float:
    """Seconds of CPU per request through `app`."""
    scope = {"type": "http", "method": "GET", "path": "/api/jobs/0190f6a4-0000-7000-8000-000000000000",
             "headers": [(b"x-request-id", b"bench-1"), (b"authorization", b"Bearer x")]}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    started = time.process_time()
    for _ in range(requests):
        await app(dict(scope), receive, send)
    return (time.process_time() - started) / requests


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_REQUESTS
    with tempfile.TemporaryDirectory() as folder, open(os.devnull, "w") as null:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # before prometheus_client is imported
        sys.stderr = null  # the request log lines
        from services.gateway.observe import observed
        from shared.runtime.logs import configure_logging

        configure_logging("info", json=True)
        bare = asyncio.run(_drive(_bare_app, requests))
        wrapped = asyncio.run(_drive(observed(_bare_app), requests))
        sys.stderr = sys.__stderr__
    print(f"requests {requests}: bare {bare * 1e6:.1f} µs, observed {wrapped * 1e6:.1f} µs, "
          f"added {(wrapped - bare) * 1e6:.1f} µs per request (CPU)")


if __name__ == "__main__":
    main()
