"""API keys on the real gateway, PostgreSQL and NATS: auth, ownership, quotas, the shared rate limit, listing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from services.gateway.app import create_app
from services.stack.devstack import free_port
from shared.db import keys
from shared.runtime.resources import Resources
from shared.settings import Settings, settings_env
from tests.conftest import Workers, authorize, make_key, wait_for_job
from tests.gateway_proc import gateway_process
from tests.http_source import MediaServer

REPO = Path(__file__).resolve().parent.parent
URL_SOURCE = {"type": "url", "url": "https://media.example.com/talk.mp4"}


def job_body(start: float = 1, end: float = 3, **extra: Any) -> dict[str, Any]:
    return {"source": URL_SOURCE, "startSec": start, "endSec": end, **extra}


async def test_requests_without_a_valid_key_are_refused(client: AsyncTestClient[Any], resources: Resources) -> None:
    token = client.headers.pop("Authorization")
    missing = await client.post("/api/jobs", json=job_body())
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "auth_required"
    assert "<redacted>" not in missing.json()["error"]["message"]  # says what to send, readably
    for bad in ("Bearer nope", "Bearer cj_000000000000_" + "A" * 43, "Basic " + token.split()[1],
                token[:-1] + ("A" if token[-1] != "A" else "B")):
        answer = await client.get("/api/jobs", headers={"Authorization": bad})
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "auth_invalid", bad
    assert (await client.get("/api/jobs", headers={"Authorization": token})).status_code == 200
    assert (await client.get("/health")).status_code == 200  # probes need no key


@pytest.mark.settings(key_cache_sec=0.3)
async def test_a_revoked_key_stops_working_within_the_cache_time(
    client: AsyncTestClient[Any], resources: Resources
) -> None:
    token = await authorize(client, resources.db)
    assert (await client.get("/api/usage")).status_code == 200
    assert await keys.revoke_key(resources.db, token.split("_")[1])
    await asyncio.sleep(0.4)
    refused = await client.get("/api/usage")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "auth_invalid"


async def test_jobs_and_uploads_belong_to_their_key(client: AsyncTestClient[Any], resources: Resources) -> None:
    admin = client.headers["Authorization"]
    alice = {"Authorization": f"Bearer {await make_key(resources.db, 'alice')}"}
    bob = {"Authorization": f"Bearer {await make_key(resources.db, 'bob')}"}
    made = await client.post("/api/jobs", json=job_body(), headers=alice)
    assert made.status_code == 202, made.text
    job_id = made.json()["id"]
    assert made.headers["Location"] == f"/api/jobs/{job_id}"
    assert (await client.get(f"/api/jobs/{job_id}", headers=alice)).status_code == 200
    other = await client.get(f"/api/jobs/{job_id}", headers=bob)
    assert other.status_code == 404 and other.json()["error"]["code"] == "job_not_found"
    assert other.json()["error"]["message"] == f"no job with id {job_id}"  # as if there were none
    assert (await client.get(f"/api/jobs/{job_id}", headers={"Authorization": admin})).status_code == 200
    assert [j["id"] for j in (await client.get("/api/jobs", headers=bob)).json()["jobs"]] == []
    assert [j["id"] for j in (await client.get("/api/jobs", headers=alice)).json()["jobs"]] == [job_id]

    slot = (await client.post("/api/uploads", json={"filename": "a.mp4", "sizeBytes": 1000}, headers=alice)).json()
    used_by_bob = await client.post("/api/jobs", json={"source": {"type": "upload", "key": slot["key"]},
                                                       "startSec": 1, "endSec": 2}, headers=bob)
    assert used_by_bob.status_code == 422 and used_by_bob.json()["error"]["code"] == "upload_not_found"
    status = await client.get("/api/uploads/status", params={"key": slot["key"], "uploadId": "x"}, headers=bob)
    assert status.status_code == 404 and status.json()["error"]["code"] == "upload_not_found"


async def test_priority_is_an_entitlement_of_the_key(client: AsyncTestClient[Any], resources: Resources) -> None:
    await authorize(client, resources.db, priorities=("normal", "bulk"))
    refused = await client.post("/api/jobs", json=job_body(priority="fast"))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "priority_not_allowed"
    assert (await client.post("/api/jobs", json=job_body(priority="bulk"))).status_code == 202


async def test_idempotency_keys_belong_to_the_caller(client: AsyncTestClient[Any], resources: Resources) -> None:
    alice = {"Authorization": f"Bearer {await make_key(resources.db, 'alice')}", "Idempotency-Key": "order-1"}
    bob = {"Authorization": f"Bearer {await make_key(resources.db, 'bob')}", "Idempotency-Key": "order-1"}
    first = await client.post("/api/jobs", json=job_body(1, 3), headers=alice)
    other = await client.post("/api/jobs", json=job_body(4, 6), headers=bob)
    assert first.status_code == other.status_code == 202, other.text
    assert first.json()["id"] != other.json()["id"]
    again = await client.post("/api/jobs", json=job_body(1, 3), headers=alice)
    assert again.json()["id"] == first.json()["id"]


async def test_quotas_hold_across_two_gateways_at_once(settings: Settings, resources: Resources) -> None:
    quotas = keys.Quotas(max_in_flight=3, max_jobs_per_day=100, max_source_seconds_per_day=1e6)
    token = await make_key(resources.db, "small", quotas=quotas)
    auth = {"Authorization": f"Bearer {token}"}
    async with AsyncTestClient(create_app(settings)) as one, AsyncTestClient(create_app(settings)) as two:
        answers = await asyncio.gather(*(
            (one if n % 2 else two).post("/api/jobs", json=job_body(n, n + 1), headers=auth) for n in range(10)
        ))
    codes = sorted(a.status_code for a in answers)
    assert codes == [202] * 3 + [429] * 7, [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 429)
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded" and "jobs_in_flight" in error["message"]
    assert int(refused.headers["Retry-After"]) > 0
    counted = await resources.db.fetchval("SELECT count(*) FROM jobs")
    assert counted == 3  # a refused request writes nothing


async def test_daily_quotas_and_usage(client: AsyncTestClient[Any], resources: Resources) -> None:
    quotas = keys.Quotas(max_in_flight=100, max_jobs_per_day=100, max_source_seconds_per_day=10)
    await authorize(client, resources.db, quotas=quotas)
    assert (await client.post("/api/jobs", json=job_body(0, 6))).status_code == 202
    over = await client.post("/api/jobs", json=job_body(0, 5))
    assert over.status_code == 429 and "source_seconds_per_day" in over.json()["error"]["message"]
    usage = (await client.get("/api/usage")).json()
    assert usage["jobsInFlight"] == {"used": 1, "limit": 100}
    assert usage["sourceSecondsToday"] == {"used": 6, "limit": 10}
    assert usage["jobsToday"]["used"] == 1
    await authorize(client, resources.db, quotas=keys.Quotas(100, 1, 1e6))
    assert (await client.post("/api/jobs", json=job_body())).status_code == 202
    over = await client.post("/api/jobs", json=job_body())
    assert over.status_code == 429 and "jobs_per_day" in over.json()["error"]["message"]


async def test_listing_pages_newest_first(client: AsyncTestClient[Any], resources: Resources) -> None:
    await authorize(client, resources.db)
    made = [(await client.post("/api/jobs", json=job_body(n, n + 1))).json()["id"] for n in range(5)]
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        page = (await client.get("/api/jobs", params={"limit": 2} | ({"cursor": cursor} if cursor else {}))).json()
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == made[::-1]
    assert (await client.get("/api/jobs", params={"status": "done"})).json()["jobs"] == []
    assert len((await client.get("/api/jobs", params={"status": "queued"})).json()["jobs"]) == 5
    bad = await client.get("/api/jobs", params={"cursor": "garbage!"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "cursor"


@pytest.mark.settings(auth="off")
async def test_auth_off_needs_no_key(client: AsyncTestClient[Any]) -> None:
    client.headers.pop("Authorization")
    assert (await client.post("/api/jobs", json=job_body(priority="fast"))).status_code == 202


@pytest.mark.settings(rate_limit_per_min=8, rate_limit_anon_per_min=4)
async def test_rate_limit_is_shared_by_two_gateway_processes(settings: Settings, resources: Resources) -> None:
    token = await make_key(resources.db)
    with gateway_process(settings, free_port()) as first, gateway_process(settings, free_port()) as second:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
            answers = [await http.get(f"{(first, second)[n % 2]}/api/usage") for n in range(12)]
            assert [a.status_code for a in answers] == [200] * 8 + [429] * 4
            limited = answers[-1]
            assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
            assert limited.headers["RateLimit-Policy"] == '"clipjet";q=8;w=60'
            assert answers[0].headers["RateLimit"].startswith('"clipjet";r=7;t=')
        async with httpx.AsyncClient(timeout=10) as anonymous:  # no key: limited per client address
            codes = [(await anonymous.get(f"{(first, second)[n % 2]}/api/jobs")).status_code for n in range(6)]
            assert codes == [401] * 4 + [429] * 2
            spoofed = await anonymous.get(f"{first}/api/jobs", headers={"X-Forwarded-For": "10.9.8.7"})
            assert spoofed.status_code == 429  # no trusted proxy: a client cannot pick another address to count on


def test_keys_command_creates_lists_and_revokes(settings: Settings, resources: Resources) -> None:
    env = {**os.environ, **settings_env(settings)}

    def clipjet(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services", "keys", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)

    made = clipjet("create", "--name", "ci robot", "--priorities", "bulk", "--max-in-flight", "7")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    key_id = token.split("_")[1]
    assert token.startswith(f"cj_{key_id}_") and len(token) > 50
    listed = clipjet("list").stdout
    assert key_id in listed and "ci robot" in listed and "active" in listed and token not in listed
    stored = asyncio.run(_stored_secret(settings, key_id))
    assert token.split("_", 2)[2].encode() not in stored  # only a hash is kept
    assert clipjet("revoke", key_id).returncode == 0
    assert "revoked" in clipjet("list").stdout


async def _stored_secret(settings: Settings, key_id: str) -> bytes:
    import asyncpg

    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.db_schema})
    try:
        return bytes(await conn.fetchval("SELECT secret_sha256 FROM api_keys WHERE id = $1", key_id))
    finally:
        await conn.close()


async def _stages_run(resources: Resources, job_id: str) -> list[str]:
    import uuid

    from shared.db import jobs

    return [e["data"]["stage"] for e in await jobs.job_events(resources.db, uuid.UUID(job_id))
            if e["type"] == "stage_started"]


async def test_an_identical_request_is_answered_from_an_earlier_result_only_for_the_same_key(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path
) -> None:
    alice = {"Authorization": f"Bearer {await make_key(resources.db, 'alice')}"}
    bob = {"Authorization": f"Bearer {await make_key(resources.db, 'bob')}"}
    workers.start()
    with MediaServer(sample_video.parent) as origin:
        body = {"source": {"type": "url", "url": origin.url(sample_video.name)}, "startSec": 2, "endSec": 4}
        ids = []
        for headers in (alice, alice, bob):
            made = await client.post("/api/jobs", json=body, headers=headers)
            assert made.status_code == 202, made.text
            ids.append(made.json()["id"])
            assert (await wait_for_job(client, ids[-1]))["status"] == "done"
    first, repeat, other = [await _stages_run(resources, job_id) for job_id in ids]
    assert "trim" in first
    assert repeat == ["fetch"]  # the same key's identical request: finished from the first result
    assert "trim" in other  # another key's identical request is cut for it, not answered from alice's job


async def test_the_reaper_drops_rate_windows_no_request_counts_any_more(resources: Resources) -> None:
    from services.reaper.handler import reap_once

    now = int(time.time())
    current = now - now % keys.RATE_WINDOW_SEC
    for start in (current - 5 * keys.RATE_WINDOW_SEC, current - keys.RATE_WINDOW_SEC, current):
        await keys.rate_hit(resources.db, "key:reaped", start, keys.RATE_WINDOW_SEC)
    await reap_once(resources)
    kept = await resources.db.fetch("SELECT window_start FROM rate_windows WHERE subject = 'key:reaped'")
    assert sorted(r["window_start"] for r in kept) == [current - keys.RATE_WINDOW_SEC, current]


async def test_upload_slots_count_against_the_keys_bytes_per_day(
    client: AsyncTestClient[Any], resources: Resources
) -> None:
    quotas = keys.Quotas(max_in_flight=10, max_jobs_per_day=10, max_source_seconds_per_day=100,
                         max_upload_bytes_per_day=1000)
    await authorize(client, resources.db, quotas=quotas)
    answers = await asyncio.gather(*(client.post("/api/uploads", json={"sizeBytes": 300}) for _ in range(5)))
    assert sorted(a.status_code for a in answers) == [201] * 3 + [429] * 2  # 900 of 1000 bytes, atomically
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert "upload_bytes_per_day" in refused.json()["error"]["message"]
    assert (await client.get("/api/usage")).json()["uploadBytesToday"] == {"used": 900, "limit": 1000}
    assert (await client.post("/api/uploads", json={})).status_code == 422  # a slot's size is required


@pytest.mark.settings(fetch_allow_private=False, fetch_allow_networks="127.0.0.0/8")
def test_a_keys_default_webhook_is_checked_like_a_jobs_and_can_be_changed(
    settings: Settings, resources: Resources,
) -> None:
    """`keys create --webhook` and `keys webhook` refuse a private address (it would refuse every job of the key
    later); `keys webhook ID URL` sets an allowed one, `--none` clears it."""
    env = {**os.environ, **settings_env(settings)}

    def clipjet(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services", "keys", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)

    refused = clipjet("create", "--name", "private hook", "--webhook", "http://10.0.0.1/hook")
    assert refused.returncode != 0 and "webhook_refused" in refused.stderr, refused
    assert "private hook" not in clipjet("list").stdout  # no key was made
    made = clipjet("create", "--name", "hooked", "--webhook", "http://127.0.0.1:9/a")
    assert made.returncode == 0, made.stderr
    key_id = made.stdout.strip().split("_")[1]

    def default_of() -> str | None:
        return asyncio.run(_stored_default_webhook(settings, key_id))

    assert default_of() == "http://127.0.0.1:9/a"
    bad = clipjet("webhook", key_id, "http://192.168.1.1/hook")
    assert bad.returncode != 0 and "webhook_refused" in bad.stderr, bad
    assert clipjet("webhook", key_id, "ftp://example.com/x").returncode != 0
    assert default_of() == "http://127.0.0.1:9/a"  # unchanged by the refusals
    assert clipjet("webhook", key_id, "http://127.0.0.1:9/b").returncode == 0
    assert default_of() == "http://127.0.0.1:9/b"
    cleared = clipjet("webhook", key_id, "--none")
    assert cleared.returncode == 0, cleared.stderr
    assert default_of() is None
    assert clipjet("webhook", "nosuchkey000", "--none").returncode == 1


async def _stored_default_webhook(settings: Settings, key_id: str) -> str | None:
    import asyncpg

    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.db_schema})
    try:
        return await conn.fetchval("SELECT default_webhook FROM api_keys WHERE id = $1", key_id)  # type: ignore[no-any-return]
    finally:
        await conn.close()
