"""Install the OpenTelemetry SDK and export spans over OTLP/HTTP, when OTEL_EXPORTER_OTLP_ENDPOINT is set.

Imported only then (and by tests): a process with tracing off never loads the SDK. The exporter's other
standard variables (OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_BSP_SCHEDULE_DELAY, ...) are
read by the SDK itself.
"""

from __future__ import annotations

import os

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from shared.runtime import tracing
from shared.runtime.logs import get_logger
from shared.settings import Settings

SERVICE_PREFIX = "clipjet-"  # a process's service.name is clipjet-<service> (gateway, fetch, reaper, ...)
TRACES_PATH = "/v1/traces"  # appended to OTEL_EXPORTER_OTLP_ENDPOINT, as the OTLP specification says
log = get_logger("tracing")


class JobIdProcessor(SpanProcessor):
    """Puts the bound job id (`tracing.bind_job`) on every span started while it is bound, whoever starts it."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        job_id = tracing.current_job_id()
        if job_id is not None and not (span.attributes or {}).get(tracing.JOB_ID):
            span.set_attribute(tracing.JOB_ID, job_id)


def new_provider(service: str, processor: SpanProcessor) -> TracerProvider:
    """A TracerProvider for `service` whose spans go to `processor` (tests pass an in-memory exporter's)."""
    name = os.environ.get("OTEL_SERVICE_NAME") or SERVICE_PREFIX + service
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(JobIdProcessor())
    provider.add_span_processor(processor)
    return provider


def traces_url(endpoint: str) -> str:
    """OTEL_EXPORTER_OTLP_ENDPOINT is the collector's base URL; traces go to <base>/v1/traces."""
    return endpoint.rstrip("/") + TRACES_PATH


def start_exporting(settings: Settings, service: str) -> bool:
    """Install the SDK for this process, exporting in batches to OTEL_EXPORTER_OTLP_ENDPOINT (flushed at exit).
    False (and nothing installed) when no endpoint is set."""
    if not settings.otel_exporter_otlp_endpoint:
        return False
    exporter = OTLPSpanExporter(endpoint=traces_url(settings.otel_exporter_otlp_endpoint))
    tracing.use_provider(new_provider(service, BatchSpanProcessor(exporter)))
    log.info("tracing_on", endpoint=settings.otel_exporter_otlp_endpoint, service=SERVICE_PREFIX + service)
    return True
