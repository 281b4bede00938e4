"""The guarded loopback proxy every outbound fetch of a user's source goes through (ffmpeg, PyAV, yt-dlp, httpx).

One per worker process (`guarded_proxy()`), on 127.0.0.1 and an ephemeral port. Plain http arrives as an
absolute-URI request, https as CONNECT; either way the target is checked by `shared.net.netguard` and the
connection goes to the checked address (pinned, so DNS rebinding fails). The proxy never follows redirects:
a client that follows a 3xx sends the next hop through the proxy, where it is checked again.

Callers open a `FetchSession` (its URL carries a per-session user and the process's secret as proxy
credentials): its policy comes from the caller's settings, it counts the bytes it received against
FETCH_MAX_BYTES, and it remembers why the proxy refused something, so that an ffmpeg or yt-dlp failure can
be reported with the refusal's stable code instead of a generic one.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from shared.errors import ClipError, FetchRefused
from shared.media.inputs import FORMAT_WHITELIST
from shared.net.fetchpipe import KIB, pipe
from shared.net.netguard import Policy, Target, check_target, open_pinned, split_url
from shared.runtime.logs import get_logger
from shared.settings import Settings

log = get_logger("fetchproxy")
MAX_HEAD_BYTES = 64 * 1024  # request or response head, bytes
MAX_BODY_BYTES = 1024 * 1024  # request body a client may send (yt-dlp API POSTs), bytes
CLIENT_SNDBUF_BYTES = 64 * 1024  # loopback buffers toward ffmpeg/yt-dlp: little read ahead of what they use
TLS_OPTIONS = frozenset({"tls_verify", "ca_file"})  # used by ffmpeg only for an https URL
PLAIN_ONLY_OPTIONS = frozenset({"recv_buffer_size"})  # used by ffmpeg only for an http URL
# what reading a user URL through this proxy needs: http and https, tcp to the proxy, httpproxy for the CONNECT
# tunnel of https. Only safe because no demuxer that opens nested URLs may read user media (shared.media.inputs).
PROXIED_PROTOCOLS = "http,https,tls,tcp,httpproxy"
HEAD_TIMEOUT_SEC = 10.0  # a client must send its request head within this, s
HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade",
                         "transfer-encoding", "trailer"})
REALM = b'Proxy-Authenticate: Basic realm="clipjet"\r\n'


def _bracketed(target: str) -> str:
    """An absolute URI whose IPv6 literal lost its brackets (ffmpeg's proxy requests send `http://::1:80/x`) with
    them put back; any other target as it is."""
    scheme, sep, rest = target.partition("://")
    authority, slash, path = rest.partition("/")
    if not sep or "[" in authority or authority.count(":") < 2:
        return target
    host, _, port = authority.rpartition(":")
    return f"{scheme}://[{host}]:{port}{slash}{path}"


@dataclass
class FetchSession:
    """One caller's use of the proxy: its policy, its byte budget and the proxy's first refusal."""

    user: str
    policy: Policy
    max_bytes: int
    idle_sec: float
    ca_file: str = ""  # FETCH_CA_FILE: the CA bundle ffmpeg verifies https sources against ("" = the system's)
    url: str = ""  # http://user:secret@127.0.0.1:port, for ffmpeg -http_proxy, yt-dlp proxy, httpx proxy
    min_rate_bps: float = 0.0  # FETCH_MIN_RATE_KBPS in bytes/s: a connection whose origin averages less is cut
    rate_grace_sec: float = 0.0  # FETCH_MIN_RATE_GRACE_SEC: waiting on the origin this long before the rate applies
    received: int = 0
    refusal: ClipError | None = None
    contacted: list[str] = field(default_factory=list)  # "host:port -> address" of every connection made
    streams: set[asyncio.StreamWriter] = field(default_factory=set, repr=False)  # open connections, both sides

    def close_streams(self) -> None:
        """Cut every connection still open: a reader that outlived its caller's deadline (a yt-dlp thread
        cannot be killed) reads nothing more once the session ends."""
        for stream in list(self.streams):
            with suppress(Exception):
                stream.close()
        self.streams.clear()

    def refuse(self, error: ClipError) -> ClipError:
        if self.refusal is None:
            self.refusal = error
        return error

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Inside: any failure becomes the proxy's refusal when there was one (it says why, with its code); so
        does a success after one (ffmpeg takes a connection the proxy cut for the end of its input)."""
        try:
            yield
        except Exception as exc:
            if self.refusal is not None and exc is not self.refusal:
                raise self.refusal from exc
            raise
        if self.refusal is not None:
            raise self.refusal

    def av_options(self) -> dict[str, str]:
        """libavformat options for reading a user URL: through this session, http(s) only, media demuxers only,
        certificates verified, bounded silence, small buffers (PyAV's `av.open(url, options=...)`)."""
        options = {
            "http_proxy": self.url, "format_whitelist": FORMAT_WHITELIST, "protocol_whitelist": PROXIED_PROTOCOLS,
            "tls_verify": "1",
            "rw_timeout": str(int(self.idle_sec * 1_000_000)), "recv_buffer_size": str(CLIENT_SNDBUF_BYTES),
        }
        if self.ca_file:
            options["ca_file"] = self.ca_file
        return options

    def ffmpeg_input_args(self, url: str = "") -> list[str]:
        """The same as ffmpeg options placed before `-i url`, less those nothing would use: the ffmpeg CLI fails
        on them (certificate options need an https URL: an http URL that redirects to https is not verified;
        the tunnel to the proxy takes no socket options)."""
        tls = url.lower().startswith("https:")
        unused = PLAIN_ONLY_OPTIONS if tls else TLS_OPTIONS
        options = {k: v for k, v in self.av_options().items() if k not in unused}
        return [arg for name, value in options.items() for arg in (f"-{name}", value)]


class GuardedProxy:
    """The asyncio proxy server; `session(settings)` hands out sessions."""

    def __init__(self) -> None:
        self._secret = secrets.token_urlsafe(18)
        self._sessions: dict[str, FetchSession] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("fetch_proxy_started", port=self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with suppress(Exception):
                await self._server.wait_closed()

    @asynccontextmanager
    async def session(self, settings: Settings) -> AsyncIterator[FetchSession]:
        warn_if_open(settings)
        user = secrets.token_hex(8)
        session = FetchSession(user, Policy.of(settings), settings.fetch_max_bytes, settings.fetch_idle_timeout_sec,
                               settings.fetch_ca_file, min_rate_bps=settings.fetch_min_rate_kbps * KIB,
                               rate_grace_sec=settings.fetch_min_rate_grace_sec)
        session.url = f"http://{user}:{self._secret}@127.0.0.1:{self.port}"
        self._sessions[user] = session
        try:
            yield session
        finally:
            del self._sessions[user]
            session.close_streams()

    def _session_of(self, headers: dict[str, str]) -> FetchSession | None:
        scheme, _, value = headers.get("proxy-authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        with suppress(ValueError):
            user, _, secret = base64.b64decode(value).decode().partition(":")
            if secrets.compare_digest(secret, self._secret):
                return self._sessions.get(user)
        return None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_SNDBUF_BYTES)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_SEC)
            if len(head) > MAX_HEAD_BYTES:
                return
            method, target, headers, lines = _parse_head(head)
            session = self._session_of(headers)
            if session is None:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n" + REALM +
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                return
            await self._serve(session, method, target, headers, lines, reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError, ValueError):
            return
        finally:
            with suppress(Exception):
                await writer.drain()
                writer.close()

    async def _serve(
        self, session: FetchSession, method: str, target: str, headers: dict[str, str], lines: list[str],
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    ) -> None:
        try:
            if session.refusal is not None:  # refused once, refused for good: ffmpeg's reconnects get nothing more
                raise session.refusal
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                checked = await check_target(host.removeprefix("[").removesuffix("]"), int(port), "https",
                                             session.policy)
            else:
                parts, scheme, port_num = split_url(_bracketed(target))
                if scheme != "http":
                    raise FetchRefused("https goes through CONNECT, not as an absolute URI")
                assert parts.hostname is not None
                checked = await check_target(parts.hostname, port_num, scheme, session.policy)
            upstream_r, upstream_w = await open_pinned(checked)
        except ClipError as exc:
            session.refuse(exc)
            log.warning("fetch_refused", code=exc.code, target=target, reason=exc.message)
            body = f"{exc.code}: {exc.message}".encode()
            writer.write(b"HTTP/1.1 403 Forbidden\r\nX-Clipjet-Error: " + exc.code.encode() +
                         b"\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: " +
                         str(len(body)).encode() + b"\r\n\r\n" + body)
            return
        except (OSError, TimeoutError) as exc:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            log.info("fetch_upstream_unreachable", target=target, error=repr(exc))
            return
        session.contacted.append(f"{checked.host}:{checked.port} -> {checked.address}")
        session.streams.update((writer, upstream_w))
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await asyncio.gather(
                    pipe(reader, upstream_w, session, None), pipe(upstream_r, writer, session, session),
                )
            else:
                await _forward(session, checked, method, target, headers, lines, reader, upstream_w)
                await _relay_response(session, upstream_r, writer)
        finally:
            session.streams.difference_update((writer, upstream_w))
            with suppress(Exception):
                upstream_w.close()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str], list[str]]:
    text = head.decode("latin-1")
    request_line, *lines = [line for line in text.split("\r\n") if line]
    method, target, _version = request_line.split(" ", 2)
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method.upper(), target, headers, lines


async def _forward(
    session: FetchSession, target: Target, method: str, url: str, headers: dict[str, str], lines: list[str],
    reader: asyncio.StreamReader, upstream: asyncio.StreamWriter,
) -> None:
    """Send the request on in origin form, with the checked URL's Host and `Connection: close`."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    out = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}"]
    out += [line for line in lines if line.partition(":")[0].strip().lower() not in HOP_HEADERS | {"host"}]
    out.append("Connection: close")
    upstream.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
    length = int(headers.get("content-length") or 0)
    if length > MAX_BODY_BYTES:
        raise ValueError("request body too large")
    if length:
        upstream.write(await reader.readexactly(length))
    await upstream.drain()


async def _relay_response(session: FetchSession, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The response head with `Connection: close` (one request per connection), then the body as it comes."""
    head = await asyncio.wait_for(upstream.readuntil(b"\r\n\r\n"), session.idle_sec)
    status, *lines = head.decode("latin-1").split("\r\n")
    kept = [line for line in lines if line and line.partition(":")[0].strip().lower() not in
            {"connection", "keep-alive", "proxy-connection"}]
    writer.write(("\r\n".join([status, *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1"))
    await pipe(upstream, writer, session, session)


_proxies: dict[int, asyncio.Future[GuardedProxy]] = {}
_warned: set[tuple[bool, str]] = set()


def warn_if_open(settings: Settings) -> None:
    """A loud warning (once per process and setting) when fetches may reach private addresses."""
    key = (settings.fetch_allow_private, settings.fetch_allow_networks)
    if (settings.fetch_allow_private or settings.fetch_allow_networks) and key not in _warned:
        _warned.add(key)
        log.warning("fetch_allow_private_on", allow_private=settings.fetch_allow_private,
                    networks=settings.fetch_allow_networks,
                    detail="user URLs may reach loopback/private addresses: for tests and local demos only")


async def _start_proxy() -> GuardedProxy:
    proxy = GuardedProxy()
    await proxy.start()
    return proxy


async def guarded_proxy() -> GuardedProxy:
    """This process's proxy (started on first use, one per event loop)."""
    loop_id = id(asyncio.get_running_loop())
    if loop_id not in _proxies:
        _proxies[loop_id] = asyncio.ensure_future(_start_proxy())
    return await asyncio.shield(_proxies[loop_id])


@asynccontextmanager
async def fetch_session(settings: Settings) -> AsyncIterator[FetchSession]:
    """A session on this process's proxy."""
    proxy = await guarded_proxy()
    async with proxy.session(settings) as session:
        yield session
