"""The gateway's outermost ASGI layer: a request id, one log line and the Prometheus counts per request.

The request id is the client's `X-Request-Id` when it is sane (1-128 of `A-Za-z0-9._:-`), else a new one; it is
echoed in the response's `X-Request-Id` and bound to every log line the request causes. Metrics are labelled by
route template (`/api/jobs/{job_id}`), never the raw path; a request no route matched is `unmatched`. The log
line names the job (or batch) when there is one: from the path, or the `Location` of the one just created. No
query string is logged (signed URLs carry their signature there) and no header but the request id.
"""

from __future__ import annotations

import functools
import os
import re
import time
from typing import Any

import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from shared.runtime.logs import get_logger
from shared.runtime.metrics import HTTP_REQUESTS, HTTP_SECONDS

log = get_logger("gateway.request")
REQUEST_ID_HEADER = b"x-request-id"
SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
UNMATCHED = "unmatched"
_ID_PATHS = ((b"/api/jobs/", "job_id"), (b"/api/batches/", "batch_id"))


def request_id_of(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            return value.decode() if SANE_REQUEST_ID.fullmatch(value) else new_request_id()
    return new_request_id()


def new_request_id() -> str:
    """32 random hex digits (a uuid4's hex for less CPU: no UUID object per request)."""
    return os.urandom(16).hex()


@functools.lru_cache(maxsize=1024)
def _counted(route: str, method: str, status: str) -> Any:
    """The request counter's child of these labels (prometheus_client's `labels` checks and locks on every call;
    routes are templates and statuses few, so the children are few)."""
    return HTTP_REQUESTS.labels(route, method, status)


@functools.lru_cache(maxsize=1024)
def _timed(route: str, method: str) -> Any:
    return HTTP_SECONDS.labels(route, method)


def _created_id(location: bytes) -> tuple[str, str] | None:
    """("job_id", id) from `Location: /api/jobs/<id>` (or a batch's)."""
    for prefix, field in _ID_PATHS:
        if location.startswith(prefix):
            return field, location[len(prefix):].decode(errors="replace")
    return None


def observed(app: ASGIApp) -> ASGIApp:
    """Wrap the gateway app: request id, metrics and a log line for every HTTP request."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_of(scope)
        structlog.contextvars.bind_contextvars(request_id=request_id)  # this request's task only
        status, created = 500, None

        async def send_with_id(message: Message) -> None:
            nonlocal status, created
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                for name, value in headers:
                    if name.lower() == b"location":
                        created = _created_id(bytes(value))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message["headers"] = headers  # type: ignore[typeddict-unknown-key]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route, method = scope.get("path_template") or UNMATCHED, scope["method"]  # type: ignore[typeddict-item]
            _counted(route, method, str(status)).inc()
            _timed(route, method).observe(seconds)
            params = scope.get("path_params") or {}
            ids = {field: params[field] for _, field in _ID_PATHS if field in params}
            if created is not None:
                ids.setdefault(*created)
            log.info("request", method=method, path=scope["path"], route=route, status=status,
                     ms=round(seconds * 1000, 2), **ids)

    wrapped.__wrapped__ = app  # type: ignore[attr-defined]  # the Litestar app inside (tests look at it)
    return wrapped
