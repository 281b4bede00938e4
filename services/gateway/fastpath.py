"""The two hot routes without Litestar's per-request layers: `POST /api/jobs` and `GET /api/jobs/{job_id}`.

Litestar's routing, request object, signature model and response objects cost a large share of the gateway's CPU
per request (BENCHMARKS.md, "CPU per request"). `fast_routes` goes in front of the Litestar app's own handler
(inside the app, so its lifespan, its state and its OpenAPI schema stay as they are) and answers these two routes
itself, as the Litestar routes do: the same steps in the same order (the key and the rate limit, then the body:
size, content type, strict decode; then the handler), through the same functions (auth.py, body.py, batches.py,
jobs.py, cancel.py, errors.py), with the same status, body and headers (`Location`, `Retry-After`, `RateLimit*`).
The span middleware wraps them when tracing is on; observe.py (request id, metrics, log line) wraps everything.
tests/test_gateway_fastpath.py sends each request both ways and compares the answers.

Whatever it is not sure of goes to Litestar before any step has run: another method or path shape, a root path,
a Host header outside a safe set, a repeated header the route reads, a Content-Length that is not digits, an
Idempotency-Key the route's parameter might refuse.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable
from typing import Any

import msgspec
from litestar import Litestar
from litestar.exceptions import HTTPException, InternalServerException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.types import ASGIApp, Receive, Scope, Send

from shared.errors import ClipError
from shared.jobs.ids import parse_job_id
from shared.runtime import tracing

from .auth import CALLER_SCOPE_KEY, authenticate_scope, client_address, rate_limit_header_pairs
from .batches import submission_of
from .body import declared_json
from .cancel import readable_row
from .errors import clip_error_parts, http_error_parts, internal_error_parts
from .jobs import JOBS_PATH, accept, job_view
from .state import Gateway
from .tracing import span_per_request

JOB_TEMPLATE = f"{JOBS_PATH}/{{job_id}}"  # Litestar's path_template of GET /api/jobs/{job_id:str}
_JOBS_PREFIX = f"{JOBS_PATH}/"
_READ = frozenset({b"authorization", b"content-type", b"content-length", b"idempotency-key", b"host"})
_SAFE_HOST = re.compile(rb"[0-9A-Za-z.\-:\[\]]*")  # a subset of the Host values Litestar's router accepts
_DIGITS = re.compile(rb"[0-9]{1,18}")
_SURE_IDEMPOTENCY_KEY = re.compile(rb"[\x21-\x7e]{1,200}")  # every one passes jobs.py's header parameter
_JSON = b"application/json"
_encoder = msgspec.json.Encoder()
Headers = dict[bytes, bytes]
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]  # status, JSON body, headers before content-type


def fast_routes(app: Litestar, trust_client_context: bool) -> None:
    """Answer the two hot routes in front of `app`'s own ASGI handler (Litestar.__call__ calls `asgi_handler` for
    every HTTP request, after setting the scope's `app` and `state`)."""
    litestar_handler: ASGIApp = app.asgi_handler
    max_body = app.request_max_body_size or math.inf

    async def post_job(scope: Scope, receive: Receive, send: Send) -> None:
        gw: Gateway = app.state.gateway
        await _answer(scope, send, _post_job(gw, scope, receive, scope["clipjet.fast_headers"], max_body))  # type: ignore[typeddict-item]

    async def get_job(scope: Scope, receive: Receive, send: Send) -> None:
        gw: Gateway = app.state.gateway
        await _answer(scope, send, _get_job(gw, scope, scope["clipjet.fast_headers"]))  # type: ignore[typeddict-item]

    post_route: ASGIApp = post_job
    get_route: ASGIApp = get_job
    if tracing.active():  # the span middleware the Litestar routes have (app.py)
        post_route, get_route = (span_per_request(post_job, trust_client_context),
                                 span_per_request(get_job, trust_client_context))

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        hot = _hot(scope)
        if hot is None:
            await litestar_handler(scope, receive, send)
            return
        job_id, headers = hot
        scope["clipjet.fast_headers"] = headers  # type: ignore[typeddict-unknown-key]
        if job_id is None:
            scope["path_template"] = JOBS_PATH
            scope["path_params"] = {}
            await post_route(scope, receive, send)
        else:
            scope["path_template"] = JOB_TEMPLATE
            scope["path_params"] = {"job_id": job_id}
            await get_route(scope, receive, send)

    app.asgi_handler = handler


def _hot(scope: Scope) -> tuple[str | None, Headers] | None:
    """(None for POST /api/jobs, or the job id of GET /api/jobs/{job_id}; the headers those routes read), or
    None when Litestar answers this request."""
    if scope["type"] != "http" or scope.get("root_path"):
        return None
    method, path = scope["method"], scope["path"]
    job_id: str | None = None
    if method == "POST":
        if path != JOBS_PATH:
            return None
    elif method == "GET" and path.startswith(_JOBS_PREFIX):
        job_id = path[len(_JOBS_PREFIX):]
        if not job_id or "/" in job_id:
            return None
    else:
        return None
    headers: Headers = {}
    for raw_name, value in scope["headers"]:
        name = raw_name.lower()
        if name in _READ:
            if name in headers:
                return None
            headers[name] = value
    host = headers.get(b"host")
    if host is not None and _SAFE_HOST.fullmatch(host) is None:
        return None
    if job_id is None:
        length, key = headers.get(b"content-length"), headers.get(b"idempotency-key")
        if (length is not None and _DIGITS.fullmatch(length) is None) or (
            key is not None and _SURE_IDEMPOTENCY_KEY.fullmatch(key) is None
        ):
            return None
    return job_id, headers


def _text(headers: Headers, name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")


async def _post_job(gw: Gateway, scope: Scope, receive: Receive, headers: Headers, max_body: float) -> Answer:
    """jobs.py's create_job: authenticate, then strict_submission (batches.py), then the handler."""
    await authenticate_scope(gw, scope, client_address(scope), _text(headers, b"authorization") or "")
    raw = await _read_body(receive, headers.get(b"content-length"), max_body)
    body = submission_of(declared_json(raw, _text(headers, b"content-type")))  # type: ignore[arg-type]  # not None
    accepted, location = await accept(gw, body, _text(headers, b"idempotency-key"), scope[CALLER_SCOPE_KEY])  # type: ignore[literal-required]
    return 202, _encoder.encode(accepted), [(b"location", location.encode())]


async def _get_job(gw: Gateway, scope: Scope, headers: Headers) -> Answer:
    """jobs.py's get_job: authenticate, then the handler (cancel.py's readable_job, its row read by the statement
    that counts the caller's rate-limit hit: one round trip shared with the requests arriving meanwhile)."""
    job_id = scope["path_params"]["job_id"]  # type: ignore[literal-required]
    uid = parse_job_id(job_id)
    row = await authenticate_scope(gw, scope, client_address(scope), _text(headers, b"authorization") or "", uid)
    row = readable_row(scope[CALLER_SCOPE_KEY], job_id, uid, row)  # type: ignore[literal-required]
    return 200, _encoder.encode(await job_view(gw, row)), []


async def _read_body(receive: Receive, content_length: bytes | None, limit: float) -> bytes:
    """The body as Litestar's Request.stream reads it: 413 when the announced or the received length is over
    the limit (RequestEntityTooLarge), 500 when the client leaves before it is all there."""
    if content_length is not None and int(content_length) > limit:
        raise RequestEntityTooLarge
    chunks, total = [], 0
    while True:
        event: Any = await receive()
        if event["type"] == "http.request":
            chunk = event.get("body", b"")
            if chunk:
                total += len(chunk)
                if total > limit:
                    raise RequestEntityTooLarge
                chunks.append(chunk)
            if not event.get("more_body", False):
                break
        if event["type"] == "http.disconnect":
            raise InternalServerException("client disconnected prematurely")
    return b"".join(chunks)


async def _answer(scope: Scope, send: Send, work: Awaitable[Answer]) -> None:
    """Send what `work` answers, or its error as errors.py's handlers answer it."""
    try:
        status, payload, extra = await work
    except ClipError as exc:
        status, error, retry = clip_error_parts(exc)
        payload = _encoder.encode(error)
        extra = [(b"retry-after", retry["Retry-After"].encode())] if retry else []
    except HTTPException as exc:
        content_type = scope["clipjet.fast_headers"].get(b"content-type", b"").decode("latin-1")  # type: ignore[typeddict-item]
        status, error = http_error_parts(content_type, exc)
        payload, extra = _encoder.encode(error), []
    except Exception as exc:  # what errors.py's internal_handler answers
        status, error = internal_error_parts(exc)
        payload, extra = _encoder.encode(error), []
    extra += [(b"content-type", _JSON), (b"content-length", str(len(payload)).encode())]
    extra += rate_limit_header_pairs(scope)
    await send({"type": "http.response.start", "status": status, "headers": extra})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
