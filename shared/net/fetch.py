"""The one way clipjet reads a user's URL: every hop is checked before it is contacted.

Refuses non-HTTP(S) schemes, userinfo in the URL, unusual IP spellings, and hosts that resolve to loopback,
private, link-local, CGNAT, multicast, reserved or unspecified addresses (unless FETCH_ALLOW_PRIVATE or
FETCH_ALLOW_NETWORKS, for tests and local demos only; link-local never); follows at most FETCH_MAX_REDIRECTS
redirects, checking each; bounds size and time. Every byte goes through the guarded proxy
(`shared.net.fetchproxy`), which checks again and connects to the checked address.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import httpx

from shared.errors import FetchRefused, Permanent, SourceUnreachable, SourceUnreadable
from shared.net.fetchproxy import FetchSession, fetch_session
from shared.net.netguard import Policy, Target, join_url, split_url
from shared.net.netguard import check_url as _check_url
from shared.runtime.logs import get_logger
from shared.settings import Settings

log = get_logger("fetch")

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 1024 * 1024
CONNECT_TIMEOUT_SEC = 10.0
_CONTENT_RANGE = re.compile(r"bytes\s+\d+-\d+/(\d+)")


async def check_url(url: str, settings: Settings) -> Target:
    """Raise FetchRefused unless clipjet may fetch `url`; the checked target otherwise."""
    return await _check_url(url, Policy.of(settings))


@dataclass(frozen=True)
class Fetched:
    """A finished download: where it ended up after redirects, its size, and the server's validator."""

    url: str
    size: int
    validator: str  # ETag, else Last-Modified, else "" (then only the bytes identify the file)


@dataclass(frozen=True)
class Remote:
    """What one ranged request told about a URL: its final address, size, validator and range support."""

    url: str
    size: int | None
    validator: str
    ranges: bool  # the server answered a Range request with 206: ffmpeg can seek instead of downloading


@lru_cache(maxsize=4)
def tls_context(ca_file: str) -> ssl.SSLContext:
    """The certificate-verifying TLS context of every client of this process for FETCH_CA_FILE `ca_file` (empty:
    httpx's default bundle): built once, as loading a CA bundle takes ~0.1 s (a client per check paid it each
    time, even for http://). Verification settings never change after it is built."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else httpx.create_ssl_context(trust_env=False)


@asynccontextmanager
async def _client(session: FetchSession, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    timeout = httpx.Timeout(settings.fetch_idle_timeout_sec, connect=CONNECT_TIMEOUT_SEC)
    verify = tls_context(settings.fetch_ca_file)
    async with httpx.AsyncClient(
        follow_redirects=False, timeout=timeout, trust_env=False, proxy=session.url, verify=verify,
        event_hooks={"response": [_check_location]},
    ) as c:
        with session.errors():
            try:
                yield c
            except httpx.ReadTimeout as exc:  # connected, then silent: the origin's doing, not the network's
                raise _too_slow(settings.fetch_idle_timeout_sec) from exc
            except httpx.TransportError as exc:
                raise SourceUnreachable(f"could not reach the source: {type(exc).__name__}") from exc


def _too_slow(silent_sec: float) -> Permanent:
    """A source that accepted the connection and then sent nothing: failed once (retrying holds a fetch slot of
    ours per attempt, and other users' jobs wait behind it)."""
    return Permanent(f"the source's server accepted the request and sent nothing for {silent_sec:.0f} s; give a "
                     f"URL that answers, or upload the file", code="source_too_slow")


async def _check_location(response: httpx.Response) -> None:
    """A redirect to a malformed URL (`http://[::1`) is refused before httpx reads it as a protocol error (which
    would be retried as a network failure)."""
    if response.status_code in REDIRECT_CODES and "location" in response.headers:
        split_url(join_url(str(response.request.url), response.headers["location"]))


async def _open(
    client: httpx.AsyncClient, session: FetchSession, url: str, settings: Settings, headers: dict[str, str]
) -> tuple[str, httpx.Response]:
    """GET `url` following at most FETCH_MAX_REDIRECTS redirects, each hop checked; the final URL and response."""
    for _ in range(settings.fetch_max_redirects + 1):
        await check_url(url, settings)
        try:  # the headers must come within the rate floor's grace: a silent origin is below any rate
            response = await asyncio.wait_for(
                client.send(client.build_request("GET", url, headers=headers), stream=True),
                CONNECT_TIMEOUT_SEC + settings.fetch_min_rate_grace_sec,
            )
        except TimeoutError as exc:
            raise _too_slow(settings.fetch_min_rate_grace_sec) from exc
        if response.status_code in REDIRECT_CODES and "location" in response.headers:
            await response.aclose()
            url = join_url(url, response.headers["location"])
            continue
        if session.refusal is not None:
            await response.aclose()
            raise session.refusal
        if response.status_code >= 500:
            await response.aclose()
            raise SourceUnreachable(f"the source answered HTTP {response.status_code}")
        if response.status_code >= 400:
            await response.aclose()
            raise SourceUnreadable(
                f"the source answered HTTP {response.status_code}; check the URL or upload the file instead"
            )
        return url, response
    raise FetchRefused(f"more than {settings.fetch_max_redirects} redirects")


def _validator(response: httpx.Response) -> str:
    return response.headers.get("etag") or response.headers.get("last-modified") or ""


async def inspect_url(url: str, session: FetchSession, settings: Settings) -> Remote:
    """One `Range: bytes=0-0` request (after redirects): does the server serve ranges, how big is the file."""
    async with _client(session, settings) as client:
        final, response = await asyncio.wait_for(
            _open(client, session, url, settings, {"Range": "bytes=0-0"}), settings.fetch_timeout_sec
        )
        await response.aclose()
    match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    if response.status_code == 206 and match:
        return Remote(final, int(match.group(1)), _validator(response), ranges=True)
    declared = response.headers.get("content-length")
    return Remote(final, int(declared) if declared else None, _validator(response), ranges=False)


async def fetch_to_file(url: str, path: Path, settings: Settings, session: FetchSession | None = None,
                        max_bytes: int | None = None) -> Fetched:
    """Download `url` into `path` through the guard, refused past `max_bytes` (FETCH_MAX_BYTES at most)."""
    if session is None:
        async with fetch_session(settings) as own:
            return await fetch_to_file(url, path, settings, own, max_bytes)
    cap = settings.fetch_max_bytes if max_bytes is None else min(max_bytes, settings.fetch_max_bytes)
    async with _client(session, settings) as client:
        try:
            return await asyncio.wait_for(_download(client, session, url, path, settings, cap),
                                          settings.fetch_timeout_sec)
        except TimeoutError as exc:
            raise SourceUnreachable(f"downloading the source took over {settings.fetch_timeout_sec:.0f} s") from exc


async def _download(client: httpx.AsyncClient, session: FetchSession, url: str, path: Path,
                    settings: Settings, max_bytes: int) -> Fetched:
    final, response = await _open(client, session, url, settings, {})
    try:
        size = await _save(response, path, max_bytes)
    finally:
        await response.aclose()
    return Fetched(final, size, _validator(response))


async def _save(response: httpx.Response, path: Path, max_bytes: int) -> int:
    declared = int(response.headers.get("content-length") or 0)
    if declared > max_bytes:
        raise FetchRefused(f"the source is {declared} bytes, over the {max_bytes}-byte limit", code="source_too_large")
    total = 0
    with path.open("wb") as handle:
        async for chunk in response.aiter_bytes(CHUNK_BYTES):
            total += len(chunk)
            if total > max_bytes:
                raise FetchRefused(f"the source is over the {max_bytes}-byte limit", code="source_too_large")
            handle.write(chunk)
    return total
