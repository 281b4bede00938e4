"""ASGI middleware: one SERVER span per request (installed only when tracing is on: shared/runtime/tracing.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry.trace import Status, StatusCode

from shared.runtime import tracing

from .proxies import peer_trusted

PROPAGATED_HEADERS = (b"traceparent", b"tracestate", b"baggage")  # a caller's trace context, W3C
HEADER_MAX_CHARS = {b"traceparent": 512, b"tracestate": 512, b"baggage": 8192}  # longer: ignored (the W3C limits;
# the propagators would log a warning for each such request)
SERVER_ERROR_STATUS = 500  # a response status from here on fails the span
JOB_ID_PARAM = "job_id"  # routes naming a job in their path (/api/jobs/{job_id})
UNTRACED_PATHS = frozenset({"/health", "/livez", "/readyz", "/metrics"})  # probes and scrapes: no job, only noise


def caller_context(scope: Scope) -> dict[str, str]:
    """The caller's W3C trace headers, each within its length limit."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
            if k in PROPAGATED_HEADERS and len(v) <= HEADER_MAX_CHARS[k]}


def request_spans(trust_client_context: bool) -> Callable[[ASGIApp], ASGIApp]:
    """Middleware: a span per HTTP request named `<method> <route>`; the job it names (path) or makes
    (`tracing.bind_job` in the handler) is on it. It is the child of the caller's `traceparent` only when the
    caller is trusted (`trust_client_context`, OTEL_TRUST_CLIENT_CONTEXT, or a peer in GATEWAY_TRUSTED_PROXIES);
    another caller's context is only a link of a new trace (it can neither force sampling nor join a trace)."""
    return functools.partial(span_per_request, trust_client_context=trust_client_context)


def span_per_request(app: ASGIApp, trust_client_context: bool) -> ASGIApp:
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
        attributes: dict[str, Any] = {"http.request.method": method, "http.route": route, "url.path": scope["path"]}
        trusted = trust_client_context or peer_trusted(scope)
        with tracing.start_server_span(f"{method} {route}", caller_context(scope), attributes, trusted) as span:
            job_id = (scope.get("path_params") or {}).get(JOB_ID_PARAM)
            if job_id:
                tracing.bind_job(str(job_id))
            await app(scope, receive, send_traced)
            span.set_attribute("http.response.status_code", status)
            if status >= SERVER_ERROR_STATUS:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))

    return middleware
