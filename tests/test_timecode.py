"""Timecodes (shared/jobs/timecode.py): the strict parser, and the REST API taking them for startSec/endSec."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from shared.db import jobs
from shared.jobs.timecode import InvalidTimecode, format_timecode, parse_timecode
from shared.runtime.resources import Resources

URL_SOURCE = {"type": "url", "url": "https://media.example/talk.mp4"}


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0.0), ("62.5", 62.5), ("90", 90.0), ("0.040", 0.04),
    ("1:02.5", 62.5), ("1:30", 90.0), ("0:00", 0.0), ("00:59.999", 59.999), ("75:00", 4500.0),
    ("1:02:03", 3723.0), ("01:02:03.250", 3723.25), ("10:00:00", 36000.0), ("0:00:01.5", 1.5),
])
def test_accepted_forms(text: str, seconds: float) -> None:
    assert parse_timecode(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize("text", [
    "", " ", "1:75", "1:60", "1:5", "1:02:75", "1:60:00", "-1", "-0:01", "+1", "1e3", "inf", "nan", "5.", ".5",
    "1::02", ":30", "1:02:", "1:02.", "1,5", " 1:02", "1:02 ", "1:02.5s", "\u0661\u0662", "1:2:3:4",
    "1" * 40, "0.1234567890",
])
def test_refused_forms(text: str) -> None:
    with pytest.raises(InvalidTimecode) as refused:
        parse_timecode(text)
    assert "[HH:]MM:SS[.ms]" in str(refused.value)  # says what to write instead


def test_format_round_trips() -> None:
    for seconds in (0.0, 62.5, 3723.25, 59.999):
        assert parse_timecode(format_timecode(seconds)) == pytest.approx(seconds)
    assert format_timecode(62.5) == "1:02.500"


async def test_the_api_takes_timecode_strings_and_stores_seconds(
    client: AsyncTestClient[Any], resources: Resources
) -> None:
    answer = await client.post("/api/jobs", json={"source": URL_SOURCE, "startSec": "1:02.5", "endSec": "1:30"})
    assert answer.status_code == 202, answer.text
    row = await jobs.get_job(resources.db, uuid.UUID(answer.json()["id"]))
    assert (row["request"]["startSec"], row["request"]["endSec"]) == (62.5, 90.0)  # the message carries numbers
    view = (await client.get(f"/api/jobs/{answer.json()['id']}")).json()
    assert (view["request"]["startSec"], view["request"]["endSec"]) == (62.5, 90.0)
    mixed = await client.post("/api/jobs", json={"source": URL_SOURCE, "startSec": 3, "endSec": "0:04.25"})
    assert mixed.status_code == 202, mixed.text


@pytest.mark.parametrize(("body", "field"), [
    ({"startSec": "1:75", "endSec": 100}, "startSec"),
    ({"startSec": "-1", "endSec": 100}, "startSec"),
    ({"startSec": "", "endSec": 100}, "startSec"),
    ({"startSec": 1, "endSec": "soon"}, "endSec"),
    ({"startSec": "0" * 40 + "1", "endSec": 100}, "startSec"),  # over the parser's length: still invalid_time
    ({"startSec": 1, "endSec": "0" * 40 + "5"}, "endSec"),
])
async def test_an_invalid_timecode_is_invalid_time(
    client: AsyncTestClient[Any], resources: Resources, body: dict[str, Any], field: str
) -> None:
    answer = await client.post("/api/jobs", json={"source": URL_SOURCE, **body})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_time", field)
    assert "[HH:]MM:SS[.ms]" in error["message"]
    assert await resources.db.fetchval("SELECT count(*) FROM jobs") == 0


async def test_timecodes_obey_the_same_rules_as_numbers(client: AsyncTestClient[Any]) -> None:
    backwards = await client.post("/api/jobs", json={"source": URL_SOURCE, "startSec": "1:30", "endSec": "1:02.5"})
    assert backwards.status_code == 422 and backwards.json()["error"]["code"] == "end_before_start"
    too_long = await client.post("/api/jobs", json={"source": URL_SOURCE, "startSec": "0:00", "endSec": "1:00:00"})
    assert too_long.status_code == 422 and too_long.json()["error"]["code"] == "clip_too_long"


async def test_the_openapi_schema_shows_number_or_string(client: AsyncTestClient[Any]) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    request = schema["components"]["schemas"]["JobRequest"]["properties"]["startSec"]
    kinds = {option.get("type") for option in request.get("oneOf", request.get("anyOf", []))}
    assert kinds == {"number", "string"}, request


async def test_batch_clips_take_timecodes_too(client: AsyncTestClient[Any], resources: Resources) -> None:
    answer = await client.post("/api/jobs", json={"source": URL_SOURCE, "clips": [
        {"startSec": "0:10", "endSec": "0:12.5"}, {"startSec": 20, "endSec": "0:21"}]})
    assert answer.status_code == 202, answer.text
    rows = [await jobs.get_job(resources.db, uuid.UUID(job["id"])) for job in answer.json()["jobs"]]
    assert [(r["request"]["startSec"], r["request"]["endSec"]) for r in rows] == [(10.0, 12.5), (20.0, 21.0)]
    bad = await client.post("/api/jobs", json={"source": URL_SOURCE, "clips": [
        {"startSec": 1, "endSec": 2}, {"startSec": "1:75", "endSec": 100}]})
    assert bad.status_code == 422, bad.text
    assert (bad.json()["error"]["code"], bad.json()["error"]["field"]) == ("invalid_time", "clips[1].startSec")
    assert await resources.db.fetchval("SELECT count(*) FROM jobs") == 2


async def test_an_over_long_timecode_in_a_batch_clip_is_invalid_time(client: AsyncTestClient[Any]) -> None:
    answer = await client.post("/api/jobs", json={"source": URL_SOURCE, "clips": [
        {"startSec": "0" * 40 + "1", "endSec": 100}]})
    assert answer.status_code == 422, answer.text
    assert (answer.json()["error"]["code"], answer.json()["error"]["field"]) == ("invalid_time", "clips[0].startSec")
