"""A fault-injecting HTTP/1.1 reverse proxy in front of the real S3 server: some requests get `503 SlowDown`,
or the error another store answers them with.

Clients talk to the proxy's address and sign for it (SigV4 signs the Host header): the proxy forwards each request
byte for byte, Host included, so the signature the server checks is the one the client made. Requests chosen by
`should_fail` are answered by the proxy itself with S3's SlowDown error and never reach the server; requests
`refuse` answers with an `S3Error` (e.g. tests/r2_rules.py: what Cloudflare R2 refuses) get that error instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

HEAD_END = b"\r\n\r\n"
NO_BODY_STATUSES = frozenset({204, 304})
COPY_CHUNK = 64 * 1024
THREAD_START_TIMEOUT_SEC = 10.0


@dataclass(frozen=True)
class Request:
    """What the fault rule sees of a request."""

    method: str
    target: str  # path and query
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case

    @property
    def is_part_upload(self) -> bool:
        return self.method == "PUT" and "partNumber=" in self.target and "uploadId=" in self.target


@dataclass(frozen=True)
class S3Error:
    """An S3 error answer: HTTP status, S3 error code, message."""

    status: int
    code: str
    message: str

    def response(self, *, close: bool, head: bool = False) -> bytes:
        """The answer's bytes; `head`: to a HEAD request (the headers only)."""
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{self.code}</Code>'
                f"<Message>{self.message}</Message></Error>").encode()
        status_line = f"HTTP/1.1 {self.status} {self.code}\r\n"
        headers = (f"Content-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
                   f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n")
        return (status_line + headers).encode() + (b"" if head else body)


SLOWDOWN = S3Error(503, "SlowDown", "Please reduce your request rate.")


@dataclass
class FaultProxy:
    """Listens on 127.0.0.1:<port>, forwards to `upstream_port`; `should_fail(request)` picks the 503s."""

    upstream_port: int
    should_fail: Callable[[Request], bool] = lambda request: False
    refuse: Callable[[Request], S3Error | None] = lambda request: None
    seen: list[Request] = field(default_factory=list)
    failed: list[Request] = field(default_factory=list)
    refused: list[tuple[Request, S3Error]] = field(default_factory=list)
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), timeout=5)

    @contextmanager
    def in_thread(self) -> Iterator[FaultProxy]:
        """Run the proxy on an event loop of its own in a thread (for callers whose loop may block on it, such
        as an in-process gateway started by a test client)."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.__aenter__())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.__aexit__())
            loop.close()

        thread = threading.Thread(target=run, name="s3-fault-proxy", daemon=True)
        thread.start()
        assert ready.wait(THREAD_START_TIMEOUT_SEC), "the S3 fault proxy did not start"
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(THREAD_START_TIMEOUT_SEC)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    head = await reader.readuntil(HEAD_END)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, target, headers = _parse_head(head)
                request = Request(method, target, headers)
                self.seen.append(request)
                expect = headers.get("expect", "").lower() == "100-continue"
                refusal: S3Error | None = None
                if self.should_fail(request):
                    self.failed.append(request)
                    refusal = SLOWDOWN
                elif (refusal := self.refuse(request)) is not None:
                    self.refused.append((request, refusal))
                if refusal is not None:
                    if not expect:
                        await _skip_body(reader, headers)
                    writer.write(refusal.response(close=expect, head=method == "HEAD"))
                    await writer.drain()
                    if expect:  # the client never sent the body: this connection cannot carry on
                        return
                    continue
                if upstream is None:
                    upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                up_reader, up_writer = upstream
                up_writer.write(head)
                if expect:
                    interim = await up_reader.readuntil(HEAD_END)
                    writer.write(interim)
                    await writer.drain()
                    if _status(interim) != 100:
                        await _relay_body(up_reader, writer, _parse_head(interim)[2], method, _status(interim))
                        return
                await _relay_body(reader, up_writer, headers, "", 0)
                response = await up_reader.readuntil(HEAD_END)
                writer.write(response)
                await _relay_body(up_reader, writer, _parse_head(response)[2], method, _status(response))
                if _parse_head(response)[2].get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            for stream_writer in (writer, upstream[1] if upstream else None):
                if stream_writer is not None:
                    stream_writer.close()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    first = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return first[0], first[1] if len(first) > 1 else "", headers


def _status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


async def _skip_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    sink = _Sink()
    await _relay_body(reader, sink, headers, "", 0)  # type: ignore[arg-type]


class _Sink:
    def write(self, data: bytes) -> None:
        return

    async def drain(self) -> None:
        return


async def _relay_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str], method: str, status: int
) -> None:
    """Copy one message body as it is framed (Content-Length or chunked); responses to HEAD, 1xx, 204 and 304
    have none. `status` 0 means a request body."""
    if method == "HEAD" or status in NO_BODY_STATUSES or 100 <= status < 200:
        await writer.drain()
        return
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            writer.write(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                    writer.write(line)
                writer.write(b"\r\n")
                break
            writer.write(await reader.readexactly(size + 2))
    else:
        left = int(headers.get("content-length", "0") or 0)
        while left > 0:
            chunk = await reader.read(min(COPY_CHUNK, left))
            if not chunk:
                raise ConnectionError("body cut short")
            writer.write(chunk)
            left -= len(chunk)
    await writer.drain()


