"""Which hosts clipjet may contact for a user's source, decided once per connection on the resolved address.

`check_target(host, port, policy)` parses the host strictly (no decimal/octal/hex IP spellings), resolves it
once, refuses when any address is loopback, private, link-local (cloud metadata), CGNAT, multicast, reserved,
unspecified or an IPv6 form of those (IPv4-mapped/-translated/-compatible, NAT64, 6to4, Teredo), and returns the
checked address: the caller connects to exactly that address (`open_pinned`), so a second DNS answer (rebinding)
is never used.

Which ranges are not public is decided by clipjet's own table of the IANA special-purpose registries, not by
`ipaddress`'s `is_private`/`is_global` (they changed between Python 3.11 and 3.13: on 3.11 `64:ff9b:1::/48` and
`::ffff:0:a.b.c.d` counted as public), so the verdict is the same on every Python version.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin, urlsplit

from shared.errors import FetchRefused, SourceUnreadable
from shared.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: the last 32 bits are the IPv4
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765 SIIT ::ffff:0:a.b.c.d
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")  # the only IPv6 space allocated for public unicast
PRIVATE_REASON = "a private address"
# (range, why it is refused, whether FETCH_ALLOW_PRIVATE lets tests and demos reach it)
SPECIAL_RANGES: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, bool], ...] = tuple(
    (ipaddress.ip_network(net), why, private_ok) for net, why, private_ok in (
        ("0.0.0.0/8", "a 'this network' address (0.0.0.0 reaches this host)", False),
        ("10.0.0.0/8", PRIVATE_REASON, True),
        ("100.64.0.0/10", "a carrier-grade NAT address", True),
        ("127.0.0.0/8", "a loopback address", True),
        ("169.254.0.0/16", "a link-local (cloud metadata) address", False),
        ("172.16.0.0/12", PRIVATE_REASON, True),
        ("192.0.0.0/24", "a reserved (IETF protocol) address", False),
        ("192.0.2.0/24", "a documentation address", False),
        ("192.88.99.0/24", "a reserved (6to4 relay) address", False),
        ("192.168.0.0/16", PRIVATE_REASON, True),
        ("198.18.0.0/15", "a benchmarking address", False),
        ("198.51.100.0/24", "a documentation address", False),
        ("203.0.113.0/24", "a documentation address", False),
        ("224.0.0.0/4", "a multicast address", False),
        ("240.0.0.0/4", "a reserved address", False),  # with 255.255.255.255 (broadcast)
        ("::/128", "the unspecified address", False),
        ("::1/128", "a loopback address", True),
        ("64:ff9b:1::/48", "a local-use NAT64 address (its IPv4 part cannot be told)", False),
        ("100::/64", "a discard-only address", False),
        ("2001::/23", "a reserved (IETF protocol) address", False),  # Teredo (2001::/32) is judged by its IPv4
        ("2001:db8::/32", "a documentation address", False),
        ("3fff::/20", "a documentation address", False),
        ("5f00::/16", "a reserved (SRv6) address", False),
        ("fc00::/7", "a private (unique local) address", True),
        ("fe80::/10", "a link-local address", False),
        ("fec0::/10", "a site-local address", False),
        ("ff00::/8", "a multicast address", False),
    )
)
# Cloud metadata services outside the link-local ranges: never reachable, whatever FETCH_ALLOW_PRIVATE or
# FETCH_ALLOW_NETWORKS say (Alibaba Cloud's sits in carrier-grade NAT space, AWS's IPv6 one in unique-local space)
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("100.100.100.200", "fd00:ec2::254"))
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
    """The IPv4 address an IPv6 address carries (mapped, translated, compatible, NAT64, 6to4, Teredo), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in NAT64 or ip in IPV4_TRANSLATED or (ip in IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal_reason(ip: IPAddress, policy: Policy) -> str | None:
    """Why `ip` may not be contacted, or None when it may."""
    inner = _embedded_v4(ip)
    if inner is not None:
        why = refusal_reason(inner, policy)
        return f"it embeds {inner}, {why}" if why else None
    if ip.is_link_local:  # never, whatever FETCH_ALLOW_NETWORKS says
        return "a link-local (cloud metadata) address"
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if any(ip.version == net.version and ip in net for net in policy.allow_networks):
        return None
    for net, why, private_ok in SPECIAL_RANGES:
        if ip.version == net.version and ip in net:
            return None if private_ok and policy.allow_private else why
    if isinstance(ip, ipaddress.IPv6Address) and ip not in GLOBAL_UNICAST_V6:
        return "a reserved address"
    return None


def split_url(url: str) -> tuple[SplitResult, str, int]:
    """(parts, scheme, port) of an http(s) URL without user info; FetchRefused otherwise."""
    if any(ch.isspace() or ord(ch) < 32 or ch == "\\" for ch in url):
        raise FetchRefused("the URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            raise FetchRefused(f"only http and https URLs can be fetched, not {parts.scheme[:20] or 'none'!r}")
        if "@" in parts.netloc:
            raise FetchRefused("URLs with user info (user@host) are not fetched")
        port, host = parts.port or DEFAULT_PORTS[scheme], parts.hostname
    except ValueError as exc:  # urlsplit: "Invalid IPv6 URL" (http://[::1); .port: not a number or out of range
        raise FetchRefused(f"the URL is not valid ({exc}); send a complete http(s) URL") from exc
    if not host:
        raise FetchRefused("the URL has no host")
    return parts, scheme, port


def join_url(base: str, location: str) -> str:
    """A redirect's `Location` resolved against the URL that sent it; FetchRefused when it is not a valid URL."""
    try:
        return urljoin(base, location)
    except ValueError as exc:
        raise FetchRefused(f"the source redirected to an invalid URL ({exc})") from exc


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
