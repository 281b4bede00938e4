"""One webhook delivery: a POST through the same guard as sources (shared/net/netguard.py, shared/net/fetchproxy.py).

The URL is checked before anything is sent (http(s) only, no user info, no private, loopback or link-local
address unless FETCH_ALLOW_PRIVATE / FETCH_ALLOW_NETWORKS), then sent through the process's guarded proxy, which
checks the address again and connects to exactly that one. Redirects are not followed (a 3xx is a failed try),
and the whole try (connect, send, the receiver's status line) is cut after WEBHOOK_TIMEOUT_SEC. The receiver's
body is never read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from shared.errors import ClipError, FetchRefused
from shared.net.fetchproxy import fetch_session
from shared.net.netguard import Policy, check_url
from shared.settings import Settings

USER_AGENT = "clipjet-webhooks/1"
MAX_ERROR_CHARS = 300  # of an error kept on the job


@dataclass(frozen=True)
class Answer:
    """What one try got: the receiver's HTTP status (None: no answer), why it failed, whether retrying can help."""

    status_code: int | None
    error: str | None = None
    final: bool = False  # refused by the guard: another try would be refused too

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def post_webhook(url: str, body: bytes, headers: dict[str, str], settings: Settings) -> Answer:
    """POST `body` to `url` once, through the guard, within WEBHOOK_TIMEOUT_SEC."""
    try:
        async with asyncio.timeout(settings.webhook_timeout_sec):
            return await _post(url, body, headers, settings)
    except TimeoutError:
        return Answer(None, f"no answer within {settings.webhook_timeout_sec:g} s (WEBHOOK_TIMEOUT_SEC)")


async def _post(url: str, body: bytes, headers: dict[str, str], settings: Settings) -> Answer:
    try:
        await check_url(url, Policy.of(settings))
    except FetchRefused as exc:
        return Answer(None, _short(f"refused: {exc.message}"), final=True)
    except ClipError as exc:  # the host does not resolve (now): it may later
        return Answer(None, _short(exc.message))
    async with fetch_session(settings) as session:
        timeout = httpx.Timeout(settings.webhook_timeout_sec)
        async with httpx.AsyncClient(follow_redirects=False, timeout=timeout, trust_env=False,
                                     proxy=session.url) as client:
            try:
                request = client.build_request("POST", url, content=body,
                                               headers={**headers, "User-Agent": USER_AGENT})
                response = await client.send(request, stream=True)
                await response.aclose()
            except httpx.HTTPError as exc:
                if session.refusal is not None:
                    return Answer(None, _short(f"refused: {session.refusal.message}"), final=True)
                return Answer(None, _short(f"could not deliver: {type(exc).__name__} {exc}".strip()))
        if session.refusal is not None:
            return Answer(None, _short(f"refused: {session.refusal.message}"), final=True)
        if not session.contacted:  # the proxy's own 502: the receiver's address did not take the connection
            return Answer(None, "could not connect to the receiver")
    if 200 <= response.status_code < 300:
        return Answer(response.status_code)
    if 300 <= response.status_code < 400:
        return Answer(response.status_code, f"the receiver answered HTTP {response.status_code}; webhooks do not "
                                            f"follow redirects: name the final URL")
    return Answer(response.status_code, f"the receiver answered HTTP {response.status_code}")


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
