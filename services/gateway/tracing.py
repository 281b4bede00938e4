"""ASGI middleware: one SERVER span per request (installed only when tracing is on: shared/tracing.py)."""

from __future__ import annotations

from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry.trace import Status, StatusCode

from shared import tracing

PROPAGATED_HEADERS = (b"traceparent", b"tracestate", b"baggage")  # a caller's trace context, W3C
SERVER_ERROR_STATUS = 500  # a response status from here on fails the span
JOB_ID_PARAM = "job_id"  # routes naming a job in their path (/api/jobs/{job_id})
UNTRACED_PATHS = frozenset({"/health", "/livez", "/readyz", "/metrics"})  # probes and scrapes: no job, only noise


def request_spans(app: ASGIApp) -> ASGIApp:
    """A span per HTTP request named `<method> <route>`, the child of the caller's `traceparent` when sent; the
    job it names (path) or makes (`tracing.bind_job` in the handler) is on it."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACED_PATHS:
            await app(scope, receive, send)
            return
        status = 0

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        route = scope.get("path_template") or scope["path"]  # type: ignore[misc]
        method = scope["method"]  # type: ignore[typeddict-item]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in PROPAGATED_HEADERS}
        attributes: dict[str, Any] = {"http.request.method": method, "http.route": route, "url.path": scope["path"]}
        with tracing.start_server_span(f"{method} {route}", headers, attributes) as span:
            job_id = (scope.get("path_params") or {}).get(JOB_ID_PARAM)
            if job_id:
                tracing.bind_job(str(job_id))
            await app(scope, receive, send_traced)
            span.set_attribute("http.response.status_code", status)
            if status >= SERVER_ERROR_STATUS:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))

    return middleware
