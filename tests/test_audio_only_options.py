"""Options that need a picture (reframe, poster, thumbnails) on an audio-only source fail the job at the fetcher's
probe with `no_video`, naming the option: no needless re-encode, no fetch and cut before the thumbs stage fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.conftest import Workers
from tests.http_source import MediaServer
from tests.jobflow import run_url_job, stages_run
from tests.media import make_source


@pytest.fixture(scope="module")
def audio_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_source(tmp_path_factory.mktemp("audio") / "speech.m4a", seconds=4, video=False)


@pytest.mark.parametrize(("options", "named"), [
    ({"reframe": {"aspect": "9:16"}}, "reframe"),
    ({"poster": {}}, "poster"),
    ({"thumbnails": {"intervalSec": 1}}, "thumbnails"),
    ({"poster": {"atSec": 0.5}, "thumbnails": {}}, "poster and thumbnails"),
])
async def test_a_picture_option_on_an_audio_only_source_fails_at_the_probe(
    options: dict[str, Any], named: str, client: AsyncTestClient[Any], workers: Workers, audio_only: Path
) -> None:
    workers.start()
    with MediaServer(audio_only.parent) as origin:
        job = await run_url_job(client, origin.url(audio_only.name), startSec=1, endSec=3, **options)
    assert job["status"] == "failed", job
    assert job["errorCode"] == "no_video"
    assert job["errorMessage"].startswith(f"{named} asked for")
    assert "no video stream" in job["errorMessage"]
    assert await stages_run(workers.res, job["id"]) == ["fetch"]


async def test_an_audio_only_source_without_picture_options_is_still_cut(
    client: AsyncTestClient[Any], workers: Workers, audio_only: Path
) -> None:
    workers.start()
    with MediaServer(audio_only.parent) as origin:
        job = await run_url_job(client, origin.url(audio_only.name), startSec=1, endSec=3)
    assert job["status"] == "done", job
