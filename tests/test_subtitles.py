"""Subtitles end to end: real speech (espeak-ng) in an uploaded video → gateway → fetch (an upload's clip is cut
by the fetcher) → transcribe (faster-whisper, shipped models) → upload; the SRT, WebVTT and words JSON come back
through signed URLs."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
import srt
import webvtt
from litestar.testing import AsyncTestClient

from services.transcriber.handler import handle as transcribe
from services.uploader.handler import handle as upload_stage
from shared.db import jobs
from shared.jobs.contracts import Artifact, ClipJobMessage, ClipResult, StageMessage
from shared.runtime.progress import Progress
from shared.runtime.resources import Resources
from shared.runtime.worker import StageDeps
from shared.subtitles.cues import MAX_GAP_SEC
from tests.conftest import Workers
from tests.jobflow import run_job, run_upload_job, stages_run, upload
from tests.speech import SpeechVideo, word_error_rate

START_SEC, END_SEC = 5.5, 19.5  # the copy starts at the keyframe at 4.0 s
MAX_WER = 0.15
ONSET_TOLERANCE_SEC = 0.5
MAX_LINE_CHARS, MAX_LINES, MIN_CUE_SEC, MAX_CUE_SEC = 42, 2, 1.0, 7.0
SUBS_JOB_TIMEOUT_SEC = 120.0
BAND_TOP_RATIO = 0.7  # burned cues sit below this share of the picture's height
DRAWN_ROW_DIFF = 20.0  # mean luma difference of a picture row crossed by burned text, at least
NOISE_ROW_DIFF = 6.0  # mean luma difference of a row re-encoded at CRF 23 without text, at most


def _subtitle_codec(path: Path) -> str:
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0",
                            str(path)], check=True, capture_output=True, text=True, timeout=30)
    return probe.stdout.strip()


async def _fetch(url: str) -> bytes:
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200, response.text
    return response.content


async def _run_job(
    client: AsyncTestClient[Any], key: str, lang: str = "auto", end_sec: float = END_SEC
) -> dict[str, Any]:
    return await run_job(client, {"source": {"type": "upload", "key": key}, "startSec": START_SEC, "endSec": end_sec,
                                  "priority": "fast", "subs": {"enabled": True, "burnIn": False, "lang": lang}},
                         SUBS_JOB_TIMEOUT_SEC)


async def _check_subtitles(job: dict[str, Any], speech: SpeechVideo, tmp_path: Path) -> list[dict[str, Any]]:
    """What a user downloads: three files whose text matches the speech and whose timing matches the clip."""
    assert job["status"] == "done", job
    urls, clip_start = job["urls"], job["result"]["actualStartSec"]
    clip_sec = job["result"]["durationSec"]
    words = json.loads(await _fetch(urls["words"]))
    srt_text = (await _fetch(urls["srt"])).decode()
    vtt_path = tmp_path / "clip.vtt"
    vtt_path.write_bytes(await _fetch(urls["vtt"]))

    assert all(set(w) == {"word", "start", "end", "probability"} for w in words)
    assert all(isinstance(w[k], float) for w in words for k in ("start", "end", "probability"))
    assert word_error_rate(speech.text, " ".join(w["word"] for w in words)) <= MAX_WER
    speech_starts_in_clip = speech.spans[0][0] - clip_start
    assert abs(words[0]["start"] - speech_starts_in_clip) <= ONSET_TOLERANCE_SEC, (words[0], speech_starts_in_clip)
    assert words[-1]["end"] <= clip_sec + 1e-3

    cues = list(srt.parse(srt_text))  # a real SRT parser
    assert word_error_rate(speech.text, " ".join(c.content for c in cues)) <= MAX_WER
    captions = webvtt.read(str(vtt_path)).captions  # and a real WebVTT parser
    assert [c.text for c in captions] == [c.content for c in cues]
    silence = (speech.spans[0][1] - clip_start, speech.spans[1][0] - clip_start)  # 1.5 s without speech
    for cue in cues:
        start, end = cue.start.total_seconds(), cue.end.total_seconds()
        lines = cue.content.split("\n")
        assert len(lines) <= MAX_LINES and all(len(line) <= MAX_LINE_CHARS for line in lines), lines
        assert MIN_CUE_SEC - 1e-3 <= end - start <= MAX_CUE_SEC + 1e-3, cue
        assert 0 <= start < end <= clip_sec + 1e-3
        inside = [w for w in words if start - 1e-3 <= w["start"] and w["end"] <= end + 1e-3]
        assert all(b["start"] - a["end"] <= MAX_GAP_SEC for a, b in itertools.pairwise(inside))
        assert not (start < silence[0] and end > silence[1]), f"cue {cue} spans the silence {silence}"
    # ffmpeg reads both files back as subtitles too
    for name, body in (("clip.srt", srt_text.encode()), ("clip.vtt", vtt_path.read_bytes())):
        (tmp_path / name).write_bytes(body)
        assert _subtitle_codec(tmp_path / name) in ("subrip", "webvtt")
    return words


@pytest.mark.settings(asr_model="tiny.en")
async def test_subtitles_end_to_end_with_tiny_en(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, speech_video: SpeechVideo, tmp_path: Path
) -> None:
    workers.start()
    job = await _run_job(client, await upload(client, speech_video.path))
    await _check_subtitles(job, speech_video, tmp_path)
    assert job["result"]["subtitles"] == {"engine": "faster-whisper", "model": "tiny.en", "language": "en"}

    # each file under results/sha256/<2>/<its own sha256>/, beside the clip's
    results = await resources.storage.list_keys("results/")
    assert len(results) == 4
    for field, name in (("srt", "clip.srt"), ("vtt", "clip.vtt"), ("words", "clip.words.json")):
        body = await _fetch(job["urls"][field])
        digest = hashlib.sha256(body).hexdigest()
        assert f"results/sha256/{digest[:2]}/{digest}/{name}" in results
        assert f"/{digest}/{name}" in job["urls"][field]
    stages = await stages_run(resources, job["id"])
    assert stages == ["fetch", "transcribe", "upload"]  # the fetcher cut the upload's clip: no trimmer
    row = await jobs.get_job(resources.db, uuid.UUID(job["id"]))
    assert row is not None and row["result_keys"]["srt"] in results

    # a redelivered transcribe message reuses its stored outputs: no model is even given to it here
    clip = await resources.storage.head(f"staging/{job['id']}/clip.mp4")
    assert clip is not None
    task = StageMessage(
        job=msgspec.convert(row["request"], ClipJobMessage), route=["transcribe", "upload"], done=["fetch"],
        artifacts=[Artifact(stage="fetch", role="video", key=clip.key, size=clip.size, sha256=clip.sha256)],
        result=msgspec.convert(row["result"], ClipResult),
    )
    staged = [f"staging/{job['id']}/out/{name}" for name in ("clip.srt", "clip.vtt", "clip.words.json")]
    before = [await resources.storage.head(key) for key in staged]
    scratch = tmp_path / "redelivery"
    scratch.mkdir()
    again = await transcribe(task, StageDeps(resources, Progress("transcribe", 2, 4), scratch, 2, None))
    assert again.route == ["upload"] and [a.role for a in again.artifacts] == ["video", "srt", "vtt", "words"]
    assert again.subtitles is not None and again.subtitles.engine == "faster-whisper"  # from the stored files
    assert [await resources.storage.head(key) for key in staged] == before
    await upload_stage(again, StageDeps(resources, Progress("upload", 3, 4), scratch, 2, None))  # changes nothing
    assert await resources.storage.list_keys("results/") == results
    assert [e["type"] for e in await jobs.job_events(resources.db, uuid.UUID(job["id"]))].count("done") == 1


@pytest.mark.settings(asr_model="tiny.en")
async def test_english_only_model_with_another_language_fails_permanently(
    client: AsyncTestClient[Any], workers: Workers, speech_video: SpeechVideo
) -> None:
    workers.start()
    job = await _run_job(client, await upload(client, speech_video.path), lang="de")
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "language_unsupported", 1)
    assert "English-only" in job["errorMessage"]


@pytest.mark.settings(asr_model="base", asr_beam_size=1)
async def test_multilingual_base_detects_english_and_passes_lang_through(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, speech_video: SpeechVideo, tmp_path: Path
) -> None:
    workers.start()
    key = await upload(client, speech_video.path)
    auto = await _run_job(client, key)
    await _check_subtitles(auto, speech_video, tmp_path)
    # passed through (Whisper then writes Spanish, or translates); a short clip: only the language matters here
    forced = await _run_job(client, key, lang="es", end_sec=10.5)
    assert forced["status"] == "done", forced
    for job, language in ((auto, "en"), (forced, "es")):
        info = await resources.storage.head(f"staging/{job['id']}/out/clip.srt")
        assert info is not None and (info.metadata["language"], info.metadata["model"]) == (language, "base")
    assert forced["urls"]["srt"].split("?")[0] != auto["urls"]["srt"].split("?")[0]


@pytest.mark.settings(asr_model="tiny.en")
async def test_a_clip_without_speech_gets_empty_valid_subtitles(
    client: AsyncTestClient[Any], workers: Workers, sample_video: Path, tmp_path: Path
) -> None:
    """The test pattern's audio is a steady tone: no words, yet the job finishes with files a player accepts."""
    workers.start()
    job = await _run_job(client, await upload(client, sample_video), end_sec=9.0)
    assert job["status"] == "done", job
    assert json.loads(await _fetch(job["urls"]["words"])) == []
    assert list(srt.parse((await _fetch(job["urls"]["srt"])).decode())) == []
    vtt_path = tmp_path / "empty.vtt"
    vtt_path.write_bytes(await _fetch(job["urls"]["vtt"]))
    assert webvtt.read(str(vtt_path)).captions == []


def _luma_at(path: Path, at_sec: float) -> np.ndarray:
    """The luma plane of the frame of `path` on screen at `at_sec`, as int16 rows by columns."""
    info = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height", "-of", "json",
         str(path)], check=True, capture_output=True, text=True, timeout=30).stdout)["streams"][0]
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-vf", f"trim=start={at_sec:.6f},setpts=PTS-STARTPTS",
         "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        check=True, capture_output=True, timeout=60).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(info["height"], info["width"]).astype(np.int16)


@pytest.mark.settings(asr_model="tiny.en")
async def test_burn_in_draws_the_subtitles_in_the_cut_encode(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, speech_video: SpeechVideo, tmp_path: Path
) -> None:
    """`burnIn`: one encode cuts and draws; the clip's frames differ from the source's in the bottom band, where
    a cue is on screen, and nowhere else beyond encoding noise."""
    workers.start()
    job = await run_upload_job(client, speech_video.path, SUBS_JOB_TIMEOUT_SEC, startSec=START_SEC, endSec=END_SEC,
                               subs={"enabled": True, "burnIn": True, "lang": "en"})
    assert job["status"] == "done", job
    assert job["result"]["cutPath"] == "reencode"
    assert await stages_run(resources, job["id"]) == ["fetch", "transcribe", "encode", "upload"]  # one encode, no trim

    clip = tmp_path / "burned.mp4"
    clip.write_bytes(await _fetch(job["urls"]["video"]))
    cue = next(iter(srt.parse((await _fetch(job["urls"]["srt"])).decode())))
    at = (cue.start.total_seconds() + cue.end.total_seconds()) / 2
    burned = _luma_at(clip, at)
    plain = _luma_at(speech_video.path, job["result"]["actualStartSec"] + at)
    row_diff = np.abs(burned - plain).mean(axis=1)
    height = burned.shape[0]
    band = slice(int(height * BAND_TOP_RATIO), height)
    above = slice(0, int(height * BAND_TOP_RATIO))
    assert row_diff[band].max() > DRAWN_ROW_DIFF, row_diff[band]  # text drawn in the bottom band
    assert row_diff[above].max() < NOISE_ROW_DIFF, row_diff[above]  # and only there


@pytest.mark.settings(asr_model="tiny.en")
async def test_burn_in_of_a_clip_without_speech_gives_the_clip_without_text(
    client: AsyncTestClient[Any], workers: Workers, speech_video: SpeechVideo
) -> None:
    workers.start()
    silent_end = speech_video.spans[0][0] - 1.0  # the speech starts later
    job = await run_upload_job(client, speech_video.path, SUBS_JOB_TIMEOUT_SEC, startSec=0.5, endSec=silent_end,
                               subs={"enabled": True, "burnIn": True, "lang": "en"})
    assert (job["status"], job["result"]["cutPath"]) == ("done", "reencode"), job
    assert list(srt.parse((await _fetch(job["urls"]["srt"])).decode())) == []
