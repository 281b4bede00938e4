"""The `thumbs` stage on the real stack: a poster JPEG (the frame at poster.atSec, or the sharpest of the clip's
first seconds) and a thumbnail sprite sheet with its WebVTT index, signed beside the clip; and what adding the
stage cost (its folder and one line of the stage list)."""

from __future__ import annotations

import io
import math
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webvtt
from litestar.testing import AsyncTestClient

from services.thumbnailer.frames import displayed_size
from services.thumbnailer.sprite import MAX_SHEET_PIXELS, MAX_TILE_HEIGHT, make_sprite, plan_grid
from shared.db import jobs
from shared.jobs.pipeline import SERVICE_PACKAGES, STAGE_LIST
from shared.runtime.resources import Resources
from tests.conftest import Workers
from tests.jobflow import run_job, stages_run, upload
from tests.media import FFMPEG_TIMEOUT_SEC, probe, stream_of
from tests.test_clip_pipeline import download

ROOT = Path(__file__).resolve().parents[1]
SIZE = (160, 90)  # frames are compared as RGB copies this small (JPEG loss and scaling wash out)
SAME_FRAME_MAD = 5.0  # mean absolute difference (0..255) under which two copies show the same frame
OTHER_FRAME_MAD = 8.0  # ... and over which they show different frames (half a second apart: 11 to 19)
BLUR_SEC = 2.0  # the blurred source's first seconds


def pixels(path: Path, at_sec: float | None = None, crop: tuple[int, int, int, int] | None = None,
           size: tuple[int, int] = SIZE) -> np.ndarray:
    """The first frame at or after `at_sec` (or the image), optionally cropped (w, h, x, y), as small RGB pixels
    (RGB: each file's own colour range applies, limited in the clip, full in a JPEG)."""
    seek = ["-ss", f"{at_sec:.6f}"] if at_sec is not None else []
    chain = (f"crop={crop[0]}:{crop[1]}:{crop[2]}:{crop[3]}," if crop else "") + f"scale={size[0]}:{size[1]}"
    out = subprocess.run(
        ["ffmpeg", "-v", "error", *seek, "-i", str(path), "-frames:v", "1", "-vf", chain, "-f", "rawvideo",
         "-pix_fmt", "rgb24", "-"], check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC,
    )
    return np.frombuffer(out.stdout, dtype=np.uint8).reshape(size[1], size[0], 3).astype(np.float32)


def seconds(clock: str) -> float:
    hours, minutes, secs = clock.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(secs)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def sharpness(picture: np.ndarray) -> float:
    """The variance of the Laplacian of the picture's brightness (lower: blurrier)."""
    grey = picture.mean(axis=2)
    laplacian = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    return float(laplacian.var())


def make_test_video(path: Path, source: str, *extra: str) -> Path:
    """H.264 of an ffmpeg lavfi `source` (testsrc2: each second looks different), `extra` output options."""
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-c:v", "libx264", "-preset", "ultrafast",
         "-pix_fmt", "yuv420p", *extra, str(path)], check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC,
    )
    return path


def rotated_copy(flat: Path, path: Path) -> Path:
    """`flat` (stream copy) shown rotated by 90 degrees (a display matrix: ffmpeg 5 sets it on a copy only)."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(flat), "-c", "copy", "-metadata:s:v:0", "rotate=90",
                    str(path)], check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC)
    return path


async def sprite_of(url: Path, sheet: Path, duration: float, interval: float, width: int) -> tuple[int, int]:
    """make_sprite as the thumbs stage runs it on a local file; the tile's (width, height)."""
    grid = plan_grid(await displayed_size(str(url)), duration, interval, width)
    await make_sprite(str(url), sheet, grid, duration, lambda _: None)
    tiles = stream_of(probe(sheet), "video")
    assert (tiles["width"], tiles["height"]) == (grid.columns * grid.width, grid.rows * grid.height)
    return grid.width, grid.height


@pytest.fixture(scope="session")
def blurry_start(media_dir: Path) -> Path:
    """6 s of 320x180 30 fps H.264 test pattern, blurred (boxblur) for its first BLUR_SEC seconds."""
    path = media_dir / "blurry-start.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30:duration=6",
         "-vf", f"boxblur=luma_radius=6:luma_power=2:chroma_radius=6:enable='lt(t,{BLUR_SEC})'",
         "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-pix_fmt", "yuv420p", str(path)],
        check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC,
    )
    return path


async def _run(client: AsyncTestClient[Any], key: str, **options: Any) -> dict[str, Any]:
    return await run_job(client, {"source": {"type": "upload", "key": key}, **options})


async def test_poster_at_a_time_and_thumbnails(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path, tmp_path: Path
) -> None:
    workers.start()
    job = await _run(client, await upload(client, sample_video), startSec=4.0, endSec=11.5, precision="keyframe",
                     poster={"atSec": 1.5}, thumbnails={"intervalSec": 2, "width": 160})
    assert job["status"] == "done", job
    urls = job["urls"]
    assert set(urls["files"]) == {"video", "poster", "sprite", "thumbnails"}
    assert urls["video"] == urls["files"]["video"]
    assert await stages_run(resources, job["id"]) == ["fetch", "thumbs", "upload"]
    row = await jobs.get_job(resources.db, uuid.UUID(job["id"]))
    assert row is not None and set(row["result_keys"]) == {"poster", "sprite", "thumbnails"}
    for role, name in (("poster", "poster.jpg"), ("sprite", "sprite.jpg"), ("thumbnails", "thumbnails.vtt")):
        assert re.search(rf"/results/sha256/[0-9a-f]{{2}}/[0-9a-f]{{64}}/{re.escape(name)}\?", urls["files"][role])
        assert row["result_keys"][role].endswith(f"/{name}")
    clip = await download(urls["video"], tmp_path / "clip.mp4")
    duration = job["result"]["durationSec"]

    # the poster: a full-size JPEG of the clip's frame at 1.5 s (as ffmpeg -ss finds it), not of another time
    poster = await download(urls["files"]["poster"], tmp_path / "poster.jpg")
    assert poster.read_bytes()[:3] == b"\xff\xd8\xff"
    picture = stream_of(probe(poster), "video")
    assert (picture["codec_name"], picture["width"], picture["height"]) == ("mjpeg", 640, 360)
    assert mad(pixels(poster), pixels(clip, 1.5)) < SAME_FRAME_MAD
    assert mad(pixels(poster), pixels(clip, 2.0)) > OTHER_FRAME_MAD

    # the sprite: ceil(7.5 / 2) = 4 thumbnails 160x90 in one row; each tile is the clip at i * 2 s
    sheet = await download(urls["files"]["sprite"], tmp_path / "sprite.jpg")
    count = math.ceil(duration / 2)
    tiles = stream_of(probe(sheet), "video")
    assert (count, tiles["width"], tiles["height"]) == (4, 4 * 160, 90)
    for i in range(count):
        tile = pixels(sheet, crop=(160, 90, i * 160, 0))
        assert mad(tile, pixels(clip, i * 2.0)) < SAME_FRAME_MAD, i
        assert mad(tile, pixels(clip, i * 2.0 + 0.5)) > OTHER_FRAME_MAD, i

    # the index: one cue per thumbnail, back to back from 0 to the clip's end, each naming its tile
    index = await download(urls["files"]["thumbnails"], tmp_path / "thumbnails.vtt")
    cues = list(webvtt.from_buffer(io.StringIO(index.read_text())))
    assert len(cues) == count
    assert seconds(cues[0].start) == 0 and seconds(cues[-1].end) == pytest.approx(duration, abs=1e-3)
    for i, cue in enumerate(cues):
        assert seconds(cue.start) == pytest.approx(i * 2.0, abs=1e-3)
        assert seconds(cue.end) == pytest.approx(min((i + 1) * 2.0, duration), abs=1e-3)
        assert cue.text == f"sprite.jpg#xywh={i * 160},0,160,90"


async def test_the_sharpest_frame_is_the_poster_and_thumbnails_wrap(
    client: AsyncTestClient[Any], workers: Workers, blurry_start: Path, tmp_path: Path
) -> None:
    workers.start()
    job = await _run(client, await upload(client, blurry_start), startSec=0, endSec=5.5, poster={},
                     thumbnails={"intervalSec": 1, "width": 64})
    assert job["status"] == "done", job
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    poster = await download(job["urls"]["files"]["poster"], tmp_path / "poster.jpg")
    full = (320, 180)
    blurred = max(sharpness(pixels(clip, t, size=full)) for t in (0.0, 0.5, 1.0, 1.5, 1.9))
    assert sharpness(pixels(poster, size=full)) > 3 * blurred  # picked from the sharp part, not the blurred one
    assert min(mad(pixels(poster), pixels(clip, t)) for t in np.arange(BLUR_SEC, 3.0, 1 / 30)) < SAME_FRAME_MAD

    # 6 thumbnails of 64x36, at most 10 a row: one row of 6 (the index names each tile in order)
    sheet = await download(job["urls"]["files"]["sprite"], tmp_path / "sprite.jpg")
    tiles = stream_of(probe(sheet), "video")
    assert (tiles["width"], tiles["height"]) == (6 * 64, 36)
    index = await download(job["urls"]["files"]["thumbnails"], tmp_path / "thumbnails.vtt")
    cues = list(webvtt.from_buffer(io.StringIO(index.read_text())))
    assert [c.text for c in cues] == [f"sprite.jpg#xywh={i * 64},0,64,36" for i in range(6)]


async def test_a_tall_clip_makes_a_bounded_sheet(
    client: AsyncTestClient[Any], workers: Workers, media_dir: Path, tmp_path: Path
) -> None:
    """A 64x4096 picture asked for 480-wide thumbnails: not upscaled to 480x30720 tiles (a 4800x49152 sheet) but
    kept 480 tall at most, narrower to keep the shape: 10 tiles of 6x480 in one row."""
    tall = make_test_video(media_dir / "tall.mp4", "testsrc2=s=64x4096:r=2:d=12")
    workers.start()
    job = await _run(client, await upload(client, tall), startSec=0, endSec=10, precision="keyframe",
                     thumbnails={"width": 480, "intervalSec": 1})
    assert job["status"] == "done", job
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    sheet = await download(job["urls"]["files"]["sprite"], tmp_path / "sprite.jpg")
    tiles = stream_of(probe(sheet), "video")
    assert (tiles["width"], tiles["height"]) == (10 * 6, MAX_TILE_HEIGHT)
    index = await download(job["urls"]["files"]["thumbnails"], tmp_path / "thumbnails.vtt")
    cues = list(webvtt.from_buffer(io.StringIO(index.read_text())))
    assert [c.text for c in cues] == [f"sprite.jpg#xywh={i * 6},0,6,480" for i in range(10)]
    for i in (0, 5, 9):  # each tile is the (squeezed) picture at i s
        tile = pixels(sheet, crop=(6, 480, i * 6, 0), size=(6, 480))
        assert mad(tile, pixels(clip, float(i), size=(6, 480))) < SAME_FRAME_MAD, i


async def test_a_sheet_over_its_limit_is_refused_before_ffmpeg(
    client: AsyncTestClient[Any], workers: Workers, media_dir: Path
) -> None:
    """100 thumbnails of a square 480x480 picture would be a 4800x4800 sheet (23 Mpx): the job fails with
    `sprite_too_large`, saying what to change; 2 s apart (50 thumbnails, 11.5 Mpx), the same clip's is made."""
    square = make_test_video(media_dir / "square.mp4", "testsrc2=s=480x480:r=1:d=101", "-g", "10")
    assert 100 * 480 * 480 > MAX_SHEET_PIXELS >= 50 * 480 * 480
    workers.start()
    key = await upload(client, square)
    job = await _run(client, key, startSec=0, endSec=100, precision="keyframe",
                     thumbnails={"width": 480, "intervalSec": 1})
    assert (job["status"], job["errorCode"]) == ("failed", "sprite_too_large"), job
    assert "intervalSec" in job["errorMessage"] and "width" in job["errorMessage"], job
    job = await _run(client, key, startSec=0, endSec=100, precision="keyframe",
                     thumbnails={"width": 480, "intervalSec": 2})
    assert job["status"] == "done", job


async def test_thumbnails_keep_a_rotated_clips_shape_and_are_never_upscaled(media_dir: Path, tmp_path: Path) -> None:
    """A 1000x200 picture shown rotated (200x1000) gets tiles 480 tall at most (96x480), its shape kept, not
    160x800; a 180x100 picture asked for 480-wide thumbnails gets them 180 wide."""
    rotated = rotated_copy(make_test_video(media_dir / "flat.mp4", "testsrc2=s=1000x200:r=30:d=3"),
                           media_dir / "rotated.mp4")
    assert stream_of(probe(rotated), "video")["width"] == 1000  # stored flat, shown upright (ffmpeg autorotates)
    assert await sprite_of(rotated, tmp_path / "rotated.jpg", 3.0, 1.0, 160) == (96, 480)
    for i in range(3):
        tile = pixels(tmp_path / "rotated.jpg", crop=(96, 480, i * 96, 0), size=(48, 240))
        assert mad(tile, pixels(rotated, float(i), size=(48, 240))) < SAME_FRAME_MAD, i
    small = make_test_video(media_dir / "small.mp4", "testsrc2=s=180x100:r=30:d=3")
    assert await sprite_of(small, tmp_path / "small.jpg", 3.0, 1.0, 480) == (180, 100)
    assert mad(pixels(tmp_path / "small.jpg", crop=(180, 100, 180, 0)), pixels(small, 1.0)) < SAME_FRAME_MAD


async def test_a_sparse_clips_thumbnails_show_the_frame_on_screen(media_dir: Path, tmp_path: Path) -> None:
    """Frames at 0, 4 and 8 s only (variable frame rate), a thumbnail a second for 10 s: thumbnail k shows the
    last frame at or before k s (0, 0, 0, 0, 4, 4, 4, 4, 8, 8), never a later one and never black."""
    sparse = make_test_video(media_dir / "sparse.mp4", "testsrc2=s=320x180:r=1:d=8,setpts=N*4/TB",
                             "-frames:v", "3", "-vsync", "vfr")
    assert await sprite_of(sparse, tmp_path / "sparse.jpg", 10.0, 1.0, 160) == (160, 90)
    frames = {t: pixels(sparse, float(t)) for t in (0, 4, 8)}
    assert min(mad(a, b) for a in frames.values() for b in frames.values() if a is not b) > OTHER_FRAME_MAD
    for k in range(10):
        tile = pixels(tmp_path / "sparse.jpg", crop=(160, 90, k * 160, 0))
        shown = k // 4 * 4
        assert mad(tile, frames[shown]) < SAME_FRAME_MAD, k
        assert all(mad(tile, frames[t]) > OTHER_FRAME_MAD for t in frames if t != shown), k


async def test_the_index_is_served_with_the_sheets_signed_url(
    client: AsyncTestClient[Any], workers: Workers, blurry_start: Path, tmp_path: Path
) -> None:
    """`GET /api/jobs/{id}/files/thumbnails.vtt`: the index whose cues name the sheet by its signed URL (the
    stored index names `sprite.jpg`, which a player would resolve beside the index's own URL: another key);
    the sheet downloads from a cue's URL. Other names, and files that are not .vtt, are 404 `file_not_found`."""
    workers.start()
    job = await _run(client, await upload(client, blurry_start), startSec=0, endSec=3, poster={},
                     thumbnails={"intervalSec": 1, "width": 64})
    assert job["status"] == "done", job
    response = await client.get(f"/api/jobs/{job['id']}/files/thumbnails.vtt")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/vtt")
    sprite_url = job["urls"]["files"]["sprite"]
    cues = list(webvtt.from_buffer(io.StringIO(response.text)))
    assert [c.text for c in cues] == [f"{sprite_url}#xywh={i * 64},0,64,36" for i in range(3)]
    sheet = await download(cues[1].text.split("#", 1)[0], tmp_path / "sprite.jpg")
    assert stream_of(probe(sheet), "video")["width"] == 3 * 64
    assert (await client.get(f"/api/jobs/{job['id']}/files/..%2Fthumbnails.vtt")).status_code == 404
    for name in ("poster.jpg", "sprite.jpg", "clip.vtt", "thumbnails.srt"):
        missing = await client.get(f"/api/jobs/{job['id']}/files/{name}")
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "file_not_found"), name
    other = await client.get(f"/api/jobs/{uuid.uuid4()}/files/thumbnails.vtt")
    assert (other.status_code, other.json()["error"]["code"]) == (404, "job_not_found")


@pytest.mark.parametrize(("options", "code", "field"), [
    ({"poster": {"atSec": 7.5}}, "poster_outside_clip", "poster.atSec"),
    ({"poster": {"atSec": -1}}, "invalid_field", "poster.atSec"),
    ({"thumbnails": {"intervalSec": 0.2}}, "invalid_field", "thumbnails.intervalSec"),
    ({"thumbnails": {"width": 161}}, "invalid_field", "thumbnails.width"),
    ({"thumbnails": {"width": 4000}}, "invalid_field", "thumbnails.width"),
    ({"poster": {"at": 1}}, "invalid_field", "poster.at"),
])
async def test_bad_preview_options_are_refused(
    client: AsyncTestClient[Any], options: dict[str, Any], code: str, field: str
) -> None:
    response = await client.post("/api/jobs", json={
        "source": {"type": "url", "url": "https://media.example/a.mp4"}, "startSec": 10, "endSec": 17.5, **options,
    })
    assert response.status_code == 422, response.text
    assert (response.json()["error"]["code"], response.json()["error"]["field"]) == (code, field)


def test_the_stage_cost_its_folder_and_one_line() -> None:
    """Only the stage list names the thumbs stage's package, and only that folder names its result files: the
    uploader, the database, the job's view, the reaper and the routes know of it through the declarations."""
    assert [s.name for s in STAGE_LIST if s.package == "thumbnailer"] == ["thumbs"]
    mentions: dict[str, set[str]] = {"thumbnailer": set(), "poster.jpg": set(), "sprite.jpg": set(),
                                     "thumbnails.vtt": set()}
    for path in [*ROOT.glob("shared/**/*.py"), *ROOT.glob("services/**/*.py"), *ROOT.glob("shared/**/*.sql")]:
        text = path.read_text(encoding="utf-8")
        for word, found in mentions.items():
            if word in text:
                found.add(str(path.relative_to(ROOT).parent if "thumbnailer" in path.parts else path.relative_to(ROOT)))
    assert mentions == {"thumbnailer": {"shared/jobs/pipeline.py"},
                        "poster.jpg": {"services/thumbnailer"}, "sprite.jpg": {"services/thumbnailer"},
                        "thumbnails.vtt": {"services/thumbnailer"}}
    assert SERVICE_PACKAGES["thumbs"] == "thumbnailer"
