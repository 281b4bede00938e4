"""An HEVC source whose level is mislabelled (smaller than its pictures need): its heads are encoded at a level x265
takes, and a head or tail the encoder refuses sends the job to the full re-encode (cut reason head_encode_failed)
instead of failing it, both where the fetcher cuts (an upload) and where the trimmer does (a URL)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from shared.media import codecs
from shared.media.smartcut import cut_frames
from tests.conftest import Workers
from tests.frames import decode_errors
from tests.http_source import MediaServer
from tests.jobflow import run_job, stages_run, upload
from tests.media import FFMPEG_TIMEOUT_SEC, make_source

START_SEC, END_SEC = 1.5, 3.7  # inside the first GOP (1 s): a head, a copied run and a tail


@pytest.fixture(scope="module")
def mislabelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """320x180 HEVC whose SPS says level 1 (general_level_idc 30: at most 36864 luma samples a picture)."""
    folder = tmp_path_factory.mktemp("lvl")
    source = make_source(folder / "hevc.mp4", seconds=5, codec="libx265", gop=30, bframes=2)
    relabelled = folder / "lvl.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), "-c", "copy", "-bsf:v", "hevc_metadata=level=30",
                    str(relabelled)], check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC)
    return relabelled


async def test_a_level_the_pictures_do_not_fit_is_not_given_to_the_head_encoder(
    mislabelled: Path, tmp_path: Path
) -> None:
    outcome = await cut_frames(str(mislabelled), tmp_path / "clip.mp4", start=START_SEC, end=END_SEC, audio=True,
                               scratch=tmp_path)
    assert outcome.path == "smart"
    assert decode_errors(tmp_path / "clip.mp4") == ""


async def _clip_of(client: AsyncTestClient[Any], source: dict[str, Any]) -> dict[str, Any]:
    return await run_job(client, {"source": source, "startSec": START_SEC, "endSec": END_SEC, "precision": "frame"})


@pytest.mark.parametrize("where", ["fetcher", "trimmer"])
async def test_a_refused_head_encode_falls_back_to_a_full_reencode(
    where: str, client: AsyncTestClient[Any], workers: Workers, mislabelled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codecs, "hevc_level_fits", lambda video: True)  # the level is passed as the source says
    workers.start()
    if where == "fetcher":  # an upload: the fetcher cuts it in place
        job = await _clip_of(client, {"type": "upload", "key": await upload(client, mislabelled)})
    else:
        with MediaServer(mislabelled.parent) as origin:
            job = await _clip_of(client, {"type": "url", "url": origin.url(mislabelled.name)})
    assert job["status"] == "done", job
    assert job["result"]["cutPath"] == "reencode"
    assert job["result"]["actualStartSec"] == pytest.approx(START_SEC, abs=0.034)
    assert "encode" in await stages_run(workers.res, job["id"])
