"""Every Prometheus metric a clipjet process exports, and the small helpers that record them.

The families are module-level (one registry per process, served by shared/runtime/ops.py). Label values are bounded:
stage and priority names, outcome words, error codes, S3 operation names, route templates (never raw paths).
In the gateway (several uvicorn processes) prometheus_client runs in multiprocess mode; a gauge there says how
processes add up (`multiprocess_mode`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

ENCODE_BUCKETS_SEC = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
STAGE_BUCKETS_SEC = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
CLAIM_BUCKETS_SEC = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
S3_BUCKETS_SEC = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
HTTP_BUCKETS_SEC = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5)
_STARTED_KEY = "clipjet_started"  # where an S3 call's start time waits in botocore's per-request context

# --- encoder (services/encoder) ---
VIDEO_ENCODER = Gauge(
    "clipjet_video_encoder", "H.264 encoder chosen at start-up (1 on the one in use)", ["encoder", "hardware"],
    multiprocess_mode="max",
)
ENCODES_RUNNING = Gauge("clipjet_encodes_running", "Encodes this process runs now (holding a node slot)",
                        multiprocess_mode="livesum")
ENCODE_SECONDS = Histogram("clipjet_encode_seconds", "Wall time of one encode pass, s", buckets=ENCODE_BUCKETS_SEC)

# --- every stage worker (shared/runtime/worker.py) ---
STAGE_MESSAGES = Counter(
    "clipjet_stage_messages", "Messages a stage worker finished handling, by outcome (ok, retry, failed, canceled, "
    "skipped, handed_back, runtime_error, invalid) and error code", ["stage", "priority", "outcome", "code"],
)
STAGE_SECONDS = Histogram("clipjet_stage_seconds", "Wall time of one message in a stage, s", ["stage", "priority"],
                          buckets=STAGE_BUCKETS_SEC)
CLAIM_SECONDS = Histogram(
    "clipjet_stage_claim_seconds", "Publish of a message to its first pull by a worker, s (first deliveries only)",
    ["stage", "priority"], buckets=CLAIM_BUCKETS_SEC,
)
REDELIVERIES = Counter("clipjet_stage_redeliveries", "Messages pulled again (delivery 2 or later)",
                       ["stage", "priority"])

# --- queue depth (read by the reaper every QUEUE_DEPTH_INTERVAL_SEC) ---
QUEUE_MESSAGES = Gauge(
    "clipjet_queue_messages", "Messages of a stage consumer: pending (not yet delivered) or ack_pending (in flight)",
    ["stage", "priority", "state"], multiprocess_mode="max",
)

# --- object storage (shared/storage/s3.py, botocore event hooks) ---
S3_SECONDS = Histogram("clipjet_s3_request_seconds", "One S3 API call, botocore's retries included, s",
                       ["operation", "outcome"], buckets=S3_BUCKETS_SEC)  # ok|client_error|server_error|network
S3_RETRIES = Counter("clipjet_s3_retries", "S3 requests botocore sent again (throttles, 5xx, connection errors)",
                     ["operation"])

# --- speech recognition (services/transcriber) ---
ASR_REALTIME_FACTOR = Histogram("clipjet_asr_realtime_factor", "Transcription wall time / audio duration (< 1: "
                                "faster than real time)", ["engine", "model"], buckets=RTF_BUCKETS)

# --- scratch quota (shared/storage/scratch.py) ---
SCRATCH_USED = Gauge("clipjet_scratch_used_bytes", "Bytes reserved on this process's scratch volume (all its "
                     "processes' reservations)", multiprocess_mode="max")
SCRATCH_QUOTA = Gauge("clipjet_scratch_quota_bytes", "The scratch volume's quota (NVME_SCRATCH_GB)",
                      multiprocess_mode="max")

# --- gateway (services/gateway/observe.py) ---
HTTP_REQUESTS = Counter("clipjet_http_requests", "Gateway requests by route template, method and status",
                        ["route", "method", "status"])
HTTP_SECONDS = Histogram("clipjet_http_request_seconds", "Gateway request latency to the last body byte, s",
                         ["route", "method"], buckets=HTTP_BUCKETS_SEC)


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


def split_outcome(outcome: str) -> tuple[str, str]:
    """The worker's outcome word (`failed_source_not_found`, `retry_source_unreachable`, `skipped_done`) →
    (outcome, code)."""
    for prefix in ("failed", "retry", "skipped"):
        if outcome.startswith(prefix + "_"):
            return prefix, outcome[len(prefix) + 1:]
    return outcome, ""


def record_claim(stage: str, priority: str, delivered: int, published_at: float) -> None:
    """A message was pulled: its first pull's wait since publish, or one more redelivery."""
    if delivered > 1:
        REDELIVERIES.labels(stage, priority).inc()
    else:
        CLAIM_SECONDS.labels(stage, priority).observe(max(0.0, time.time() - published_at))


def record_stage_message(stage: str, priority: str, outcome: str, seconds: float) -> None:
    word, code = split_outcome(outcome)
    STAGE_MESSAGES.labels(stage, priority, word, code).inc()
    STAGE_SECONDS.labels(stage, priority).observe(seconds)


def observe_s3(events: Any) -> None:
    """Time every S3 API call of a botocore/aiobotocore client and count its retries (its event hooks)."""

    def before(context: MutableMapping[str, Any], **_: Any) -> None:
        context[_STARTED_KEY] = time.perf_counter()

    def after(context: MutableMapping[str, Any], event_name: str, http_response: Any = None, parsed: Any = None,
              exception: BaseException | None = None, **_: Any) -> None:
        started = context.pop(_STARTED_KEY, None)
        if started is None:
            return
        operation = event_name.rsplit(".", 1)[-1]
        S3_SECONDS.labels(operation, _s3_outcome(http_response, exception)).observe(time.perf_counter() - started)
        meta = parsed.get("ResponseMetadata", {}) if isinstance(parsed, dict) else {}
        if retries := meta.get("RetryAttempts", 0):
            S3_RETRIES.labels(operation).inc(retries)

    events.register("before-call.s3", before)
    events.register("after-call.s3", after)
    events.register("after-call-error.s3", after)


def _s3_outcome(http_response: Any, exception: BaseException | None) -> str:
    """ok (2xx/3xx), client_error (4xx: a missing key too), server_error (5xx) or network (no answer)."""
    status = getattr(http_response, "status_code", None)
    if exception is not None or status is None:
        return "network"
    return "ok" if status < 400 else "client_error" if status < 500 else "server_error"


def record_asr(engine: str, model: str, audio_sec: float, wall_sec: float) -> None:
    if audio_sec > 0:
        ASR_REALTIME_FACTOR.labels(engine, model).observe(wall_sec / audio_sec)


def record_scratch(used_bytes: int, quota_bytes: int) -> None:
    SCRATCH_USED.set(used_bytes)
    SCRATCH_QUOTA.set(quota_bytes)
