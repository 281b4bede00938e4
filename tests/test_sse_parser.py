"""The client's Server-Sent Events parser (services/client/sse.py) on canned byte streams, and the client's
settings (services: load_client_settings)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from services.client.sse import MAX_EVENT_BYTES, MAX_LINE_BYTES, SseEvent, SseParser, SseTooLarge
from shared.settings import load_client_settings

END_VIEW = {"id": "j1", "status": "done", "progress": 1.0, "urls": {"video": "http://s3/clip.mp4?sig=é"}}
STREAM = (
    b": ping\n\n"
    b"id: 1\nevent: progress\n"
    b'data: {"jobId": "j1", "status": "processing", "stage": "fetch", "pct": 0.25}\n\n'
    b"id: 2\r\nevent: progress\r\n"
    b'data: {"jobId": "j1", "status": "processing", "stage": "trim", "pct": 0.5}\r\n\r\n'
    b": ping\r\r"
    b"retry: 1000\nid: 3\revent: end\rdata:" + json.dumps(END_VIEW, ensure_ascii=False).encode() + b"\r\r"
)
EXPECTED = [
    SseEvent("progress", '{"jobId": "j1", "status": "processing", "stage": "fetch", "pct": 0.25}', "1"),
    SseEvent("progress", '{"jobId": "j1", "status": "processing", "stage": "trim", "pct": 0.5}', "2"),
    SseEvent("end", json.dumps(END_VIEW, ensure_ascii=False), "3"),
]


def _parse(chunks: list[bytes]) -> list[SseEvent]:
    parser = SseParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_whole_stream() -> None:
    assert _parse([STREAM]) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_any_chunking_gives_the_same_events(size: int) -> None:
    """Chunk ends fall inside CRLF pairs, inside UTF-8 characters and inside field names."""
    assert _parse([STREAM[i:i + size] for i in range(0, len(STREAM), size)]) == EXPECTED


def test_field_rules() -> None:
    events = _parse([
        b"data: one\ndata:two\ndata:  three\n\n"  # lines join with LF; one space after the colon is dropped
        b"event: quiet\n\n"  # no data: nothing is dispatched, and the type does not carry over
        b"data\n\n"  # a field without a colon has an empty value
        b"id: 7\ndata: x\n\n"
        b"data: y\n\n"  # the last id carries over
        b"id: a\0b\ndata: z\n\n"  # an id with NUL is ignored
        b"data: incomplete"  # no blank line yet: not dispatched
    ])
    assert events == [
        SseEvent("message", "one\ntwo\n three", None), SseEvent("message", "", None),
        SseEvent("message", "x", "7"), SseEvent("message", "y", "7"), SseEvent("message", "z", "7"),
    ]


def test_client_settings_from_the_environment_and_the_stack_env(tmp_path: Path) -> None:
    stack_env = tmp_path / "stack.env"
    assert load_client_settings({}, stack_env).clipjet_api_url == "http://127.0.0.1:8080"
    stack_env.write_text("GATEWAY_HOST=0.0.0.0\nGATEWAY_PORT=18080\nCLIPJET_API_KEY='cj_abc_def'\n")
    from_stack = load_client_settings({}, stack_env)
    assert (from_stack.clipjet_api_url, from_stack.clipjet_api_key) == ("http://127.0.0.1:18080", "cj_abc_def")
    mine = load_client_settings({"CLIPJET_API_URL": "https://clips.example", "CLIPJET_API_KEY": "cj_x_y",
                                 "CLIPJET_POLL_SEC": "2"}, stack_env)
    assert (mine.clipjet_api_url, mine.clipjet_api_key, mine.clipjet_poll_sec) == ("https://clips.example",
                                                                                   "cj_x_y", 2.0)


def test_the_url_and_key_come_from_one_place(tmp_path: Path) -> None:
    stack_env = tmp_path / "stack.env"
    stack_env.write_text("GATEWAY_HOST=127.0.0.1\nGATEWAY_PORT=18080\nCLIPJET_API_KEY=cj_stack_key\n")
    notes: list[str] = []
    key_only = load_client_settings({"CLIPJET_API_KEY": "cj_mine"}, stack_env, notes.append)
    assert (key_only.clipjet_api_url, key_only.clipjet_api_key) == ("http://127.0.0.1:8080", "cj_mine")
    url_only = load_client_settings({"CLIPJET_API_URL": "https://clips.example"}, stack_env, notes.append)
    assert (url_only.clipjet_api_url, url_only.clipjet_api_key) == ("https://clips.example", "")
    assert notes == []  # the file was not read
    from_file = load_client_settings({}, stack_env, notes.append)
    assert (from_file.clipjet_api_url, from_file.clipjet_api_key) == ("http://127.0.0.1:18080", "cj_stack_key")
    assert len(notes) == 1 and str(stack_env) in notes[0]
    for host in ("10.0.0.7", "clips.example", "192.168.1.2"):
        stack_env.write_text(f"GATEWAY_HOST={host}\nGATEWAY_PORT=18080\nCLIPJET_API_KEY=cj_stack_key\n")
        far = load_client_settings({}, stack_env, notes.append)
        assert (far.clipjet_api_url, far.clipjet_api_key) == ("http://127.0.0.1:8080", ""), host
        assert "ignored" in notes[-1]
    for host, url in (("localhost", "http://localhost:18080"), ("::1", "http://[::1]:18080"),
                      ("127.0.0.2", "http://127.0.0.2:18080")):
        stack_env.write_text(f"GATEWAY_HOST={host}\nGATEWAY_PORT=18080\nCLIPJET_API_KEY=cj_stack_key\n")
        assert load_client_settings({}, stack_env).clipjet_api_url == url


def test_long_input_takes_linear_time() -> None:
    lines = 80_000  # 33.7 s before the parser was made linear (quadratic: re-copying the rest after each line)
    began = time.monotonic()
    assert SseParser().feed(b": ping\n" * lines + b"data: x\n\n") == [SseEvent("message", "x", None)]
    assert time.monotonic() - began < 3.0


def test_a_line_without_end_is_bounded() -> None:
    parser, fed = SseParser(), 0
    chunk = b"x" * 65536
    with pytest.raises(SseTooLarge, match="longer than"):
        while fed < 8 * MAX_LINE_BYTES:  # a 200 MB line would be held whole
            parser.feed(chunk)
            fed += len(chunk)
    assert fed <= MAX_LINE_BYTES + len(chunk)
    with pytest.raises(SseTooLarge, match="longer than"):
        SseParser().feed(b"data: " + b"y" * MAX_LINE_BYTES + b"\n\n")  # in one chunk, with its end


def test_an_events_data_is_bounded() -> None:
    parser = SseParser()
    line = b"data: " + b"z" * 65536 + b"\n"
    assert parser.feed(line * (MAX_EVENT_BYTES // 65536 - 1) + b"\n")  # under the bound: an event
    with pytest.raises(SseTooLarge, match="data is larger"):
        parser.feed(line * (MAX_EVENT_BYTES // 65536 + 1))
