"""A burst of concurrent GETs (the raw route and Litestar's): the grouped statement that counts each rate-limit hit
and reads the job row (services/gateway/writes.py) keeps the limit exact (10 a minute: exactly 10 pass), answers
another key's job as not found, and answers odd ids (not v7, not UUIDs, huge) 404 among the others, never 500.
Real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from services.gateway.app import create_app
from services.gateway.observe import observed
from shared.jobs.ids import uuid7
from shared.runtime.resources import Resources
from shared.settings import Settings
from tests.conftest import make_key

GOOD_JOB = {"source": {"type": "url", "url": "https://media.example/talk.mp4"}, "startSec": 1, "endSec": 2}
FAR_V7 = str(  # a UUIDv7 whose time is the last millisecond a datetime holds
    uuid.UUID(int=(253402300799999 << 80) | (7 << 76) | (0b10 << 62)))


def _answers(responses: list[Any]) -> Counter[tuple[int, str]]:
    return Counter((r.status_code, "ok" if r.status_code == 200 else _code(r.json())) for r in responses)


def _code(body: dict[str, Any]) -> str:
    error = body.get("error")
    return str(error.get("code") if isinstance(error, dict) else body.get("code"))


@pytest.mark.settings(rate_limit_per_min=10)
@pytest.mark.parametrize("fast_path", [True, False])
async def test_burst_is_limited_exactly_and_reads_stay_per_key(
    settings: Settings, resources: Resources, fast_path: bool
) -> None:
    if time.time() % 60 > 50:  # keep the burst inside one rate window
        await asyncio.sleep(61 - time.time() % 60)
    async with AsyncTestClient(observed(create_app(settings, fast_path=fast_path))) as client:
        owner, other, odd = [await make_key(resources.db) for _ in range(3)]
        made = await client.post("/api/jobs", json=GOOD_JOB, headers={"Authorization": f"Bearer {owner}"})
        assert made.status_code == 202, made.text
        job_id = made.json()["id"]

        def get(token: str, jid: str) -> Any:
            return client.get(f"/api/jobs/{jid}", headers={"Authorization": f"Bearer {token}"})

        odd_ids = [str(uuid.uuid4()), FAR_V7, "0" * 5000, str(uuid7()), "%00", uuid.UUID(int=0).hex]
        calls = ([get(owner, job_id) for _ in range(200)] + [get(other, job_id) for _ in range(200)]
                 + [get(odd, odd_ids[i % len(odd_ids)]) for i in range(200)])
        answers = await asyncio.gather(*calls)
    mine, theirs, odd_answers = _answers(answers[:200]), _answers(answers[200:400]), _answers(answers[400:])
    assert mine == {(200, "ok"): 9, (429, "rate_limited"): 191}, mine  # the POST used one of the 10
    assert theirs == {(404, "job_not_found"): 10, (429, "rate_limited"): 190}, theirs
    assert odd_answers == {(404, "job_not_found"): 10, (429, "rate_limited"): 190}, odd_answers
