"""The one way clipjet reads a user's URL: every hop is checked before it is contacted.

Refuses non-HTTP(S) schemes, userinfo in the URL, and hosts that resolve to loopback, private,
link-local, CGNAT, multicast, reserved or unspecified addresses (unless FETCH_ALLOW_PRIVATE, for tests
and local demos only); follows at most FETCH_MAX_REDIRECTS redirects, checking each; bounds size and time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from shared.errors import FetchRefused, SourceUnreachable, SourceUnreadable
from shared.logs import get_logger
from shared.settings import Settings

log = get_logger("fetch")

ALLOWED_SCHEMES = frozenset({"http", "https"})
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 1024 * 1024
CGNAT = ipaddress.ip_network("100.64.0.0/10")


def _plain(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_is_public(address: str) -> bool:
    ip = _plain(address)
    return ip.is_global and not ip.is_multicast and ip not in CGNAT


def address_is_link_local(address: str) -> bool:
    """Link-local (169.254.0.0/16 with the cloud metadata service, fe80::/10): refused even for local demos."""
    return _plain(address).is_link_local


async def check_url(url: str, settings: Settings) -> None:
    """Raise FetchRefused unless clipjet may fetch `url`."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise FetchRefused(f"only http and https URLs can be fetched, not {parts.scheme or 'none'!r}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise FetchRefused("URLs with user info (user@host) are not fetched")
    host = parts.hostname
    if not host:
        raise FetchRefused("the URL has no host")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SourceUnreadable(f"the host {host!r} does not resolve", code="source_unresolvable") from exc
    addresses = {str(info[4][0]).split("%")[0] for info in infos}
    if any(address_is_link_local(a) for a in addresses):
        raise FetchRefused(f"the host {host!r} resolves to a link-local (metadata) address; fetching it is not allowed")
    blocked = sorted(a for a in addresses if not address_is_public(a))
    if blocked and not settings.fetch_allow_private:
        raise FetchRefused(f"the host {host!r} resolves to a non-public address; fetching it is not allowed")


@dataclass(frozen=True)
class Fetched:
    """A finished download: where it ended up after redirects, its size, and the server's validator."""

    url: str
    size: int
    validator: str  # ETag, else Last-Modified, else "" (then only the bytes identify the file)


async def fetch_to_file(url: str, path: Path, settings: Settings) -> Fetched:
    """Download `url` into `path` through the guard."""
    if settings.fetch_allow_private:
        log.warning("fetch_allow_private_on", detail="FETCH_ALLOW_PRIVATE is on: private addresses are fetched")
    timeout = httpx.Timeout(settings.fetch_timeout_sec, connect=10.0)
    async with httpx.AsyncClient(follow_redirects=False, timeout=timeout, trust_env=False) as client:
        try:
            return await asyncio.wait_for(_follow(client, url, path, settings), settings.fetch_timeout_sec)
        except TimeoutError as exc:
            raise SourceUnreachable(f"downloading the source took over {settings.fetch_timeout_sec:.0f} s") from exc
        except httpx.TransportError as exc:
            raise SourceUnreachable(f"could not reach the source: {type(exc).__name__}") from exc


async def _follow(client: httpx.AsyncClient, url: str, path: Path, settings: Settings) -> Fetched:
    for _ in range(settings.fetch_max_redirects + 1):
        await check_url(url, settings)
        async with client.stream("GET", url) as response:
            if response.status_code in REDIRECT_CODES and "location" in response.headers:
                url = urljoin(url, response.headers["location"])
                continue
            if response.status_code >= 500:
                raise SourceUnreachable(f"the source answered HTTP {response.status_code}")
            if response.status_code >= 400:
                raise SourceUnreadable(
                    f"the source answered HTTP {response.status_code}; check the URL or upload the file instead"
                )
            size = await _save(response, path, settings.fetch_max_bytes)
            validator = response.headers.get("etag") or response.headers.get("last-modified") or ""
            return Fetched(url, size, validator)
    raise FetchRefused(f"more than {settings.fetch_max_redirects} redirects")


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
