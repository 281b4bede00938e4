"""Prometheus metrics of a worker process, served over HTTP only when METRICS_PORT is set (0 = off)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from wsgiref.simple_server import WSGIServer

from prometheus_client import Gauge, Histogram, start_http_server

from shared.logs import get_logger

log = get_logger("metrics")
METRICS_ADDR = "0.0.0.0"  # scraped from outside the pod/host
ENCODE_BUCKETS_SEC = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)

VIDEO_ENCODER = Gauge(
    "clipjet_video_encoder", "H.264 encoder chosen at start-up (1 on the one in use)", ["encoder", "hardware"]
)
ENCODES_RUNNING = Gauge("clipjet_encodes_running", "Encodes this process runs now (holding a node slot)")
ENCODE_SECONDS = Histogram("clipjet_encode_seconds", "Wall time of one encode pass, s", buckets=ENCODE_BUCKETS_SEC)


def serve_metrics(port: int) -> WSGIServer | None:
    """Expose /metrics on `port` from a daemon thread; nothing (None) when the port is 0 or already taken (another
    worker process on the node serves it: logged, the worker runs on)."""
    if port <= 0:
        return None
    try:
        server, _ = start_http_server(port, addr=METRICS_ADDR)
    except OSError as exc:
        log.warning("metrics_port_unavailable", port=port, error=str(exc))
        return None
    log.info("metrics_serving", port=port)
    return server


def record_video_encoder(name: str, hardware: bool) -> None:
    VIDEO_ENCODER.labels(encoder=name, hardware=str(hardware).lower()).set(1)


@contextmanager
def encode_running() -> Iterator[None]:
    """Count the block as one running encode and time it."""
    started = time.perf_counter()
    ENCODES_RUNNING.inc()
    try:
        yield
    finally:
        ENCODES_RUNNING.dec()
        ENCODE_SECONDS.observe(time.perf_counter() - started)
