"""OpenTelemetry spans for a job's way through the gateway, NATS, every stage and S3 (one trace per job).

Tracing is on once `use_provider` installed a TracerProvider of the SDK (`start` does, through
`shared.runtime.tracing_export`, when OTEL_EXPORTER_OTLP_ENDPOINT is set). Off, nothing here starts a span: each
helper checks `active()` (one attribute read) and hands back a shared null context, the gateway adds no
middleware, S3 calls get no hooks, no trace headers are written, and the SDK is never imported.

The trace context travels in NATS message headers (W3C `traceparent`/`tracestate`): a publish is a PRODUCER
span whose context is injected into the message, a stage's handling of the message a CONSUMER span that is its
child. A message published without those headers (the queue contract is public) starts a new trace.
Every span carries the job id (`clipjet.job_id`): given where it is known, else taken from `bind_job`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from shared.settings import Settings

JOB_ID = "clipjet.job_id"  # the attribute naming the job on every span
BATCH_ID = "clipjet.batch_id"  # a batch request's span names its batch and ...
JOB_IDS = "clipjet.job_ids"  # ... every job it made (each job's own spans name the job)
STAGE = "clipjet.stage"
OUTCOME = "clipjet.outcome"  # how a stage message ended (ok, retry, failed_<code>, ...)
TRACER_NAME = "clipjet"
MESSAGING_SYSTEM = "nats"
_FAILED_OUTCOMES = ("failed_", "runtime_error")  # outcomes that mark a consumer span as an error
_NULL = nullcontext()
P = ParamSpec("P")
R = TypeVar("R")
_tracer = trace.get_tracer(TRACER_NAME)  # a proxy: follows the provider installed later
_TRACE_CONTEXT = TraceContextTextMapPropagator()  # reads an untrusted caller's traceparent (only that: no baggage)
_job_id: ContextVar[str | None] = ContextVar("clipjet_trace_job_id", default=None)


def start(settings: Settings, service: str) -> bool:
    """Turn tracing on for this process when OTEL_EXPORTER_OTLP_ENDPOINT is set (the SDK is imported only
    then); whether it is on."""
    if not settings.otel_exporter_otlp_endpoint:
        return False
    from shared.runtime.tracing_export import start_exporting

    return start_exporting(settings, service)


class _Switch:
    """Whether this process traces: one attribute read on every hot path (the API's own provider lookup reads
    the environment each time)."""

    on = False


def use_provider(provider: TracerProvider | None) -> None:
    """Trace into `provider` from now on (an SDK TracerProvider); None: stop tracing. The API takes the first
    provider a process sets and keeps it."""
    if provider is not None and trace.get_tracer_provider() is not provider:
        trace.set_tracer_provider(provider)
    _Switch.on = provider is not None


def active() -> bool:
    """Whether tracing is on (`use_provider`): when off, every helper here does nothing."""
    return _Switch.on


def current_job_id() -> str | None:
    """The job the running code works for (`bind_job`), for spans that are not told it."""
    return _job_id.get()


def bind_job(job_id: str) -> None:
    """From here on (this task's context) spans name `job_id`; the current span too."""
    if not active():
        return
    _job_id.set(job_id)
    trace.get_current_span().set_attribute(JOB_ID, job_id)


def bind_batch(batch_id: str, job_ids: list[str]) -> None:
    """The current span (a batch request's) names the batch and the jobs it made."""
    if not active():
        return
    span = trace.get_current_span()
    span.set_attribute(BATCH_ID, batch_id)
    span.set_attribute(JOB_IDS, job_ids)


def producer_span(subject: str, job_id: str | None, headers: dict[str, str]) -> AbstractContextManager[Any]:
    """A PRODUCER span around one publish of `job_id`'s message (None: the bound job's) to `subject`; its context
    is written into `headers`."""
    if not active():
        return _NULL
    return _producer_span(subject, job_id, headers)


@contextmanager
def _producer_span(subject: str, job_id: str | None, headers: dict[str, str]) -> Iterator[Span]:
    attributes = _with_job({"messaging.system": MESSAGING_SYSTEM, "messaging.operation.type": "send",
                            "messaging.destination.name": subject})
    if job_id is not None:
        attributes[JOB_ID] = job_id
    with _tracer.start_as_current_span(f"send {subject}", kind=SpanKind.PRODUCER, attributes=attributes) as span:
        propagate.inject(headers)
        yield span


def consumer_span(stage: str, subject: str, headers: Mapping[str, str] | None,
                  attempt: int) -> AbstractContextManager[Any]:
    """A CONSUMER span for handling one message, the child of the publish that sent it (its headers' context);
    a new trace when the message carries none. Current while the stage works, so its S3 calls and publishes
    nest under it."""
    if not active():
        return _NULL
    return _consumer_span(stage, subject, headers, attempt)


@contextmanager
def _consumer_span(stage: str, subject: str, headers: Mapping[str, str] | None, attempt: int) -> Iterator[Span]:
    parent = propagate.extract(headers or {})
    attributes = {"messaging.system": MESSAGING_SYSTEM, "messaging.operation.type": "process",
                  "messaging.destination.name": subject, "messaging.nats.delivery_count": attempt, STAGE: stage}
    token = _job_id.set(None)  # set by bind_job once the message is decoded
    try:
        with _tracer.start_as_current_span(f"process {stage}", context=parent, kind=SpanKind.CONSUMER,
                                           attributes=attributes) as span:
            yield span
    finally:
        _job_id.reset(token)


def record_outcome(outcome: str) -> None:
    """Name how the current unit of work ended; failures mark the span as an error."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute(OUTCOME, outcome)
    if outcome.startswith(_FAILED_OUTCOMES):
        span.set_status(Status(StatusCode.ERROR, outcome))


def child_span(name: str, **attributes: str | int | float | bool) -> AbstractContextManager[Any]:
    """An INTERNAL span for a step of the current unit of work (an ffmpeg run, a transcription); nothing when
    no traced work is running (a step is never the root of a trace)."""
    if not active() or not trace.get_current_span().is_recording():
        return _NULL
    return _tracer.start_as_current_span(name, attributes=_with_job(attributes))


def traced(name: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate an async step (e.g. `run_ffmpeg`) so each call is a `child_span` called `name`."""
    def decorate(step: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(step)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with child_span(name):
                return await step(*args, **kwargs)
        return run
    return decorate


def _with_job(attributes: dict[str, Any]) -> dict[str, Any]:
    job_id = _job_id.get()
    return attributes if job_id is None else {**attributes, JOB_ID: job_id}


def start_client_span(name: str, attributes: dict[str, Any]) -> Span | None:
    """A CLIENT span (not made current) for a call to another service, ended by the caller; None when no traced
    work is running (S3 calls at start-up or in the reaper's sweeps are not traced)."""
    if not active() or not trace.get_current_span().is_recording():
        return None
    return _tracer.start_span(name, kind=SpanKind.CLIENT, attributes=_with_job(attributes))


def start_server_span(
    name: str, headers: Mapping[str, str], attributes: dict[str, Any], trust_caller: bool
) -> AbstractContextManager[Span]:
    """The SERVER span of one HTTP request: the child of the caller's `traceparent` when the caller is trusted;
    else the root of a new trace (sampled by this side alone) with a link to the caller's span, if it sent one."""
    if trust_caller:
        return _tracer.start_as_current_span(name, context=propagate.extract(headers), kind=SpanKind.SERVER,
                                             attributes=attributes)
    caller = trace.get_current_span(_TRACE_CONTEXT.extract({"traceparent": headers.get("traceparent", "")}))
    links = [Link(caller.get_span_context())] if caller.get_span_context().is_valid else []
    return _tracer.start_as_current_span(name, context=Context(), kind=SpanKind.SERVER, attributes=attributes,
                                         links=links)
