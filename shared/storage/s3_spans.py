"""A CLIENT span per S3 call made while a job's work is traced (botocore's call events; retries inside one)."""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import Status, StatusCode

from shared.runtime import tracing

SPAN_KEY = "clipjet_span"  # where the call's span waits in botocore's request context between its events
ERROR_STATUS = 400  # an HTTP status from here on fails the span ...
NOT_FOUND_STATUS = 404  # ... except "no such key": a HEAD asking whether work is done expects it


def trace_calls(client: Any) -> None:
    """Register the span hooks on an aiobotocore S3 client (when tracing is on; else nothing is registered)."""
    if not tracing.active():
        return
    client.meta.events.register("before-call.s3", _before_call)
    client.meta.events.register("after-call.s3", _after_call)
    client.meta.events.register("after-call-error.s3", _after_error)


def _before_call(model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    attributes = {"rpc.system": "aws-api", "rpc.service": "S3", "rpc.method": model.name,
                  "http.request.method": params.get("method", ""), "url.path": params.get("url_path", "")}
    span = tracing.start_client_span(f"S3.{model.name}", attributes)
    if span is not None:
        context[SPAN_KEY] = span


def _after_call(http_response: Any, context: dict[str, Any], **_: Any) -> None:
    span = context.pop(SPAN_KEY, None)
    if span is None:
        return
    span.set_attribute("http.response.status_code", http_response.status_code)
    if http_response.status_code >= ERROR_STATUS and http_response.status_code != NOT_FOUND_STATUS:
        span.set_status(Status(StatusCode.ERROR, f"HTTP {http_response.status_code}"))
    span.end()


def _after_error(exception: BaseException, context: dict[str, Any], **_: Any) -> None:
    span = context.pop(SPAN_KEY, None)
    if span is None:
        return
    span.record_exception(exception)
    span.set_status(Status(StatusCode.ERROR, type(exception).__name__))
    span.end()
