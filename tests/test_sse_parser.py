"""The client's Server-Sent Events parser (services/client/sse.py) on canned byte streams, and the client's
settings (services: load_client_settings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.client.sse import SseEvent, SseParser
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
