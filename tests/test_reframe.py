"""Reframing for shorts (`reframe`): the filters on real ffmpeg output (sizes, crop position, bars, subtitles laid
out on the new frame), the request's checks, and jobs through the real stack (one re-encode, burn-in included)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
import srt
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

import shared.media.encode as encode_module
from shared.jobs.contracts import ClipJobMessage, Reframe, StreamFacts, UrlSource
from shared.jobs.fingerprint import request_fingerprint
from shared.jobs.ids import uuid7
from shared.jobs.jobrules import refusal_for_decode_error
from shared.media.burnin import subtitles_filter
from shared.media.encode import encode_args, encode_clip
from shared.media.hwenc import CANDIDATES, SOFTWARE, VideoEncoder
from shared.media.reframe import reframe_filters
from shared.runtime.resources import Resources
from shared.settings import load_settings
from tests.conftest import Workers, wait_for_job
from tests.jobflow import run_upload_job, stages_run, upload
from tests.speech import SPEECH_SENTENCES, SpeechVideo, make_speech_video
from tests.test_cli import Cli, cli, gateway  # noqa: F401 (fixtures: `clipjet` against a gateway process)
from tests.test_clip_pipeline import download

FFMPEG_TIMEOUT_SEC = 120
SOURCE_SEC = 0.4
FRAME_AT_SEC = 0.2
RED, BLUE, BLACK = (255, 0, 0), (0, 0, 255), (0, 0, 0)
COLOUR_TOLERANCE = 40  # per channel, after 4:2:0 and H.264
SUBS_JOB_TIMEOUT_SEC = 180.0
SRT = "1\n00:00:00,000 --> 00:00:02,000\nBurned-in words, readable\nat any size: 42 characters\n"

# (source size, aspect, mode) → the output's size: crop keeps pixels 1:1, pad keeps the shorter side
EXPECTED_SIZES = [
    ("640x360", "9:16", "crop", (202, 360)), ("640x360", "1:1", "crop", (360, 360)),
    ("640x360", "4:5", "crop", (288, 360)), ("640x360", "9:16", "pad", (360, 640)),
    ("640x360", "1:1", "pad", (360, 360)), ("640x360", "4:5", "pad", (360, 450)),
    ("360x640", "9:16", "crop", (360, 640)), ("360x640", "1:1", "crop", (360, 360)),
    ("360x640", "4:5", "crop", (360, 450)), ("360x640", "9:16", "pad", (360, 640)),
    ("360x640", "1:1", "pad", (360, 360)), ("360x640", "4:5", "pad", (360, 450)),
    ("1920x1080", "9:16", "crop", (608, 1080)), ("1920x1080", "9:16", "pad", (1080, 1920)),
    ("1920x1080", "4:5", "crop", (864, 1080)),
]


def _lavfi_source(path: Path, graph: str) -> Path:
    """A short H.264 MP4 of the lavfi `graph` (lossless, so colours stay exact up to 4:2:0)."""
    if not path.exists():
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", graph, "-t", str(SOURCE_SEC), "-c:v", "libx264",
             "-preset", "ultrafast", "-qp", "0", "-pix_fmt", "yuv420p", str(path)],
            check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC,
        )
    return path


def _pattern(folder: Path, size: str) -> Path:
    return _lavfi_source(folder / f"pattern-{size}.mp4", f"testsrc2=size={size}:rate=10")


def _red_blue(folder: Path, size: str = "640x360") -> Path:
    """Left half red, right half blue."""
    width, height = (int(v) for v in size.split("x"))
    half = f"{width // 2}x{height}"
    return _lavfi_source(folder / f"red-blue-{size}.mp4",
                         f"color=c=red:size={half}:rate=10[l];color=c=blue:size={half}:rate=10[r];[l][r]hstack")


def _rotated(source: Path, out: Path) -> Path:
    """`source` copied with a 90° display rotation (as phones store portrait video)."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), "-c", "copy", "-metadata:s:v:0", "rotate=90",
                    str(out)], check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC)
    return out


def _size(path: Path) -> tuple[int, int]:
    info = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height", "-of", "json",
         str(path)], check=True, capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_SEC).stdout)["streams"][0]
    return info["width"], info["height"]


def _frame(path: Path, at_sec: float = FRAME_AT_SEC, pix_fmt: str = "rgb24") -> np.ndarray:
    """The decoded frame at `at_sec` as (height, width, channels) ints."""
    width, height = _size(path)
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-vf", f"trim=start={at_sec:.6f},setpts=PTS-STARTPTS",
         "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", pix_fmt, "-"],
        check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SEC).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, -1).astype(np.int16)


def _is(pixels: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool((np.abs(pixels - np.array(colour)) <= COLOUR_TOLERANCE).all())


async def _encode(source: Path, out: Path, filters: list[str]) -> Path:
    """What the encoder stage runs: encode_clip with libx264 and the filters, the whole source."""
    streams = [StreamFacts(index=0, kind="video", codec="h264")]
    await encode_clip(str(source), out, seek_sec=0.0, duration_sec=SOURCE_SEC, streams=streams, encoder=SOFTWARE,
                      threads=1, extra_filters=filters)
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reframe")


@pytest.mark.parametrize(("source", "aspect", "mode", "size"), EXPECTED_SIZES)
async def test_the_output_has_the_aspect_and_even_sides(
    folder: Path, tmp_path: Path, source: str, aspect: str, mode: str, size: tuple[int, int]
) -> None:
    out = await _encode(_pattern(folder, source), tmp_path / "out.mp4",
                        reframe_filters(Reframe(aspect=aspect, mode=mode)))  # type: ignore[arg-type]
    assert _size(out) == size
    num, den = (int(v) for v in aspect.split(":"))
    assert size[0] / size[1] == pytest.approx(num / den, abs=0.01)


async def test_a_rotated_picture_is_framed_as_it_is_shown(folder: Path, tmp_path: Path) -> None:
    """A phone video: 640x360 stored, rotated 90° for display (360x640): already 9:16, nothing is cropped."""
    rotated = _rotated(_pattern(folder, "640x360"), tmp_path / "rotated.mp4")
    crop = await _encode(rotated, tmp_path / "crop.mp4", reframe_filters(Reframe(aspect="9:16")))
    square = await _encode(rotated, tmp_path / "square.mp4", reframe_filters(Reframe(aspect="1:1", mode="pad")))
    assert (_size(crop), _size(square)) == ((360, 640), (360, 360))


@pytest.mark.parametrize(("focus_x", "left", "right"), [
    (0.0, RED, RED), (0.25, RED, RED), (0.5, RED, BLUE), (0.75, BLUE, BLUE), (1.0, BLUE, BLUE)])
async def test_crop_focus_x_chooses_the_part_of_the_picture(
    folder: Path, tmp_path: Path, focus_x: float, left: tuple[int, int, int], right: tuple[int, int, int]
) -> None:
    """A 640x360 picture, red left half, blue right half, cropped to 9:16 (202 wide): the window is centred on
    focusX and kept inside the picture."""
    out = await _encode(_red_blue(folder), tmp_path / "out.mp4",
                        reframe_filters(Reframe(aspect="9:16", mode="crop", focus_x=focus_x)))
    frame = _frame(out)
    assert frame.shape[:2] == (360, 202)
    margin = 8  # away from the chroma bleed at a red/blue edge
    assert _is(frame[:, :margin], left), frame[:, :margin].mean(axis=(0, 1))
    assert _is(frame[:, -margin:], right), frame[:, -margin:].mean(axis=(0, 1))


@pytest.mark.parametrize(("source", "aspect", "bars"), [
    ("640x360", "9:16", "rows"), ("640x360", "1:1", "rows"), ("360x640", "1:1", "columns")])
async def test_pad_keeps_the_whole_picture_between_black_bars(
    folder: Path, tmp_path: Path, source: str, aspect: str, bars: str
) -> None:
    red = _lavfi_source(folder / f"red-{source}.mp4", f"color=c=red:size={source}:rate=10")
    out = await _encode(red, tmp_path / "out.mp4", reframe_filters(Reframe(aspect=aspect, mode="pad")))  # type: ignore[arg-type]
    frame = _frame(out)
    if bars == "columns":
        frame = frame.transpose(1, 0, 2)
    length = frame.shape[0]
    # the picture (long side 640 scaled to the frame's short side 360: 202.5 → 202) centred, bars on both sides
    picture = round(360 * 360 / 640 / 2) * 2
    top = (length - picture) // 2
    assert _is(frame[: top - 2], BLACK) and _is(frame[top + picture + 2:], BLACK)
    assert _is(frame[top + 2: top + picture - 2], RED)


async def test_burned_subtitles_are_laid_out_on_the_new_frame(folder: Path, tmp_path: Path) -> None:
    """Reframe then subtitles in one graph: the cue sits in the bottom of the 9:16 frame, whole (the text does not
    run off its sides, as it would if the 16:9 picture's subtitles were drawn and then cropped)."""
    srt_path = tmp_path / "subs.srt"
    srt_path.write_text(SRT)
    settings = load_settings({})
    reframe = Reframe(aspect="9:16", mode="crop")
    source = _lavfi_source(folder / "pattern-1280x720-gray.mp4", "color=c=gray:size=1280x720:rate=10")
    plain = await _encode(source, tmp_path / "plain.mp4", reframe_filters(reframe))
    burned = await _encode(source, tmp_path / "burned.mp4",
                           [*reframe_filters(reframe), subtitles_filter(srt_path, settings, 9 / 16)])
    width, height = _size(burned)
    assert (width, height) == (406, 720)
    diff = np.abs(_frame(burned, pix_fmt="gray") - _frame(plain, pix_fmt="gray"))[..., 0] > 24
    rows, columns = np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))
    assert rows.size > 0, "the subtitles were not drawn"
    assert 0.6 < rows[0] / height and 0.9 < rows[-1] / height < 1.0, (rows[0], rows[-1])
    assert not diff[: int(0.6 * height)].any()
    assert rows[-1] - rows[0] < 0.15 * height  # two lines: the font is sized for the narrow frame's width
    assert columns[0] > 2 and columns[-1] < width - 3, (columns[0], columns[-1])  # whole, inside the frame


@pytest.mark.parametrize("encoder", CANDIDATES, ids=lambda e: e.name)
def test_every_encoder_gets_the_reframed_frames_from_the_cpu_filters(encoder: VideoEncoder, tmp_path: Path) -> None:
    """The reframe and the subtitles are CPU filters: a hardware encoder's upload (hwupload) comes after them,
    its device set-up before the input, as for any re-encode."""
    subs = subtitles_filter(tmp_path / "subs.srt", load_settings({}), 9 / 16)
    filters = [*reframe_filters(Reframe(aspect="9:16", mode="pad")), subs]
    args = encode_args("in.mp4", tmp_path / "out.mp4", seek_sec=1.0, duration_sec=2.0, encoder=encoder, threads=2,
                       streams=[StreamFacts(index=0, kind="video", codec="h264")], extra_filters=filters)
    assert args[: len(encoder.input_args)] == list(encoder.input_args)
    graph = args[args.index("-vf") + 1]
    assert graph == ",".join([*filters, *encoder.upload_filters])
    assert args[args.index("-c:v") + 1] == encoder.name


@pytest.mark.parametrize(("reframe", "field"), [
    ({"aspect": "16:9"}, "reframe.aspect"),
    ({"aspect": "9:16", "mode": "zoom"}, "reframe.mode"),
    ({"aspect": "9:16", "focusX": 1.5}, "reframe.focusX"),
    ({"aspect": "9:16", "focusX": -0.1}, "reframe.focusX"),
    ({"aspect": "9:16", "focusX": "0.5"}, "reframe.focusX"),
    ({"mode": "crop"}, "reframe.aspect"),
    ("9:16", "reframe"),
])
async def test_an_invalid_reframe_is_refused_with_its_code(
    client: AsyncTestClient[Any], reframe: Any, field: str
) -> None:
    source = {"type": "url", "url": "https://media.example/a.mp4"}
    response = await client.post("/api/jobs", json={"source": source, "startSec": 0, "endSec": 2,
                                                    "reframe": reframe})
    assert response.status_code == 422, response.text
    assert (response.json()["error"]["code"], response.json()["error"]["field"]) == ("invalid_reframe", field)
    batch = await client.post("/api/jobs", json={"source": source, "clips": [
        {"startSec": 0, "endSec": 1}, {"startSec": 1, "endSec": 2, "reframe": reframe}]})
    assert batch.status_code == 422, batch.text
    assert (batch.json()["error"]["code"], batch.json()["error"]["field"]) == ("invalid_reframe", f"clips[1].{field}")
    # the same refusal for a message published straight to NATS (the fetcher decodes it)
    message = {"id": str(uuid7()), "source": source, "startSec": 0, "endSec": 2, "reframe": reframe}
    with pytest.raises(msgspec.ValidationError) as refused:
        msgspec.json.decode(json.dumps(message), type=ClipJobMessage)
    assert refusal_for_decode_error(refused.value).code == "invalid_reframe"


def test_the_reframe_is_part_of_the_request_fingerprint() -> None:
    job = ClipJobMessage(id=str(uuid7()), source=UrlSource(url="https://media.example/a.mp4"), start_sec=0,
                         end_sec=2)
    plain = request_fingerprint(job, "identity")
    prints = {request_fingerprint(msgspec.structs.replace(job, reframe=reframe), "identity") for reframe in (
        Reframe(aspect="9:16"), Reframe(aspect="1:1"), Reframe(aspect="9:16", mode="pad"),
        Reframe(aspect="9:16", focus_x=0.2))}
    assert len(prints) == 4 and plain not in prints
    explicit = msgspec.structs.replace(job, reframe=Reframe(aspect="9:16", mode="crop", focus_x=0.5))
    assert request_fingerprint(explicit, "identity") in prints  # the defaults spelled out: the same request


async def test_a_reframed_job_is_reencoded_to_the_new_frame(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, sample_video: Path, tmp_path: Path
) -> None:
    """Keyframe precision would copy this range; a reframe re-encodes it (one encode, no trim) at startSec."""
    workers.start()
    reframe = {"aspect": "9:16", "mode": "crop", "focusX": 0.2}
    job = await run_upload_job(client, sample_video, startSec=4.0, endSec=6.0, precision="keyframe", reframe=reframe)
    assert job["status"] == "done", job
    assert job["result"]["cutPath"] == "reencode"
    assert {"mode": "crop", **job["request"]["reframe"]} == reframe  # the view leaves defaults out
    assert await stages_run(resources, job["id"]) == ["fetch", "encode", "upload"]
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    assert _size(clip) == (202, 360)
    assert job["result"]["durationSec"] == pytest.approx(2.0, abs=0.05)


async def test_a_batch_reframes_each_clip_with_its_own_or_the_batchs_option(
    client: AsyncTestClient[Any], workers: Workers, sample_video: Path, tmp_path: Path
) -> None:
    workers.start()
    response = await client.post("/api/jobs", json={
        "source": {"type": "upload", "key": await upload(client, sample_video)},
        "reframe": {"aspect": "4:5", "mode": "pad"},
        "clips": [{"startSec": 1.0, "endSec": 2.0}, {"startSec": 3.0, "endSec": 4.0, "reframe": {"aspect": "1:1"}}],
    })
    assert response.status_code == 202, response.text
    sizes = []
    for index, accepted in enumerate(response.json()["jobs"]):
        job = await wait_for_job(client, accepted["id"])
        assert (job["status"], job["result"]["cutPath"]) == ("done", "reencode"), job
        sizes.append(_size(await download(job["urls"]["video"], tmp_path / f"clip{index}.mp4")))
    assert sizes == [(360, 450), (360, 360)]


async def test_the_cli_asks_for_a_reframe(cli: Cli, workers: Workers, sample_video: Path) -> None:  # noqa: F811
    workers.start()
    run = await cli("clip", str(sample_video), "--start", "1", "--end", "2", "--reframe", "9:16", "--focus-x", "1",
                    "-o", "short.mp4", "--json")
    assert run.code == 0, run.stderr
    view = json.loads(run.stdout)
    assert view["request"]["reframe"] == {"aspect": "9:16", "focusX": 1.0}
    assert view["result"]["cutPath"] == "reencode"
    assert _size(cli.cwd / "short.mp4") == (202, 360)
    refused = await cli("clip", str(sample_video), "--start", "1", "--end", "2", "--reframe", "9:16",
                        "--focus-x", "1.5")
    assert refused.code == 2 and "from 0 to 1" in refused.stderr, refused.stderr


@pytest.fixture(scope="module")
def speech_360p(tmp_path_factory: pytest.TempPathFactory) -> SpeechVideo:
    """640x360 video with espeak-ng speech from 1 s on."""
    return make_speech_video(tmp_path_factory.mktemp("reframe-speech") / "speech.mp4", SPEECH_SENTENCES[:2],
                             offset_sec=1.0, gap_sec=1.0, seconds=12, size="640x360")


@pytest.mark.settings(asr_model="tiny.en")
async def test_burn_in_and_reframe_are_one_encode_with_the_cues_in_the_new_frame(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, speech_360p: SpeechVideo, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """9:16 pad with burn-in: one ffmpeg run decodes, reframes, draws and encodes; the cue lies in the frame's
    bottom bar (black without it), whole; the top bar stays black."""
    runs: list[list[str]] = []
    real_run = encode_module.run_ffmpeg

    async def counted(args: list[str], **kwargs: Any) -> None:  # the real ffmpeg, its arguments kept
        runs.append(args)
        await real_run(args, **kwargs)

    monkeypatch.setattr(encode_module, "run_ffmpeg", counted)
    encodes_before = REGISTRY.get_sample_value("clipjet_encode_seconds_count") or 0.0
    workers.start()
    job = await run_upload_job(client, speech_360p.path, SUBS_JOB_TIMEOUT_SEC, startSec=0.5, endSec=11.5,
                               subs={"enabled": True, "burnIn": True, "lang": "en"},
                               reframe={"aspect": "9:16", "mode": "pad"})
    assert (job["status"], job["result"]["cutPath"]) == ("done", "reencode"), job
    assert await stages_run(resources, job["id"]) == ["fetch", "transcribe", "encode", "upload"]
    assert len(runs) == 1, runs  # one decode, one encode
    assert REGISTRY.get_sample_value("clipjet_encode_seconds_count") == encodes_before + 1
    graph = runs[0][runs[0].index("-vf") + 1]
    assert graph.index("pad=") < graph.index("subtitles=")  # the cues are drawn on the new frame

    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    width, height = _size(clip)
    assert (width, height) == (360, 640)
    async with httpx.AsyncClient() as http:
        cue = next(iter(srt.parse((await http.get(job["urls"]["srt"])).text)))
    at = (cue.start.total_seconds() + cue.end.total_seconds()) / 2
    luma = await asyncio.to_thread(_frame, clip, at, "gray")
    luma = luma[..., 0]
    picture = round(360 * 360 / 640 / 2) * 2  # 202 rows of picture, centred
    top, bottom = (height - picture) // 2, (height + picture) // 2
    text = luma > 128  # white glyphs on the black bar
    assert not text[: top - 2].any()  # the top bar is empty
    rows = np.flatnonzero(text[bottom + 2:].any(axis=1)) + bottom + 2
    assert rows.size > 0, "no cue drawn in the bottom bar"
    assert rows[-1] < height - 2, rows  # above the bottom edge (its margin)
    columns = np.flatnonzero(text[bottom + 2:].any(axis=0))
    assert columns[0] > 2 and columns[-1] < width - 3, (columns[0], columns[-1])  # whole, inside the frame
