"""The raw ASGI routes (services/gateway/fastpath.py) answer POST /api/jobs and GET /api/jobs/{id} exactly as the
Litestar routes do: each request goes to an app with them and to one without, and the status, the body and the
headers must be the same (job ids, and the rate limit's remaining count, aside)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
from litestar.testing import AsyncTestClient

from services.gateway import jobs as gateway_jobs
from services.gateway.app import create_app
from services.gateway.fastpath import JOB_TEMPLATE
from services.gateway.observe import observed
from services.stack.devstack import free_port
from shared.jobs.ids import uuid7
from shared.runtime.metrics import HTTP_REQUESTS
from shared.runtime.resources import Resources
from shared.settings import Settings
from tests.conftest import make_key

GOOD_URL = {"type": "url", "url": "https://media.example/talk.mp4"}
GOOD_JOB = {"source": GOOD_URL, "startSec": 1, "endSec": 2}
GOOD_BATCH = {"source": GOOD_URL, "clips": [{"startSec": 1, "endSec": 2}, {"startSec": "0:03", "endSec": 4}]}
JSON = "application/json"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
UNSTABLE_HEADERS = frozenset({"date", "server"})
RATE_COUNT = re.compile(r";r=\d+;t=\d+")


@pytest.fixture
async def both(settings: Settings, resources: Resources) -> AsyncIterator[tuple[AsyncTestClient[Any], ...]]:
    """(fast, plain): the gateway as served (observe.py outside) with and without the raw routes, each with an
    admin key of its own."""
    async with AsyncTestClient(observed(create_app(settings))) as fast, \
            AsyncTestClient(observed(create_app(settings, fast_path=False))) as plain:
        for client in (fast, plain):
            client.headers["Authorization"] = f"Bearer {await make_key(resources.db, admin=True)}"
        yield fast, plain


def _shape(response: httpx.Response) -> tuple[int, str, list[tuple[str, str]]]:
    """What must be equal both ways: status, body and headers in order (ids and the rate count masked)."""
    headers = [(name.lower(), RATE_COUNT.sub(";r=N;t=N", UUID.sub("ID", value)))
               for name, value in response.headers.multi_items() if name.lower() not in UNSTABLE_HEADERS]
    return response.status_code, UUID.sub("ID", response.text), headers


async def _same(both: tuple[AsyncTestClient[Any], ...], method: str, url: str, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("headers", {})
    kwargs["headers"] = {"X-Request-Id": "parity-1", **kwargs["headers"]}
    answers = [await client.request(method, url, **kwargs) for client in both]
    assert _shape(answers[0]) == _shape(answers[1]), (method, url, kwargs)
    return answers[0]


POSTS: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("job", {"json": GOOD_JOB}, 202, None),
    ("batch", {"json": GOOD_BATCH}, 202, None),
    ("vendor json type", {"content": b'{"source": {"type": "url", "url": "https://a.example/v.mp4"}, "startSec": 1, '
                          b'"endSec": 2}', "headers": {"Content-Type": "application/vnd.clipjet+json"}}, 202, None),
    ("malformed json", {"content": b'{"source": ', "headers": {"Content-Type": JSON}}, 400, "malformed_json"),
    ("too deep", {"content": b"[" * 10_000 + b"]" * 10_000, "headers": {"Content-Type": JSON}}, 400,
     "malformed_json"),
    ("empty body", {"content": b"", "headers": {"Content-Type": JSON}}, 400, "malformed_json"),
    ("text/plain", {"content": b'{"a": 1}', "headers": {"Content-Type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ("no content type", {"content": b'{"a": 1}'}, 415, "unsupported_media_type"),
    ("latin-1", {"content": b"{}", "headers": {"Content-Type": "application/json; charset=latin-1"}}, 415,
     "unsupported_media_type"),
    ("huge body", {"content": b" " * (300 * 1024), "headers": {"Content-Type": JSON}}, 413, "body_too_large"),
    ("unknown field", {"json": {**GOOD_JOB, "precison": "frame"}}, 422, "invalid_field"),
    ("wrong type", {"json": {**GOOD_JOB, "startSec": True}}, 422, "invalid_field"),
    ("missing field", {"json": {"source": GOOD_URL, "startSec": 1}}, 422, "invalid_field"),
    ("bad timecode", {"json": {**GOOD_JOB, "startSec": "1:xx"}}, 422, "invalid_time"),
    ("end before start", {"json": {**GOOD_JOB, "startSec": 3}}, 422, None),
    ("no upload", {"json": {"source": {"type": "upload", "key": f"uploads/{uuid7()}/a.mp4"}, "startSec": 1,
                            "endSec": 2}}, None, None),
    ("empty batch", {"json": {"source": GOOD_URL, "clips": []}}, 422, None),
    ("no key", {"json": GOOD_JOB, "headers": {"Authorization": ""}}, 401, "auth_required"),
    ("bad key", {"json": GOOD_JOB, "headers": {"Authorization": "Bearer cj_nope"}}, 401, "auth_invalid"),
    ("not bearer", {"json": GOOD_JOB, "headers": {"Authorization": "Basic dXNlcjpwYXNz"}}, 401, "auth_invalid"),
    ("idempotency key with a space", {"json": GOOD_JOB, "headers": {"Idempotency-Key": "a b"}}, 422, None),
    ("idempotency key too long", {"json": GOOD_JOB, "headers": {"Idempotency-Key": "k" * 201}}, 422, None),
    ("bad key and bad body", {"content": b"{", "headers": {"Authorization": "Bearer x", "Content-Type": JSON}},
     401, "auth_invalid"),
]


@pytest.mark.parametrize(("name", "request_kwargs", "status", "code"), POSTS, ids=[p[0] for p in POSTS])
async def test_post_answers_are_the_same_both_ways(
    both: tuple[AsyncTestClient[Any], ...], name: str, request_kwargs: dict[str, Any], status: int | None,
    code: str | None,
) -> None:
    response = await _same(both, "POST", "/api/jobs", **request_kwargs)
    if status is not None:
        assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["error"]["code"] == code
    assert response.headers["x-request-id"] == "parity-1"
    if response.status_code != 401 or "Authorization" in request_kwargs.get("headers", {}):
        assert response.headers["ratelimit-policy"].startswith('"clipjet";q=')


async def test_idempotent_replay_and_reuse_are_the_same_both_ways(both: tuple[AsyncTestClient[Any], ...]) -> None:
    first = await _same(both, "POST", "/api/jobs", json=GOOD_JOB, headers={"Idempotency-Key": "same-1"})
    assert first.status_code == 202
    again = await _same(both, "POST", "/api/jobs", json=GOOD_JOB, headers={"Idempotency-Key": "same-1"})
    assert again.json()["id"] == first.json()["id"] and again.headers["location"] == first.headers["location"]
    reused = await _same(both, "POST", "/api/jobs", json={**GOOD_JOB, "endSec": 3},
                         headers={"Idempotency-Key": "same-1"})
    assert (reused.status_code, reused.json()["error"]["code"]) == (422, "idempotency_key_reused")


async def test_get_answers_are_the_same_both_ways(
    both: tuple[AsyncTestClient[Any], ...], resources: Resources
) -> None:
    made = await _same(both, "POST", "/api/jobs", json=GOOD_JOB)
    job_url = made.headers["location"]
    shown = await _same(both, "GET", job_url)
    assert shown.status_code == 200 and shown.json()["id"] == job_url.rsplit("/", 1)[1]
    stranger = await make_key(resources.db)  # not admin: another key's job is not there for it
    for url, headers, status, code in [
        (job_url, {"Authorization": f"Bearer {stranger}"}, 404, "job_not_found"),
        (f"/api/jobs/{uuid7()}", {}, 404, "job_not_found"),
        ("/api/jobs/not-a-uuid", {}, 404, "job_not_found"),
        (f"{job_url}?x=1", {}, 200, None),
        (f"{job_url}/", {}, 200, None),  # Litestar's own (a trailing slash): the same answer
        (job_url, {"Authorization": ""}, 401, "auth_required"),
        (job_url, {"Authorization": "Bearer cj_nope"}, 401, "auth_invalid"),
    ]:
        response = await _same(both, "GET", url, headers=headers)
        assert response.status_code == status, (url, response.text)
        if code is not None:
            assert response.json()["error"]["code"] == code


@pytest.mark.settings(rate_limit_per_min=3)
async def test_rate_limited_answers_are_the_same_both_ways(both: tuple[AsyncTestClient[Any], ...]) -> None:
    statuses = [(await _same(both, "POST", "/api/jobs", json=GOOD_JOB)).status_code for _ in range(3)]
    limited = await _same(both, "GET", f"/api/jobs/{uuid7()}")
    assert statuses == [202, 202, 202] and limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1


async def test_an_unexpected_error_is_the_same_500_both_ways(
    both: tuple[AsyncTestClient[Any], ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(gateway_jobs, "submit_job", broken)
    response = await _same(both, "POST", "/api/jobs", json=GOOD_JOB)
    assert (response.status_code, response.json()["error"]["code"]) == (500, "internal_error")


async def test_fast_routes_are_counted_under_their_route_templates(
    both: tuple[AsyncTestClient[Any], ...]
) -> None:
    fast, _ = both

    def count(route: str, method: str, status: str) -> float:
        return HTTP_REQUESTS.labels(route, method, status)._value.get()  # type: ignore[attr-defined,no-any-return]

    before = count("/api/jobs", "POST", "202"), count(JOB_TEMPLATE, "GET", "404")
    await fast.post("/api/jobs", json=GOOD_JOB)
    await fast.get(f"/api/jobs/{uuid7()}")
    assert (count("/api/jobs", "POST", "202"), count(JOB_TEMPLATE, "GET", "404")) == (before[0] + 1, before[1] + 1)


async def test_the_routes_stay_in_the_api_schema(both: tuple[AsyncTestClient[Any], ...]) -> None:
    fast, _ = both
    paths = (await fast.get("/schema/openapi.json")).json()["paths"]
    assert "post" in paths["/api/jobs"] and "get" in paths["/api/jobs/{job_id}"]


@contextlib.asynccontextmanager
async def _served(app: Any) -> AsyncIterator[str]:
    """`app` under uvicorn on a free port (the test client sends no chunked bodies); its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:  # noqa: ASYNC110 - uvicorn sets a flag, no event
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_a_chunked_body_is_read_and_limited_the_same_both_ways(settings: Settings, resources: Resources) -> None:
    token = await make_key(resources.db, admin=True)
    job = msgspec.json.encode(GOOD_JOB)

    def chunked(parts: list[bytes]) -> Any:
        async def body() -> AsyncIterator[bytes]:  # an async iterator: chunked, no Content-Length
            for part in parts:
                yield part
        return body()

    answers: list[list[httpx.Response]] = [[], []]
    for n, fast_path in enumerate((True, False)):
        async with _served(observed(create_app(settings, fast_path=fast_path))) as url, httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}", "Content-Type": JSON,
                                   "X-Request-Id": "parity-1"}) as http:
            for parts in ([job[:10], job[10:]], [b" " * (64 * 1024)] * 5):  # a job; over 256 KiB
                answers[n].append(await http.post("/api/jobs", content=chunked(parts)))
    assert "content-length" not in answers[0][0].request.headers
    for fast, plain in zip(*answers, strict=True):
        assert _shape(fast) == _shape(plain)
    assert [a.status_code for a in answers[0]] == [202, 413]
    assert answers[0][1].json()["error"]["code"] == "body_too_large"
