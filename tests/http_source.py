"""A local HTTP server for URL sources: serves files with Range support, and can stall or drip (a few bytes a
second, never silent long enough for an idle timeout) to simulate a slow origin."""

from __future__ import annotations

import mimetypes
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RANGE = re.compile(r"bytes=(\d*)-(\d*)")
CHUNK = 64 * 1024
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t"}


class MediaServer:
    """Serves files from a folder at http://127.0.0.1:<port>/<name>; records requests and bytes sent."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.bytes_sent = 0
        self.stall_first_get_sec = 0.0  # hold the first whole-file GET (no Range) this long after its first chunk
        self.stall_every_get_sec = 0.0  # hold every GET this long after its first chunk
        self.fail_first_gets = 0  # answer this many GETs with 503 before serving
        self.first_get_started = threading.Event()
        self.redirects: dict[str, str] = {}  # path -> Location answered with 302
        self.statuses: dict[str, int] = {}  # path -> error status answered instead of the file
        self.ranges = True  # False: ignore Range headers and answer 200 with the whole file (no Accept-Ranges)
        self.etag = True  # send an ETag for each file
        self.content_length = True  # False: no Content-Length, the body ends when the connection closes
        self.send_buffer_bytes = 0  # > 0: the socket send buffer, so bytes_sent is close to what left the server
        self.silent_before_headers_sec = 0.0  # > 0: accept the request, then send nothing this long (a silent origin)
        self.drip_bytes_per_sec = 0.0  # > 0: past drip_after_bytes of a body, send it this slowly, one byte at a time
        self.drip_after_bytes = 0  # bytes of each body sent at full speed before the drip starts
        self._stalled = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def __enter__(self) -> MediaServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def setup(self) -> None:
                if server.send_buffer_bytes:
                    self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, server.send_buffer_bytes)
                super().setup()

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                server.requests.append((self.command, self.path, self.headers.get("Range")))
                if server.silent_before_headers_sec > 0:
                    time.sleep(server.silent_before_headers_sec)
                with server._lock:
                    failing = body and server.fail_first_gets > 0
                    server.fail_first_gets -= 1 if failing else 0
                if failing:
                    self.send_error(503)
                    return
                route = self.path.split("?")[0]
                if route in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[route])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route in server.statuses:
                    self.send_error(server.statuses[route])
                    return
                path = server.folder / route.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                size = path.stat().st_size
                start, end = 0, size - 1
                match = RANGE.fullmatch(self.headers.get("Range", "") or "") if server.ranges else None
                if match and (match.group(1) or match.group(2)):
                    if match.group(1):
                        start = int(match.group(1))
                        end = int(match.group(2)) if match.group(2) else size - 1
                    else:
                        start = max(0, size - int(match.group(2)))
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.end_headers()
                        return
                    end = min(end, size - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                if server.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                if server.etag:
                    self.send_header("ETag", f'"{size}-{int(path.stat().st_mtime)}"')
                content_type = CONTENT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "video/mp4"
                self.send_header("Content-Type", content_type)
                if server.content_length:
                    self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if body and server.drip_bytes_per_sec > 0:
                    self._drip_body(path, start, end)
                elif body:
                    self._send_body(path, start, end)

            def _drip_body(self, path: Path, start: int, end: int) -> None:
                with path.open("rb") as handle:
                    handle.seek(start)
                    data = handle.read(end - start + 1)
                fast, slow = data[:server.drip_after_bytes], data[server.drip_after_bytes:]
                try:
                    self.wfile.write(fast)
                    self.wfile.flush()
                    server.bytes_sent += len(fast)
                    for index in range(len(slow)):
                        time.sleep(1 / server.drip_bytes_per_sec)
                        self.wfile.write(slow[index:index + 1])
                        self.wfile.flush()
                        server.bytes_sent += 1
                except (BrokenPipeError, ConnectionResetError):
                    return

            def _send_body(self, path: Path, start: int, end: int) -> None:
                with server._lock:  # a first whole-file download (no Range, more than a chunk) stalls once
                    long_body = end - start + 1 > CHUNK and self.headers.get("Range") is None
                    first = server.stall_first_get_sec if not server._stalled and long_body else 0.0
                    stall = first or server.stall_every_get_sec
                    server._stalled = server._stalled or stall > 0
                with path.open("rb") as handle:
                    handle.seek(start)
                    remaining = end - start + 1
                    first = True
                    while remaining > 0:
                        chunk = handle.read(min(CHUNK, remaining))
                        if not chunk:
                            break
                        try:
                            self.wfile.write(chunk)
                            self.wfile.flush()
                        except (BrokenPipeError, ConnectionResetError):
                            return
                        server.bytes_sent += len(chunk)
                        remaining -= len(chunk)
                        if first and long_body:
                            server.first_get_started.set()
                            first = False
                            if stall:
                                time.sleep(stall)

        return Handler
