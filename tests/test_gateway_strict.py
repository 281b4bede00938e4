"""Issue 12.8/12.9: the gateway takes only well-formed input, with a stable code for everything else, never a 500.

Bodies: JSON content type, exact types, no unknown fields, bounded size and depth. Paths and queries: job ids,
upload keys, upload ids and content types in their real formats. Nothing is written for a refused request.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from shared.jobs.ids import uuid7
from shared.runtime.resources import Resources

GOOD_URL = {"type": "url", "url": "https://media.example/talk.mp4"}
GOOD_JOB = {"source": GOOD_URL, "startSec": 1, "endSec": 2}
JSON = {"Content-Type": "application/json"}
LARGEST_UUIDV7_MS = (1 << 48) - 1  # the 48-bit timestamp's largest value: the year 10889


async def _no_jobs(resources: Resources) -> None:
    assert await resources.db.fetchval("SELECT count(*) FROM jobs") == 0


INVALID_FIELDS = [
    ({**GOOD_JOB, "startSec": [1]}, "startSec"),  # a string is a timecode ("1", "0:01"): tests/test_timecode.py
    ({**GOOD_JOB, "endSec": {"sec": 2}}, "endSec"),
    ({**GOOD_JOB, "startSec": True}, "startSec"),
    ({**GOOD_JOB, "priority": 1}, "priority"),
    ({**GOOD_JOB, "subs": {"enabled": "yes"}}, "subs.enabled"),
    ({**GOOD_JOB, "source": {"type": "url", "url": 5}}, "source.url"),
    ({**GOOD_JOB, "precison": "frame"}, "precison"),  # a typo must not silently run "auto"
    ({**GOOD_JOB, "source": {**GOOD_URL, "headers": {"a": "b"}}}, "source.headers"),
    ({**GOOD_JOB, "subs": {"enabled": True, "burnin": True}}, "subs.burnin"),
    ({"source": GOOD_URL, "startSec": 1}, "endSec"),
    ({**GOOD_JOB, "source": {"type": "url"}}, "source.url"),
]


async def test_wrong_types_and_unknown_fields_are_invalid_field(
    client: AsyncTestClient[Any], resources: Resources
) -> None:
    for body, field in INVALID_FIELDS:
        response = await client.post("/api/jobs", json=body)
        assert response.status_code == 422, (body, response.text)
        error = response.json()["error"]
        assert (error["code"], error["field"]) == ("invalid_field", field), body
        assert field in error["message"]
    await _no_jobs(resources)


CONTENT_TYPES = [
    ("text/plain", 415), ("application/x-www-form-urlencoded", 415),  # what a cross-site form sends, no preflight
    ("multipart/form-data; boundary=x", 415), (None, 415), ("application/json; charset=latin-1", 415),
    ("application/jsonx", 415), ("application/json", 202), ("application/json; charset=UTF-8", 202),
    ("application/vnd.clipjet+json", 202),
]


async def test_only_json_content_types_are_parsed(client: AsyncTestClient[Any], resources: Resources) -> None:
    for content_type, status in CONTENT_TYPES:
        headers = {"Content-Type": content_type} if content_type else {}
        response = await client.post("/api/jobs", content=msgspec.json.encode(GOOD_JOB), headers=headers)
        assert response.status_code == status, (content_type, response.text)
        if status == 415:
            assert response.json()["error"]["code"] == "unsupported_media_type"
    accepted = sum(status == 202 for _, status in CONTENT_TYPES)
    assert await resources.db.fetchval("SELECT count(*) FROM jobs") == accepted


NOT_A_JOB = [
    (b"", 400, "malformed_json"),
    (b"  \n", 400, "malformed_json"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "malformed_json"),  # 100,000 deep: was a RecursionError, a 500
    (b'{"a":' * 20_000 + b"1" + b"}" * 20_000, 400, "malformed_json"),
    (b'{"source": {"type": "url", "url": "https://a.example/x"}, "startSec": NaN, "endSec": 2}', 400,
     "malformed_json"),
    (b'{"source": {"type": "url", "url": "https://a.example/x"}, "startSec": 1e999, "endSec": 2}', 400,
     "malformed_json"),
    (b'{"source": {"type": "url", "url": "https://a.example/x"}, "startSec": Infinity, "endSec": 2}', 400,
     "malformed_json"),
    (b"[1, 2]", 422, "invalid_field"),
    (b"null", 422, "invalid_field"),
    (b'{"source": ' + b'"' + b"a" * 300_000 + b'"}', 413, "body_too_large"),
]


async def test_bodies_that_are_no_job_get_4xx(client: AsyncTestClient[Any], resources: Resources) -> None:
    for content, status, code in NOT_A_JOB:
        response = await client.post("/api/jobs", content=content, headers=JSON)
        assert response.status_code == status, (content[:60], response.text)
        assert response.json()["error"]["code"] == code, content[:60]
    await _no_jobs(resources)


BAD_SOURCES = [
    ({"type": "url", "url": "http://[::1"}, 422, "fetch_refused"),  # was a ValueError from urlsplit, a 500
    ({"type": "url", "url": "http://media.example:99999/a.mp4"}, 422, "fetch_refused"),
    ({"type": "url", "url": "https://media.example/" + "a" * 9000}, 422, "url_too_long"),
    ({"type": "youtube", "url": "https://www.youtube.com/watch?v=" + "a" * 9000}, 422, "url_too_long"),
    ({"type": "upload", "key": "uploads/../x"}, 422, "upload_not_found"),
    ({"type": "upload", "key": "uploads/a\x00b/c.mp4"}, 422, "upload_not_found"),
    ({"type": "upload", "key": f"uploads/{uuid7()}/../../results/x.mp4"}, 422, "upload_not_found"),
    ({"type": "upload", "key": f"uploads/{uuid7()}/" + "a" * 2000}, 422, "upload_not_found"),
    ({"type": "upload", "key": f"uploads/{uuid7()}/clip.mp4"}, 422, "upload_not_found"),  # well-formed, not there
]


async def test_sources_are_checked_before_anything_is_written(
    client: AsyncTestClient[Any], resources: Resources
) -> None:
    for source, status, code in BAD_SOURCES:
        response = await client.post("/api/jobs", json={**GOOD_JOB, "source": source})
        assert response.status_code == status, (source, response.text)
        assert response.json()["error"]["code"] == code, source
    await _no_jobs(resources)


async def test_unknown_or_malformed_job_ids_are_404(client: AsyncTestClient[Any]) -> None:
    for job_id in (
        str(uuid7(LARGEST_UUIDV7_MS)),  # was "year 10889 is out of range", a 500
        str(uuid7(0)), "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "not-a-uuid", "%00", "x" * 5000, f"{{{uuid7()}}}", f"urn:uuid:{uuid7()}",
    ):
        response = await client.get(f"/api/jobs/{job_id}")
        assert response.status_code == 404, (job_id[:40], response.text)
        assert response.json()["error"]["code"] == "job_not_found"
        assert len(response.text) < 1000  # the id is not echoed at length


SIZED = {"sizeBytes": 10}
SLOT_REQUESTS = [  # (body, status, the field named)
    ({"sizeBytes": "12"}, 422, "sizeBytes"), ({"sizeBytes": -1}, 422, "sizeBytes"),
    ({"sizeBytes": 1.5}, 422, "sizeBytes"), ({}, 422, "sizeBytes"),
    ({"sizeBytes": 0}, 201, None),  # an empty file gets its slot; a job on it fails "the upload is empty"
    (SIZED | {"contentType": "video/mp4\r\nX-Injected: 1"}, 422, "contentType"),
    (SIZED | {"contentType": "video/mp4\n"}, 422, "contentType"),
    (SIZED | {"contentType": "not a type"}, 422, "contentType"),
    (SIZED | {"contentType": "video/" + "a" * 300}, 422, "contentType"),
    (SIZED | {"contentType": ""}, 422, "contentType"),
    (SIZED | {"filename": 7}, 422, "filename"), (SIZED | {"fileName": "a.mp4"}, 422, "fileName"),
    (SIZED | {"contentType": 'video/mp4; codecs="avc1.64001f, mp4a.40.2"'}, 201, None),
    (SIZED | {"contentType": "video/x-matroska"}, 201, None), (None, 400, None),  # the size is required
]


async def test_upload_slot_requests_are_strict(client: AsyncTestClient[Any]) -> None:
    for body, status, field in SLOT_REQUESTS:
        response = await client.post("/api/uploads", json=body) if body is not None else await client.post(
            "/api/uploads")
        assert response.status_code == status, (body, response.text)
        if field:
            error = response.json()["error"]
            assert (error["code"], error["field"]) == ("invalid_field", field), body


async def test_upload_endpoints_check_key_and_upload_id(client: AsyncTestClient[Any]) -> None:
    slot = (await client.post("/api/uploads", json={"sizeBytes": 300 * 1024 * 1024})).json()
    key, upload_id = slot["key"], slot["uploadId"]
    cases = [
        ({"key": "uploads/../x", "uploadId": upload_id}, 422, "upload_not_found", "key"),
        ({"key": "uploads/a\x00/b", "uploadId": upload_id}, 422, "upload_not_found", "key"),
        ({"key": key, "uploadId": "a\x00b"}, 422, "invalid_field", "uploadId"),
        ({"key": key, "uploadId": "a b"}, 422, "invalid_field", "uploadId"),
        ({"key": key, "uploadId": "x" * 2000}, 422, "invalid_field", "uploadId"),
        ({"key": key, "uploadId": "unknown-upload"}, 404, "upload_not_found", None),
    ]
    for params, status, code, field in cases:
        listed = await client.get("/api/uploads/status", params=params)
        completed = await client.post("/api/uploads/complete", json=params)
        for response in (listed, completed):
            assert response.status_code == status, (params, response.text)
            assert (response.json()["error"]["code"], response.json()["error"].get("field")) == (code, field)
    early = await client.post("/api/uploads/complete", json={"key": key, "uploadId": upload_id})
    assert early.status_code == 422 and early.json()["error"]["code"] == "upload_incomplete", early.text
    extra = await client.post("/api/uploads/complete", json={"key": key, "uploadId": upload_id, "parts": []})
    assert extra.status_code == 422 and extra.json()["error"]["field"] == "parts"
    missing = await client.get("/api/uploads/status", params={"key": key})
    assert missing.status_code in (400, 422) and missing.json()["error"]["code"] != "internal_error"


@pytest.mark.settings(gateway_max_body_bytes=4 * 1024 * 1024, max_metadata_bytes=4 * 1024 * 1024)
async def test_a_job_nats_could_not_carry_is_refused_before_its_row(
    client: AsyncTestClient[Any], resources: Resources
) -> None:
    """With the body limit raised past what NATS takes (max_payload, 1 MiB), a job whose message would not fit
    is a 413 before anything is written (it was a MaxPayloadError after the row, a 503 that opened the breaker)."""
    body = {**GOOD_JOB, "metadata": {"pad": "x" * (resources.nc.max_payload + 1)}}  # (subs.lang is checked)
    response = await client.post("/api/jobs", json=body)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "body_too_large"
    await _no_jobs(resources)
    assert (await client.post("/api/jobs", json=GOOD_JOB)).status_code == 202


async def test_idempotency_keys_are_visible_ascii(client: AsyncTestClient[Any], resources: Resources) -> None:
    for key in ("a\x00b", "a b", "tab\tkey", "x" * 201):
        response = await client.post("/api/jobs", json=GOOD_JOB, headers={"Idempotency-Key": key})
        assert response.status_code == 422, (key[:20], response.text)
        assert response.json()["error"]["code"] == "invalid_field"
    await _no_jobs(resources)
    accepted = await client.post("/api/jobs", json=GOOD_JOB, headers={"Idempotency-Key": "order-4711/a"})
    assert accepted.status_code == 202, accepted.text
