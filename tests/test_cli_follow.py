"""How the client follows a job (services/client/follow.py), against a loopback HTTP server that answers as the
contract of issue 15 says a gateway does: an event stream that breaks off and is resumed with Last-Event-ID, a
gateway without /events (404: polling), and another key's job (404 job_not_found: an error, no polling); and
`clipjet` commands run as a process against it: views off the contract, hostile text, where settings come from."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.client.api import Api, ApiError
from services.client.display import PlainDisplay, RichDisplay
from services.client.follow import Update, follow
from services.client.results import save_results
from shared.jobs.contracts import ResultUrls

REPO = Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT_SEC = 60.0  # longest one `clipjet` process may run in these tests
HOSTILE = "\x1b[2J\x1b]0;pwned\x07red\x1b[31m\u202eevil\u2066\u200b[/oops]\r\x9b1m"  # what a gateway could send

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
    """`mode`: "stream" (a stream that drops after two events, then resumes), "no-stream", "foreign",
    "bad-view" (no stream; the job's view off the contract), "bad-end" (an end event off the contract) or "hostile"
    (terminal escapes, bidi and markup in the job list and in error answers), "clip" (no stream; a job that is
    done at once, its clip served here)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.resumed_after: list[str | None] = []  # Last-Event-ID of each stream request
        self.polls = 0
        self.authorizations: list[str | None] = []  # the Authorization header of each request
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                gateway.authorizations.append(self.headers.get("Authorization"))
                if self.path == f"/api/jobs/{JOB}/events":
                    gateway.events(self)
                elif self.path == "/api/jobs" and gateway.mode == "clip" and self.command == "POST":
                    self.rfile.read(int(self.headers.get("Content-Length", "0")))
                    self._json(201, {"id": JOB})
                elif self.path == f"/api/jobs/{JOB}" and gateway.mode == "clip":
                    self._json(200, {**view("done", 1.0), "urls": {"video": f"{gateway.url}/clip.mp4",
                                                                   "expiresInSec": 600}})
                elif self.path == "/clip.mp4":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(CLIP_BYTES)))
                    self.end_headers()
                    self.wfile.write(CLIP_BYTES)
                elif self.path == f"/api/jobs/{JOB}" and gateway.mode == "bad-view":
                    gateway.polls += 1
                    self._json(200, {**view("processing", 0.3), "status": 7, "progress": "lots"})
                elif self.path == f"/api/jobs/{JOB}":
                    gateway.polls += 1
                    self._json(200, view("done", 1.0) if gateway.polls >= 3 else view("processing", 0.3))
                elif self.path.startswith("/api/jobs?") and gateway.mode == "hostile":
                    failed = {**view("failed", 0.0), "errorCode": HOSTILE, "errorMessage": HOSTILE}
                    self._json(200, {"jobs": [failed, {**view("processing", 0.5), "stage": HOSTILE}]})
                elif self.path.startswith("/api/jobs?") and gateway.mode == "bad-view":
                    self._json(200, {"jobs": [{"id": JOB}]})
                elif self.path.startswith("/api/jobs?"):
                    self._json(200, {"jobs": [view("done", 1.0)]})
                elif gateway.mode == "hostile":
                    self._json(400, {"error": {"code": HOSTILE, "message": HOSTILE}})
                else:
                    self._json(404, {"error": {"code": "not_found", "message": "no route"}})

            do_POST = do_GET

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
        if self.mode in ("no-stream", "bad-view", "hostile", "clip"):
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
        if self.mode == "bad-end":
            last = "2"  # the end event comes at once
        if last is None:  # the first connection breaks off after two events (no end event)
            request.wfile.write(b": ping\n\n" + progress(1, 0.25) + progress(2, 0.5))
        else:
            end = json.dumps(view("done", 1.0) if self.mode == "stream" else {**view("done", 1.0), "status": None})
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


@pytest.mark.parametrize("gateway", ["bad-view", "bad-end"], indirect=True)
def test_a_view_off_the_contract_is_an_error_not_a_traceback(gateway: Gateway) -> None:
    with pytest.raises(ApiError) as refused:
        _follow(gateway, [], [])
    assert refused.value.code == "unexpected_answer"
    assert "the gateway sent an answer this client does not understand" in str(refused.value)
    assert gateway.polls == (1 if gateway.mode == "bad-view" else 0)


def clipjet(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`clipjet …` as a process, with only `env`'s CLIPJET_* settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLIPJET_")}
    return subprocess.run([sys.executable, "-m", "services", *args], cwd=cwd, capture_output=True, text=True,
                          env={**base, "PYTHONPATH": str(REPO), **env}, timeout=COMMAND_TIMEOUT_SEC, check=False)


@pytest.mark.parametrize("gateway", ["bad-view"], indirect=True)
def test_jobs_with_a_list_off_the_contract_exits_1(gateway: Gateway, tmp_path: Path) -> None:
    done = clipjet("jobs", env={"CLIPJET_API_URL": gateway.url, "CLIPJET_API_KEY": "cj_k_s"}, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "does not understand" in done.stderr and "Traceback" not in done.stderr


CLIP_BYTES = b"\0\0\0\x18ftypmp42 not a real clip"


@pytest.mark.parametrize("gateway", ["clip"], indirect=True)
def test_output_naming_a_folder_saves_the_clip_inside_it(gateway: Gateway, tmp_path: Path) -> None:
    env = {"CLIPJET_API_URL": gateway.url, "CLIPJET_API_KEY": "cj_k_s"}
    (tmp_path / "clips").mkdir()
    done = clipjet("clip", "http://127.0.0.1:9/talk.mp4", "--start", "1", "--end", "2.5", "-o", "clips",
                   "--poll", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "clips" / "talk_1-2.5.mp4").read_bytes() == CLIP_BYTES
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == ["talk_1-2.5.mp4"]  # no .part left
    named = clipjet("clip", "http://127.0.0.1:9/talk.mp4", "--start", "1", "--end", "2", "-o", "clips/mine.mp4",
                    "--poll", env=env, cwd=tmp_path)
    assert named.returncode == 0 and (tmp_path / "clips" / "mine.mp4").read_bytes() == CLIP_BYTES


@pytest.mark.parametrize("gateway", ["clip"], indirect=True)
def test_a_download_that_cannot_take_its_name_is_kept(gateway: Gateway, tmp_path: Path) -> None:
    taken = tmp_path / "clip.mp4"
    taken.mkdir()  # e.g. made while the job ran
    api = Api(gateway.url, "", timeout_sec=5)
    try:
        with pytest.raises(ApiError) as failed:
            save_results(api, ResultUrls(video=f"{gateway.url}/clip.mp4", expires_in_sec=600), taken,
                         PlainDisplay(io.StringIO()))
    finally:
        api.close()
    assert failed.value.code == "save_failed" and "clip.mp4.part" in str(failed.value)
    assert (tmp_path / "clip.mp4.part").read_bytes() == CLIP_BYTES


@pytest.mark.parametrize("gateway", ["stream"], indirect=True)
@pytest.mark.parametrize("limit", ["0", "-3", "x"])
def test_jobs_limit_below_one_is_a_usage_error(gateway: Gateway, tmp_path: Path, limit: str) -> None:
    done = clipjet("jobs", "--limit", limit, env={"CLIPJET_API_URL": gateway.url, "CLIPJET_API_KEY": "k"},
                   cwd=tmp_path)
    assert done.returncode == 2 and "--limit" in done.stderr
    assert gateway.authorizations == []  # nothing was asked
    assert clipjet("jobs", "--limit", "1", env={"CLIPJET_API_URL": gateway.url}, cwd=tmp_path).returncode == 0


UNSAFE = ("\x1b", "\x07", "\r", "\x9b", "\u202e", "\u2066", "\u200b")


@pytest.mark.parametrize("gateway", ["hostile"], indirect=True)
def test_the_gateways_text_reaches_the_terminal_without_controls(gateway: Gateway, tmp_path: Path) -> None:
    env = {"CLIPJET_API_URL": gateway.url, "CLIPJET_API_KEY": "cj_k_s"}
    listed = clipjet("jobs", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "evil" in listed.stdout and "[/oops]" in listed.stdout  # the text is shown, without what it hid
    refused = clipjet("clip", "http://127.0.0.1:9/v.mp4", "--start", "0", "--end", "1", env=env, cwd=tmp_path)
    assert refused.returncode == 1 and "evil" in refused.stderr
    for output in (listed.stdout, refused.stderr):
        assert not [char for char in UNSAFE if char in output], repr(output)


def test_markup_in_a_stage_does_not_break_the_live_bar() -> None:
    screen = io.StringIO()
    display = RichDisplay(screen)
    try:
        display.job(Update("processing", HOSTILE, 0.5))
    finally:
        display.close()
    assert "[/oops]" in screen.getvalue() and "\u202e" not in screen.getvalue()


@pytest.mark.parametrize("gateway", ["stream"], indirect=True)
@pytest.mark.parametrize("where", ["env-key", "file", "far-file"])
def test_the_key_goes_only_where_its_settings_came_from(gateway: Gateway, tmp_path: Path, where: str) -> None:
    (tmp_path / ".data").mkdir()
    host = "10.255.255.1" if where == "far-file" else "127.0.0.1"
    port = gateway.server.server_address[1]
    (tmp_path / ".data" / "stack.env").write_text(f"GATEWAY_HOST={host}\nGATEWAY_PORT={port}\n"
                                                  "CLIPJET_API_KEY=cj_stack_key\n")
    env = {"CLIPJET_API_KEY": "cj_mine_secret", "CLIPJET_HTTP_TIMEOUT_SEC": "2"} if where == "env-key" else {
        "CLIPJET_HTTP_TIMEOUT_SEC": "2"}
    done = clipjet("jobs", env=env, cwd=tmp_path)
    if where == "file":
        assert done.returncode == 0, done.stderr
        assert gateway.authorizations == ["Bearer cj_stack_key"]
        assert "stack.env" in done.stderr  # the user is told where the gateway and key came from
    else:  # the environment's key never goes to the file's gateway; a far gateway in the file is not used
        assert gateway.authorizations == []
        assert "stack.env" not in done.stderr if where == "env-key" else "ignored" in done.stderr
