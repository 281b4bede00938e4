"""Translation (`subs.translate: "en"`): Whisper's translate task on every engine, with a Spanish speech sample
(espeak-ng) and the multilingual shipped `base` model. Translated cues are English, untranslated ones Spanish,
and the job names the language spoken (`sourceLanguage`); other values and English-only models are refused
with stable codes."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import srt
from faster_whisper import BatchedInferencePipeline
from litestar.testing import AsyncTestClient

from services.transcriber import routing
from shared.asr.audio import read_audio
from shared.asr.engine import AsrEngine
from shared.asr.hosted import HostedAsr, translations_url
from shared.asr.resource import engine_for
from shared.db import jobs
from shared.errors import ModelCannotTranslate
from shared.jobs.contracts import ClipJobMessage, Subtitles, UrlSource
from shared.jobs.fingerprint import request_fingerprint
from shared.runtime.resources import Resources
from shared.settings import load_settings
from shared.subtitles.outputs import SRT
from shared.subtitles.words import Word
from tests.conftest import Workers
from tests.jobflow import run_job, upload
from tests.speech import SpeechVideo, make_speech_video, normalise
from tests.test_asr_hosted import KEY, HostedServer, _queue_transcribe_messages, hosted_server_process
from tests.test_direct_publish import _end_event_read_later
from tests.test_subtitles import SUBS_JOB_TIMEOUT_SEC, _fetch

SPANISH = (
    "Buenos días a todos, y bienvenidos a la reunión semanal del club de jardinería.",
    "Hoy vamos a hablar de la nueva biblioteca y del presupuesto para el próximo año.",
)
SPANISH_SEC = 16.0
ENGLISH_WORDS = {"good", "morning", "everyone", "welcome", "today", "talk"}  # what a translation says
SPANISH_WORDS = {"buenos", "días", "todos", "bienvenidos", "hoy", "vamos", "hablar", "biblioteca"}
ONSET_TOLERANCE_SEC = 0.5


def assert_english(text: str) -> None:
    heard = set(normalise(text))
    assert len(heard & ENGLISH_WORDS) >= 4 and not heard & SPANISH_WORDS, text


def assert_spanish(text: str) -> None:
    heard = set(normalise(text))
    assert len(heard & SPANISH_WORDS) >= 5 and not heard & ENGLISH_WORDS, text


def assert_timed(words: list[Word], speech: SpeechVideo, audio_sec: float) -> None:
    """Word times inside the audio, in order, the first at the speech's onset."""
    assert words and all(0 <= w.start <= w.end <= audio_sec + 1e-3 for w in words)
    assert all(a.start <= b.start for a, b in itertools.pairwise(words))
    assert abs(words[0].start - speech.spans[0][0]) <= ONSET_TOLERANCE_SEC, (words[0], speech.spans[0])


@pytest.fixture(scope="module")
def spanish_video(tmp_path_factory: pytest.TempPathFactory) -> SpeechVideo:
    """16 s of video with espeak-ng's Spanish voice reading SPANISH from 2 s on."""
    return make_speech_video(tmp_path_factory.mktemp("spanish") / "es.mp4", SPANISH, offset_sec=2.0, gap_sec=1.5,
                             seconds=SPANISH_SEC, voice="es")


@pytest.fixture(scope="module")
async def spanish_audio(spanish_video: SpeechVideo) -> np.ndarray:
    return await read_audio(str(spanish_video.path), start_sec=0.0, duration_sec=SPANISH_SEC)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


# ---------------------------------------------------------------- the contract


async def test_only_english_is_a_translation_target(client: AsyncTestClient[Any]) -> None:
    source = {"type": "url", "url": "https://media.example/talk.mp4"}
    for value in ("fr", "EN", True, 1, ""):
        answer = await client.post("/api/jobs", json={
            "source": source, "startSec": 1, "endSec": 4, "subs": {"enabled": True, "translate": value}})
        error = answer.json()["error"]
        assert (answer.status_code, error["code"], error["field"]) == (422, "translate_unsupported",
                                                                      "subs.translate"), answer.text
        assert '"en"' in error["message"] and "English" in error["message"]
    batch = await client.post("/api/jobs", json={
        "source": source, "clips": [{"startSec": 1, "endSec": 4}, {"startSec": 5, "endSec": 8,
                                                                    "subs": {"enabled": True, "translate": "de"}}]})
    assert (batch.status_code, batch.json()["error"]["code"], batch.json()["error"]["field"]) == (
        422, "translate_unsupported", "clips[1].subs.translate"), batch.text
    for value in ("en", None):
        accepted = await client.post("/api/jobs", json={
            "source": source, "startSec": 1, "endSec": 4, "subs": {"enabled": True, "translate": value}})
        assert accepted.status_code == 202, accepted.text


def test_the_fingerprint_tells_translated_from_untranslated() -> None:
    job = ClipJobMessage(id=str(uuid.uuid4()), source=UrlSource("https://media.example/a.mp4"), start_sec=1,
                         end_sec=4, subs=Subtitles(enabled=True))
    translated = msgspec.structs.replace(job, subs=Subtitles(enabled=True, translate="en"))
    assert request_fingerprint(job, "s") != request_fingerprint(translated, "s")
    # a request from before the field existed keeps its fingerprint (the field is left out when not set)
    assert b"translate" not in msgspec.json.encode(job)


# ---------------------------------------------------------------- the engines


@pytest.mark.timeout(600)
@pytest.mark.parametrize("asr_engine", ["faster-whisper", "whisper.cpp"])
async def test_each_engine_translates_spanish_into_english(
    asr_engine: str, spanish_audio: np.ndarray, spanish_video: SpeechVideo, models_dir: Path
) -> None:
    engine = engine_for(load_settings({}, asr_engine=asr_engine, asr_model="base", asr_beam_size=1,
                                      asr_models_dir=str(models_dir)))
    spoken = await engine.transcribe(spanish_audio, "auto")
    assert (spoken.language, spoken.translated_to) == ("es", "")
    assert_spanish(" ".join(w.word for w in spoken.words))

    translated = await engine.transcribe(spanish_audio, "auto", translate=True)
    assert (translated.language, translated.translated_to, translated.engine) == ("es", "en", asr_engine)
    assert_english(" ".join(w.word for w in translated.words))
    assert_timed(translated.words, spanish_video, SPANISH_SEC)


@pytest.mark.timeout(600)
async def test_the_gpu_batched_path_translates_and_never_mixes_tasks_in_a_batch(
    spanish_audio: np.ndarray, spanish_video: SpeechVideo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA path (cross-job batches through BatchedInferencePipeline), run with the real base model on CPU:
    a translated clip and a transcribed one queued together go through two batched calls, each with its task."""
    real = BatchedInferencePipeline.transcribe
    tasks: list[str] = []

    def batched(self, audio, *args, **kwargs):  # type: ignore[no-untyped-def]
        tasks.append(kwargs.get("task", "transcribe"))
        return real(self, audio, *args, **kwargs)

    monkeypatch.setattr(BatchedInferencePipeline, "transcribe", batched)
    base = engine_for(load_settings({}, asr_model="base", asr_beam_size=1))
    gpu = AsrEngine(base.settings, base.ref, "cuda", base.model)
    translated, spoken = await asyncio.gather(gpu.transcribe(spanish_audio, "es", translate=True),
                                              gpu.transcribe(spanish_audio, "es"))  # queued at once (no detection)
    assert gpu.batcher.batches == [1, 1] and sorted(tasks) == ["transcribe", "translate"]
    assert (translated.device, translated.language, translated.translated_to) == ("cuda", "es", "en")
    assert_english(" ".join(w.word for w in translated.words))
    assert_timed(translated.words, spanish_video, SPANISH_SEC)
    assert (spoken.language, spoken.translated_to) == ("es", "")
    assert_spanish(" ".join(w.word for w in spoken.words))


async def test_english_only_models_cannot_translate(spanish_audio: np.ndarray, models_dir: Path) -> None:
    for asr_engine in ("faster-whisper", "whisper.cpp"):
        tiny = engine_for(load_settings({}, asr_engine=asr_engine, asr_model="tiny.en", asr_beam_size=1,
                                        asr_models_dir=str(models_dir)))
        assert tiny.task_for(False) == "transcribe"
        with pytest.raises(ModelCannotTranslate) as refused:
            await tiny.transcribe(spanish_audio, "auto", translate=True)
        assert refused.value.code == "model_cannot_translate" and "English-only" in refused.value.message


# ---------------------------------------------------------------- jobs


async def _job(client: AsyncTestClient[Any], key: str, **subs: Any) -> dict[str, Any]:
    return await run_job(client, {"source": {"type": "upload", "key": key}, "startSec": 0, "endSec": SPANISH_SEC,
                                  "priority": "fast", "subs": {"enabled": True, **subs}}, SUBS_JOB_TIMEOUT_SEC)


async def _cue_text(job: dict[str, Any]) -> str:
    assert job["status"] == "done", job
    return " ".join(c.content for c in srt.parse((await _fetch(job["urls"]["srt"])).decode()))


@pytest.mark.timeout(600)
@pytest.mark.settings(asr_model="base", asr_beam_size=1)
async def test_a_translated_job_has_english_cues_and_says_spanish_was_spoken(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, spanish_video: SpeechVideo
) -> None:
    workers.start()
    key = await upload(client, spanish_video.path)
    translated = await _job(client, key, translate="en")
    assert_english(await _cue_text(translated))
    assert translated["request"]["subs"]["translate"] == "en"
    assert translated["result"]["subtitles"] == {
        "engine": "faster-whisper", "model": "base", "language": "en", "sourceLanguage": "es"}
    event = await _end_event_read_later(resources, translated["id"])  # the job's end event says it too
    assert event.result is not None and event.result.subtitles is not None
    assert (event.result.subtitles.language, event.result.subtitles.source_language) == ("en", "es")
    info = await resources.storage.head(SRT.staging_key(translated["id"]))
    assert info is not None and (info.metadata["language"], info.metadata["source-language"]) == ("en", "es")

    spoken = await _job(client, key)  # the same clip untranslated: Spanish cues, another result
    assert_spanish(await _cue_text(spoken))
    assert spoken["result"]["subtitles"] == {"engine": "faster-whisper", "model": "base", "language": "es"}
    assert spoken["urls"]["srt"].split("?")[0] != translated["urls"]["srt"].split("?")[0]
    row = await jobs.get_job(resources.db, uuid.UUID(spoken["id"]))
    assert row is not None and row["status"] == "done"


@pytest.mark.settings(asr_model="tiny.en")
async def test_a_translated_job_on_an_english_only_model_fails_with_its_code(
    client: AsyncTestClient[Any], workers: Workers, speech_video: SpeechVideo
) -> None:
    workers.start()
    job = await _job(client, await upload(client, speech_video.path), translate="en")
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "model_cannot_translate", 1), job
    assert "multilingual ASR_MODEL" in job["errorMessage"]


@pytest.mark.settings(asr_model="tiny.en")
async def test_an_english_clip_translated_on_an_english_only_model_is_transcribed(
    client: AsyncTestClient[Any], workers: Workers, speech_video: SpeechVideo
) -> None:
    """lang "en" with translate "en": English into English is what the English-only model does anyway."""
    workers.start()
    job = await _job(client, await upload(client, speech_video.path), translate="en", lang="en")
    assert job["status"] == "done", job
    assert job["result"]["subtitles"]["language"] == "en"
    assert "sourceLanguage" not in job["result"]["subtitles"]
    assert await _cue_text(job)


# ---------------------------------------------------------------- the hosted API


@pytest.fixture(scope="module")
def base_server() -> Iterator[HostedServer]:
    with hosted_server_process("base") as server:
        yield server


def test_the_translations_endpoint_sits_beside_the_transcriptions_one() -> None:
    assert translations_url("https://api.example.com/v1") == "https://api.example.com/v1/audio/translations"
    assert translations_url("http://10.0.0.5:8000/") == "http://10.0.0.5:8000/v1/audio/translations"
    assert translations_url("http://h/x/audio/transcriptions") == "http://h/x/audio/translations"
    assert translations_url("http://h/v1/audio/transcriptions?k=1") == "http://h/v1/audio/translations?k=1"


@pytest.mark.timeout(600)
async def test_the_hosted_api_translates_through_its_translations_endpoint(
    base_server: HostedServer, spanish_audio: np.ndarray, spanish_video: SpeechVideo
) -> None:
    before = len(base_server.requests())
    client = HostedAsr(load_settings({}, asr_hosted_url=f"{base_server.url}/v1", asr_hosted_key=KEY))
    translated = await client.transcribe(spanish_audio, None, translate=True)
    assert (translated.engine, translated.translated_to) == ("hosted", "en")
    assert translated.language == ""  # OpenAI's translations answer "english" whatever was spoken: unknown
    assert_english(" ".join(w.word for w in translated.words))
    assert_timed(translated.words, spanish_video, SPANISH_SEC)  # segment times shared among their words
    [sent] = base_server.requests()[before:]
    assert sent["path"] == "/v1/audio/translations"
    assert "language" not in sent["form"] and "timestamp_granularities[]" not in sent["form"]

    named = await client.transcribe(spanish_audio, "es", translate=True)  # subs.lang named it: that is the source
    assert (named.language, named.translated_to) == ("es", "en")
    spoken = await client.transcribe(spanish_audio, None)
    assert (spoken.language, spoken.translated_to) == ("es", "")
    assert_spanish(" ".join(w.word for w in spoken.words))
    assert base_server.requests()[-1]["path"] == "/v1/audio/transcriptions"


@pytest.mark.timeout(600)
@pytest.mark.settings(asr_model="base", asr_beam_size=1, asr_hosted_burst_pending=1)
async def test_a_burst_translates_on_the_hosted_api_and_the_local_model_names_the_source(
    resources: Resources, base_server: HostedServer, spanish_audio: np.ndarray
) -> None:
    settings = msgspec.structs.replace(resources.settings, asr_hosted_url=base_server.url, asr_hosted_key=KEY)
    resources = dataclasses.replace(resources, settings=settings)
    engine = engine_for(settings)
    await _queue_transcribe_messages(resources, 2)  # 2 waiting > ASR_HOSTED_BURST_PENDING 1
    routing._pending_seen.clear()
    before = len(base_server.requests())
    burst = await routing.transcribe(resources, engine, spanish_audio, "auto", lambda _: None, translate=True)
    assert (burst.engine, burst.language, burst.translated_to) == ("hosted", "es", "en")
    assert_english(" ".join(w.word for w in burst.words))
    assert [r["path"] for r in base_server.requests()[before:]] == ["/v1/audio/translations"]
    await resources.js.purge_stream(settings.nats_stream)
