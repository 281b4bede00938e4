"""Who is calling: the API key on each `/api` request, its rate limit, and what it may do.

Each request costs at most one database round trip here (the rate-limit hit, written together with the hits of
the requests arriving meanwhile and the published marks of new jobs: services/gateway/writes.py); key lookups are
cached for KEY_CACHE_SEC, so a revoked key stops working within that time on every replica.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from litestar import Request
from litestar.di import NamedDependency
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from shared.db import keys
from shared.errors import ClipError, RetryLater
from shared.jobs.apikeys import secret_matches, split_token
from shared.jobs.contracts import PRIORITIES
from shared.runtime.logs import get_logger

from .state import Gateway

log = get_logger("auth")
RATE_WINDOW_SEC = keys.RATE_WINDOW_SEC
CALLER_SCOPE_KEY = "clipjet.caller"
RATE_SCOPE_KEY = "clipjet.ratelimit"
POLICY_NAME = "clipjet"
BeforeHook = Callable[[Any], Awaitable[None]]


class Unauthorized(ClipError):
    """No key, or not a valid one."""

    http_status = 401


class RateLimited(RetryLater):
    code = "rate_limited"
    http_status = 429


@dataclass(frozen=True)
class Caller:
    """The key behind a request (`owner` None: AUTH=off, every job and upload is everyone's)."""

    owner: str | None
    admin: bool
    priorities: tuple[str, ...]
    quotas: keys.Quotas | None
    webhook: str | None = None  # the key's default webhook, for its jobs that name none

    def may_read(self, owner: str | None) -> bool:
        return self.admin or self.owner is None or owner == self.owner


OPEN_CALLER = Caller(owner=None, admin=True, priorities=PRIORITIES, quotas=None)


@dataclass(frozen=True)
class RateState:
    limit: int
    remaining: int
    reset_sec: int


async def _rate_limit(gw: Gateway, scope: Scope, subject: str, limit: int,
                      read: uuid.UUID | None = None) -> asyncpg.Record | None:
    """Count this request against `subject`'s sliding window; 429 rate_limited when over `limit`. `read`: a job
    whose row the same statement reads (its row, or None when there is no such job)."""
    now = time.time()
    window_start = int(now // RATE_WINDOW_SEC) * RATE_WINDOW_SEC
    # the breaker guards the grouped write once (groupcommit.py); wrapping this in it would count one failure per caller
    row = None
    if read is None:
        current, previous = await gw.writes.rate_hit(subject, window_start)
    else:
        (current, previous), row = await gw.writes.rate_hit_and_read(subject, window_start, read)
    elapsed = now - window_start
    used = previous * (1 - elapsed / RATE_WINDOW_SEC) + current
    reset = max(1, math.ceil(RATE_WINDOW_SEC - elapsed))
    scope[RATE_SCOPE_KEY] = RateState(limit, max(0, math.floor(limit - used)), reset)
    if used > limit:
        raise RateLimited(
            f"more than {limit} requests in {RATE_WINDOW_SEC} s; wait {reset} s and slow down",
            retry_after_sec=reset,
        )
    return row


def client_address(scope: Scope) -> str:
    """The request's client host, as Litestar's `request.client` gives it ("unknown" when the server names none)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


async def authenticate(request: Request[Any, Any, Any]) -> None:
    """Litestar `before_request` of every `/api` controller: put the Caller in the scope, or refuse."""
    gw: Gateway = request.app.state.gateway
    host = request.client.host if request.client else "unknown"
    header = "" if gw.res.settings.auth == "off" else request.headers.get("authorization", "")
    await authenticate_scope(gw, request.scope, host, header)


async def authenticate_scope(gw: Gateway, scope: Scope, client_host: str, header: str,
                             read: uuid.UUID | None = None) -> asyncpg.Record | None:
    """`authenticate` for a request's scope, its client's host and its Authorization `header` ("" when none; the
    raw routes of fastpath.py call it too). `read`: a job whose row the statement counting an admitted caller's
    hit reads too (its row, or None: no such job, or no `read`); whether the caller may see it is not checked."""
    settings = gw.res.settings
    if settings.auth == "off":
        row = await _rate_limit(gw, scope, f"ip:{client_host}", settings.rate_limit_per_min, read)
        scope[CALLER_SCOPE_KEY] = OPEN_CALLER  # type: ignore[literal-required]
        return row
    scheme, _, token = header.partition(" ")
    if not header:
        await _rate_limit(gw, scope, f"ip:{client_host}", settings.rate_limit_anon_per_min)
        raise Unauthorized(
            "send your API key in the Authorization header (scheme: Bearer); `clipjet keys create` makes one",
            code="auth_required",
        )
    parts = split_token(token.strip()) if scheme.lower() == "bearer" else None
    found = await gw.keys.get(gw.res.db, gw.breakers.db, parts[0]) if parts else None
    if parts is None or not secret_matches(parts[1], found.secret_sha256 if found else None) or (
        found is None or found.revoked_at is not None
    ):
        await _rate_limit(gw, scope, f"ip:{client_host}", settings.rate_limit_anon_per_min)
        raise Unauthorized("the API key is unknown or revoked", code="auth_invalid")
    row = await _rate_limit(gw, scope, f"key:{found.key_id}", settings.rate_limit_per_min, read)
    scope[CALLER_SCOPE_KEY] = Caller(  # type: ignore[literal-required]
        owner=found.key_id, admin=found.admin, priorities=found.priorities, quotas=found.quotas,
        webhook=found.default_webhook,
    )
    return row


def authenticated(then: Callable[[Request[Any, Any, Any]], Awaitable[None]] | None = None) -> BeforeHook:
    """A route's `before_request`: `authenticate`, then `then` (e.g. the strict body check), so a request without
    a valid key is refused before its body is read."""

    async def hook(request: Request[Any, Any, Any]) -> None:
        await authenticate(request)
        if then is not None:
            await then(request)

    return hook


def caller_of(request: Request[Any, Any, Any]) -> Caller:
    """The Caller `authenticate` put in the request's scope."""
    return request.scope[CALLER_SCOPE_KEY]  # type: ignore[literal-required,no-any-return]


def caller_dependency(request: Request[Any, Any, Any], gw: NamedDependency[Gateway]) -> Caller:
    """The `caller` dependency of the `/api` handlers. It names `gw` only to be resolved after it: Litestar resolves
    independent dependencies of a handler in an anyio task group (two tasks per request), dependent ones one
    after the other, directly."""
    return caller_of(request)


def rate_limit_header_pairs(scope: Scope) -> list[tuple[bytes, bytes]]:
    """`RateLimit-Policy` and `RateLimit` of a request that was counted (none for one that was not)."""
    state = scope.get(RATE_SCOPE_KEY)  # type: ignore[misc]
    if not isinstance(state, RateState):
        return []
    return [(b"ratelimit-policy", f'"{POLICY_NAME}";q={state.limit};w={RATE_WINDOW_SEC}'.encode()),
            (b"ratelimit", f'"{POLICY_NAME}";r={state.remaining};t={state.reset_sec}'.encode())]


def rate_limit_headers(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: `RateLimit` and `RateLimit-Policy` on every response whose request was counted."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = rate_limit_header_pairs(scope)
                if extra:
                    message["headers"] = [*message.get("headers", []), *extra]  # type: ignore[typeddict-unknown-key]
            await send(message)

        await app(scope, receive, send_with_headers)

    return middleware
