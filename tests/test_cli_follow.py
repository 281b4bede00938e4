"""How the client follows a job (services/client/follow.py), against a loopback HTTP server that answers as the
contract of issue 15 says a gateway does: an event stream that breaks off and is resumed with Last-Event-ID, a
gateway without /events (404: polling), and another key's job (404 job_not_found: an error, no polling)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from services.client.api import Api, ApiError
from services.client.follow import Update, follow

JOB = "01a23409-864d-7b35-a887-ba4c414d1bff"
WAIT_SEC = 20.0  # the deadline given to follow(): every test ends well before it


def view(status: str, progress: float) -> dict[str, Any]:
    return {"id": JOB, "status": status, "priority": "normal", "stage": None if status == "done" else "trim",
            "progress": progress, "attempts": 1, "createdAt": "2026-12-01T00:00:00+00:00",
            "updatedAt": "2026-12-01T00:00:01+00:00", "request": None, "errorCode": None, "errorMessage": None,
            "result": None, "urls": None, "metadata": None}


def progress(n: int, pct: float) -> bytes:
    data = json.dumps({"jobId": JOB, "status": "processing", "stage": "trim", "pct": pct})
    return f"id: {n}\r\nevent: progress\r\ndata: {data}\r\n\r\n".encode()


class Gateway:
    """`mode`: "stream" (a stream that drops after two events, then resumes), "no-stream" or "foreign"."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.resumed_after: list[str | None] = []  # Last-Event-ID of each stream request
        self.polls = 0
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                if self.path == f"/api/jobs/{JOB}/events":
                    gateway.events(self)
                elif self.path == f"/api/jobs/{JOB}":
                    gateway.polls += 1
                    self._json(200, view("done", 1.0) if gateway.polls >= 3 else view("processing", 0.3))
                else:
                    self._json(404, {"error": {"code": "not_found", "message": "no route"}})

            def _json(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.handler = Handler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    def events(self, request: Any) -> None:
        if self.mode == "no-stream":
            return request._json(404, {"error": {"code": "not_found", "message": "Not Found"}})
        if self.mode == "foreign":
            return request._json(404, {"error": {"code": "job_not_found", "message": f"no job with id {JOB}"}})
        last = request.headers.get("Last-Event-ID")
        self.resumed_after.append(last)
        request.send_response(200)
        request.send_header("Content-Type", "text/event-stream")
        request.send_header("Cache-Control", "no-cache")
        request.send_header("Connection", "close")
        request.end_headers()
        if last is None:  # the first connection breaks off after two events (no end event)
            request.wfile.write(b": ping\n\n" + progress(1, 0.25) + progress(2, 0.5))
        else:
            end = json.dumps(view("done", 1.0))
            request.wfile.write(b": ping\n\n" + progress(3, 0.75) + f"id: 4\nevent: end\ndata: {end}\n\n".encode())
        request.wfile.flush()
        request.close_connection = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def gateway(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    server = Gateway(request.param)
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _follow(gateway: Gateway, notes: list[str], updates: list[Update]) -> dict[str, Any]:
    api = Api(gateway.url, "cj_test_key", timeout_sec=5)
    try:
        raw, final = follow(api, JOB, updates.append, deadline=time.monotonic() + WAIT_SEC, poll_sec=0.05,
                            on_note=notes.append)
    finally:
        api.close()
    assert final.status == "done"
    return raw


@pytest.mark.parametrize("gateway", ["stream"], indirect=True)
def test_a_broken_stream_resumes_after_the_last_event_id(gateway: Gateway) -> None:
    notes: list[str] = []
    updates: list[Update] = []
    raw = _follow(gateway, notes, updates)
    assert raw == view("done", 1.0)  # the end event's data, as sent
    assert gateway.resumed_after == [None, "2"]
    assert [u.pct for u in updates] == [0.25, 0.5, 0.75] and {u.stage for u in updates} == {"trim"}
    assert notes == [] and gateway.polls == 0


@pytest.mark.parametrize("gateway", ["no-stream"], indirect=True)
def test_without_an_event_stream_the_client_polls(gateway: Gateway) -> None:
    notes: list[str] = []
    updates: list[Update] = []
    _follow(gateway, notes, updates)
    assert gateway.polls == 3 and [u.pct for u in updates] == [0.3, 0.3]
    assert len(notes) == 1 and "polling" in notes[0]


@pytest.mark.parametrize("gateway", ["foreign"], indirect=True)
def test_another_keys_job_is_an_error_not_a_reason_to_poll(gateway: Gateway) -> None:
    with pytest.raises(ApiError) as refused:
        _follow(gateway, [], [])
    assert (refused.value.status, refused.value.code) == (404, "job_not_found")
    assert gateway.polls == 0
