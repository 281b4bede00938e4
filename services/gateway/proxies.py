"""Which callers the gateway believes: X-Forwarded-For/-Proto only from GATEWAY_TRUSTED_PROXIES (uvicorn's
ProxyHeadersMiddleware), and whether the direct peer is one of them, noted in the scope before the client
address is rewritten (a caller's trace context is honoured only then: tracing.py)."""

from __future__ import annotations

from litestar.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

PEER_TRUSTED = "clipjet.peer_trusted"  # scope key: the connection comes from a trusted proxy


def peer_trusted(scope: Scope) -> bool:
    """Whether this request's direct peer is named in GATEWAY_TRUSTED_PROXIES (`behind_proxies` sets it)."""
    return bool(scope.get(PEER_TRUSTED))  # type: ignore[misc]


def behind_proxies(app: ASGIApp, trusted_proxies: str) -> ASGIApp:
    """`app` behind the proxies named in `trusted_proxies` (IPs/CIDRs, comma-separated; "": none)."""
    if not trusted_proxies.strip():
        return app
    forwarded = ProxyHeadersMiddleware(app, trusted_hosts=trusted_proxies)  # type: ignore[arg-type]

    async def mark_peer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            client = scope.get("client")
            scope[PEER_TRUSTED] = bool(client) and client[0] in forwarded.trusted_hosts  # type: ignore[literal-required,index]
        await forwarded(scope, receive, send)  # type: ignore[arg-type]

    return mark_peer
