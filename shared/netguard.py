"""Which hosts clipjet may contact for a user's source, decided once per connection on the resolved address.

`check_target(host, port, policy)` parses the host strictly (no decimal/octal/hex IP spellings), resolves it
once, refuses when any address is loopback, private, link-local (cloud metadata), CGNAT, multicast, reserved,
unspecified or an IPv6 form of those (IPv4-mapped/-compatible, NAT64, 6to4, Teredo), and returns the checked
address: the caller connects to exactly that address (`open_pinned`), so a second DNS answer (rebinding)
is never used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from shared.errors import FetchRefused, SourceUnreadable
from shared.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
CONNECT_TIMEOUT_SEC = 10.0  # opening a TCP connection to a checked address, s
PINNED_RCVBUF_BYTES = 256 * 1024  # receive buffer of a connection to a source, bytes
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?$", re.IGNORECASE)
_HOST_CHARS = re.compile(r"^[a-z0-9.-]+$", re.IGNORECASE)


@dataclass(frozen=True)
class Policy:
    """What a fetch may reach beyond the public internet: tests and local demos only."""

    allow_private: bool = False  # FETCH_ALLOW_PRIVATE: loopback and private networks (never link-local)
    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # FETCH_ALLOW_NETWORKS

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        nets = tuple(ipaddress.ip_network(n.strip()) for n in settings.fetch_allow_networks.split(",") if n.strip())
        return cls(settings.fetch_allow_private, nets)


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to `address`, but speak to (Host, SNI) `host`."""

    scheme: str
    host: str
    port: int
    address: str


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in NAT64 or (ip in IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal_reason(ip: IPAddress, policy: Policy) -> str | None:
    """Why `ip` may not be contacted, or None when it may."""
    inner = _embedded_v4(ip)
    if inner is not None:
        why = refusal_reason(inner, policy)
        return f"it embeds {inner}, {why}" if why else None
    if ip.is_link_local:
        return "a link-local (cloud metadata) address"
    if any(ip in net for net in policy.allow_networks):
        return None
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "the unspecified address"
    public = ip.is_global and ip not in CGNAT
    if public:
        return None
    if policy.allow_private and (ip.is_loopback or ip.is_private or ip in CGNAT):
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip in CGNAT:
        return "a carrier-grade NAT address"
    if ip.is_private:
        return "a private address"
    return "a reserved address"


def split_url(url: str) -> tuple[SplitResult, str, int]:
    """(parts, scheme, port) of an http(s) URL without user info; FetchRefused otherwise."""
    if any(ch.isspace() or ord(ch) < 32 or ch == "\\" for ch in url):
        raise FetchRefused("the URL contains whitespace, control characters or backslashes")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise FetchRefused(f"only http and https URLs can be fetched, not {parts.scheme or 'none'!r}")
    if "@" in parts.netloc:
        raise FetchRefused("URLs with user info (user@host) are not fetched")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise FetchRefused(f"the URL's port is not valid: {exc}") from exc
    if not parts.hostname:
        raise FetchRefused("the URL has no host")
    return parts, scheme, port


def _literal(host: str) -> IPAddress | None:
    """The address a host names literally; FetchRefused for other numeric spellings (2130706433, 0x7f.1, 0177.0.0.1)."""
    try:
        return ipaddress.ip_address(host.split("%")[0] if ":" in host else host)
    except ValueError:
        pass
    if ":" in host or _NUMERIC_HOST.match(host):
        raise FetchRefused(f"{host!r} is an unusual spelling of an IP address; write it as a.b.c.d or use a name")
    if not _HOST_CHARS.match(host) or ".." in host:
        raise FetchRefused(f"{host!r} is not a valid host name")
    return None


async def resolve_host(host: str, port: int) -> list[str]:
    """The host's addresses (one lookup). Tests replace this to simulate DNS answers."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]).split("%")[0] for info in infos]


async def check_target(host: str, port: int, scheme: str, policy: Policy) -> Target:
    """Resolve `host` once and check every address; the Target names the address to connect to."""
    host = host.lower().rstrip(".") if not host.startswith("[") else host.strip("[]")
    literal = _literal(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = await resolve_host(host, port)
        except (socket.gaierror, UnicodeError) as exc:
            raise SourceUnreadable(f"the host {host!r} does not resolve", code="source_unresolvable") from exc
    if not addresses:
        raise SourceUnreadable(f"the host {host!r} does not resolve", code="source_unresolvable")
    for address in addresses:
        why = refusal_reason(ipaddress.ip_address(address), policy)
        if why:
            raise FetchRefused(f"the host {host!r} resolves to {address}, {why}; fetching it is not allowed")
    return Target(scheme, host, port, addresses[0])


async def check_url(url: str, policy: Policy) -> Target:
    parts, scheme, port = split_url(url)
    assert parts.hostname is not None
    return await check_target(parts.hostname, port, scheme, policy)


async def open_pinned(target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the checked address (never a fresh lookup of the name).

    Its receive buffer is small: a reader that stops early (ffmpeg seeking away from an open-ended range)
    leaves little of the origin's data in flight."""
    ip = ipaddress.ip_address(target.address)
    sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PINNED_RCVBUF_BYTES)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (target.address, target.port)),
                               CONNECT_TIMEOUT_SEC)
        return await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
