"""The ops port of a process (METRICS_PORT): Prometheus `/metrics`, `/livez` and `/readyz`, from a thread.

The server runs in daemon threads of its own, never on the event loop, so it answers while the loop is stuck:
`/livez` is 503 once the loop has not ticked for LIVENESS_STALL_SEC (a watchdog thread logs such a stall once,
with where the main thread is). `/readyz` is 200 once the process says it is ready (a worker: connected to NATS
and bound to its consumers) and while every readiness check passes; 503 while it drains after SIGTERM.

One thread per connection, at most OPS_MAX_CONNECTIONS at once (more are closed at once, without an answer), and a
connection that sends nothing for OPS_HANDLER_TIMEOUT_SEC is closed: idle or half-sent requests cannot pile up
threads. It listens on METRICS_HOST (all addresses by default; `clipjet stack` uses loopback).

The gateway's uvicorn processes record into prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR,
set by `clipjet gateway` before anything imports prometheus_client); its ops server adds them all up.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from shared.runtime.logs import get_logger

log = get_logger("ops")
OPS_HANDLER_TIMEOUT_SEC = 5.0  # a connection silent this long (reading its request or taking the answer) is closed
OPS_MAX_CONNECTIONS = 32  # connections served at once; more are closed unanswered (a scrape or probe retries)
TICK_SEC = 0.5  # the event loop marks itself alive this often
WATCHDOG_SEC = 1.0  # the watchdog thread looks this often
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Health:
    """This process's liveness (the event loop ticks) and readiness (started, not draining, checks pass)."""

    def __init__(self) -> None:
        self.stall_sec = 30.0
        self._ticked = time.monotonic()
        self._ready = False
        self._draining = False
        self._checks: dict[str, Callable[[], bool]] = {}

    def tick(self) -> None:
        self._ticked = time.monotonic()

    def stalled_sec(self) -> float:
        return time.monotonic() - self._ticked

    def live(self) -> tuple[bool, str]:
        stalled = self.stalled_sec()
        if stalled > self.stall_sec:
            return False, f"event loop stalled for {stalled:.1f} s"
        return True, "ok"

    def mark_ready(self) -> None:
        self._ready = True

    def mark_draining(self) -> None:
        self._draining = True

    def add_check(self, name: str, check: Callable[[], bool]) -> None:
        """A condition readiness also needs (read from the server's thread: it must not block)."""
        self._checks[name] = check

    def ready(self) -> tuple[bool, str]:
        if self._draining:
            return False, "draining"
        if not self._ready:
            return False, "starting"
        failing = [name for name, check in self._checks.items() if not check()]
        return (False, "not ready: " + ", ".join(failing)) if failing else (True, "ok")


HEALTH = Health()  # one per process


def ready_while_connected(nc: Any, health: Health = HEALTH) -> None:
    """The process is ready now, and stays so while its NATS client is connected."""
    health.add_check("nats", lambda: bool(nc.is_connected))
    health.mark_ready()


def metrics_registry() -> CollectorRegistry:
    """The registry a scrape reads: this process's, or every gateway process's files in multiprocess mode."""
    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def ops_app(health: Health, registry: CollectorRegistry, probes: bool) -> Callable[..., Iterable[bytes]]:
    """WSGI app: /metrics, and /livez + /readyz when `probes`."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if probes and path in ("/livez", "/readyz"):
            ok, why = health.live() if path == "/livez" else health.ready()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")])
            return [why.encode() + b"\n"]
        return metrics(environ, start_response)

    return app


class _QuietHandler(WSGIRequestHandler):
    timeout = OPS_HANDLER_TIMEOUT_SEC  # the connection's socket timeout (StreamRequestHandler.setup)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes are not logged (a probe every few seconds)."""


class OpsServer(ThreadingWSGIServer):
    """A thread per connection, at most OPS_MAX_CONNECTIONS of them; a connection over the cap is closed at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slots = threading.BoundedSemaphore(OPS_MAX_CONNECTIONS)
        self.refused = 0  # connections closed because every slot was taken
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:  # not a line per connection of a flood
                log.warning("ops_connections_full", max_connections=OPS_MAX_CONNECTIONS, refused=self.refused)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that timed out or went away is closed quietly; anything else is printed as usual."""
        if isinstance(sys.exc_info()[1], (TimeoutError, ConnectionError)):
            return
        super().handle_error(request, client_address)


def serve_ops(port: int, *, host: str = "0.0.0.0", probes: bool = True, health: Health = HEALTH) -> WSGIServer | None:
    """Serve the ops endpoints on `host`:`port` from a daemon thread; None when the port is 0 or already taken
    (another process on the node or dev machine has it: logged, the process runs on without)."""
    if port <= 0:
        return None
    try:
        server = make_server(host, port, ops_app(health, metrics_registry(), probes), OpsServer,
                             handler_class=_QuietHandler)
    except OSError as exc:
        log.warning("metrics_port_unavailable", port=port, error=str(exc))
        return None
    threading.Thread(target=server.serve_forever, name="ops-http", daemon=True).start()
    log.info("metrics_serving", host=host, port=port, probes=probes)
    return server


def watch_event_loop(stall_sec: float, health: Health = HEALTH) -> None:
    """Called on the running loop: tick `health` every TICK_SEC from the loop, and start the watchdog thread."""
    health.stall_sec = stall_sec
    loop = asyncio.get_running_loop()

    def tick() -> None:
        health.tick()
        loop.call_later(TICK_SEC, tick)

    tick()
    main = threading.main_thread().ident
    threading.Thread(target=_watchdog, args=(health, main), name="loop-watchdog", daemon=True).start()


def _watchdog(health: Health, thread_id: int | None) -> None:
    """Log a stall once (with the main thread's stack), and its end."""
    stalled = False
    while True:
        time.sleep(WATCHDOG_SEC)
        live, why = health.live()
        if not live and not stalled:
            frame = sys._current_frames().get(thread_id or 0)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
            log.error("event_loop_stalled", reason=why, stack=stack)
        elif live and stalled:
            log.info("event_loop_recovered")
        stalled = not live
