"""The REST edge: stable error codes for bad requests, upload slots, OpenAPI."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from shared.db import jobs
from shared.jobs.ids import uuid7

GOOD_URL = {"type": "url", "url": "https://media.example/talk.mp4"}


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"source": {"type": "ftp", "url": "ftp://x/a.mp4"}, "startSec": 0, "endSec": 5}, 422, "unknown_source_type"),
    ({"source": GOOD_URL, "startSec": -1, "endSec": 5}, 422, "start_negative"),
    ({"source": GOOD_URL, "startSec": 5, "endSec": 5}, 422, "end_before_start"),
    ({"source": GOOD_URL, "startSec": 9, "endSec": 3}, 422, "end_before_start"),
    ({"source": GOOD_URL, "startSec": 0, "endSec": 121}, 422, "clip_too_long"),
    ({"source": {"type": "upload", "key": "uploads/nope/a.mp4"}, "startSec": 0, "endSec": 5}, 422,
     "upload_not_found"),
    ({"source": {"type": "upload", "key": "results/sha256/aa/secret/clip.mp4"}, "startSec": 0, "endSec": 5}, 422,
     "upload_not_found"),
    ({"source": GOOD_URL, "startSec": "soon", "endSec": 5}, 422, "invalid_time"),
    ({"source": GOOD_URL, "startSec": "1:75", "endSec": 5}, 422, "invalid_time"),
    ({"source": GOOD_URL, "startSec": 0, "endSec": 5, "priority": "urgent"}, 422, "invalid_field"),
])
async def test_bad_requests_get_stable_codes(
    client: AsyncTestClient[Any], body: dict[str, Any], status: int, code: str
) -> None:
    response = await client.post("/api/jobs", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]


async def test_malformed_json_is_a_400(client: AsyncTestClient[Any]) -> None:
    response = await client.post("/api/jobs", content=b'{"source": ', headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"


async def test_unknown_job_is_a_404(client: AsyncTestClient[Any]) -> None:
    for job_id in (str(uuid7()), "not-an-id"):
        response = await client.get(f"/api/jobs/{job_id}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "job_not_found"


async def test_rejected_requests_leave_no_job_behind(client: AsyncTestClient[Any], resources: Any) -> None:
    await client.post("/api/jobs", json={"source": GOOD_URL, "startSec": 0, "endSec": 500})
    assert await resources.db.fetchval("SELECT count(*) FROM jobs") == 0


async def test_accepted_job_is_queued_and_published(client: AsyncTestClient[Any], resources: Any) -> None:
    response = await client.post("/api/jobs", json={"source": GOOD_URL, "startSec": 1, "endSec": 2, "priority": "bulk"})
    assert response.status_code == 202
    job_id = response.json()["id"]
    view = (await client.get(f"/api/jobs/{job_id}")).json()
    assert (view["status"], view["priority"], view["progress"], view["urls"]) == ("queued", "bulk", 0.0, None)
    row = await resources.db.fetchrow("SELECT published_at, shard, tableoid::regclass::text AS part FROM jobs")
    assert row["published_at"] is not None
    assert row["part"].startswith("jobs_2")  # a day partition, not the default one
    info = await resources.js.consumer_info(resources.settings.nats_stream, "fetch-bulk")
    assert info.num_pending == 1


async def test_upload_slot_is_a_signed_put_url(client: AsyncTestClient[Any]) -> None:
    response = await client.post("/api/uploads", json={"filename": "../../etc/passwd", "contentType": "video/mp4",
                                                            "sizeBytes": 10})
    assert response.status_code == 201
    slot = response.json()
    assert slot["key"].startswith("uploads/") and ".." not in slot["key"]
    assert slot["method"] == "PUT" and "X-Amz-Signature=" in slot["url"]
    assert slot["expiresInSec"] == 900


async def test_openapi_is_served(client: AsyncTestClient[Any]) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    operations = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {"createJob", "getJob", "createUploadSlot"} <= operations


async def test_todays_and_next_days_partitions_exist(client: AsyncTestClient[Any], resources: Any) -> None:
    rows = await resources.db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'jobs' AND p.relnamespace = c.relnamespace "
        "AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())"
    )
    names = {r["relname"] for r in rows}
    today = await resources.db.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    days = range(resources.settings.partition_days_ahead + 1)
    expected = {f"jobs_{(today + timedelta(days=d)):%Y%m%d}" for d in days}
    assert expected <= names and "jobs_default" in names
    job_id = uuid7()
    plan = "\n".join(r[0] for r in await resources.db.fetch("EXPLAIN " + jobs.SELECT_JOB, job_id, *jobs.window(job_id)))
    scanned = {name for name in names if name in plan}
    assert scanned == {f"jobs_{today:%Y%m%d}"}, plan  # a lookup by id reads one day's partition


async def test_idempotency_key_returns_the_same_job(client: AsyncTestClient[Any], resources: Any) -> None:
    body = {"source": GOOD_URL, "startSec": 1, "endSec": 2}
    headers = {"Idempotency-Key": "order-4711"}
    first = await client.post("/api/jobs", json=body, headers=headers)
    again = await client.post("/api/jobs", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    other = await client.post("/api/jobs", json={**body, "endSec": 3}, headers=headers)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert await resources.db.fetchval("SELECT count(*) FROM jobs") == 1
    info = await resources.js.consumer_info(resources.settings.nats_stream, "fetch-normal")
    assert info.num_pending == 1  # published once


async def test_concurrent_requests_with_one_key_make_one_job(client: AsyncTestClient[Any], resources: Any) -> None:
    body = {"source": GOOD_URL, "startSec": 1, "endSec": 2}
    answers = await asyncio.gather(*(
        client.post("/api/jobs", json=body, headers={"Idempotency-Key": "burst"}) for _ in range(5)
    ))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    assert await resources.db.fetchval("SELECT count(*) FROM jobs") == 1
