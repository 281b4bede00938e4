"""Hosted ASR (ASR_HOSTED_URL) against a real server process speaking the OpenAI-compatible transcription API,
built on the project's own engine (tests/hosted_asr_server.py): the client, the burst path, the fallback when
local inference runs out of memory (after the batch halving and the CPU copy), and a hosted server failing."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
from faster_whisper import BatchedInferencePipeline, WhisperModel
from litestar.testing import AsyncTestClient

from services.transcriber import routing
from shared.asr.audio import SAMPLE_RATE_HZ, read_audio
from shared.asr.engine import AsrEngine
from shared.asr.hosted import HostedAsr, _HostedAnswer, transcriptions_url, words_of
from shared.asr.languages import language_code
from shared.asr.resource import engine_for
from shared.errors import AsrOutOfMemory, HostedAsrRefused, HostedAsrUnavailable
from shared.jobs.pipeline import TRANSCRIBE
from shared.runtime.resources import Resources
from shared.settings import load_settings
from tests.conftest import Workers
from tests.speech import SpeechVideo, word_error_rate
from tests.test_clip_pipeline import upload
from tests.test_subtitles import START_SEC, _check_subtitles, _run_job

KEY = "hosted-test-key-0123456789"
OOM = "CUDA failed with error out of memory"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class HostedServer:
    url: str
    process: subprocess.Popen[str]

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/_requests").json()

    def fail_next(self, status: int, times: int) -> None:
        httpx.post(f"{self.url}/_control", json={"status": status, "times": times}).raise_for_status()


@contextmanager
def hosted_server_process(model: str = "tiny.en") -> Iterator[HostedServer]:
    """tests/hosted_asr_server.py on its own port with the shipped `model`, until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.hosted_asr_server", "--port", "0", "--key", KEY, "--model", model], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        line = ""
        while not line.startswith("listening on "):  # the model loads first (its log lines come before)
            line = process.stdout.readline()
            assert line, "the hosted ASR server exited before listening"
        threading.Thread(target=process.stdout.read, daemon=True).start()  # keep its log pipe drained
        yield HostedServer(f"http://127.0.0.1:{int(line.split()[-1])}", process)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def hosted_server() -> Iterator[HostedServer]:
    with hosted_server_process() as server:
        yield server


@pytest.fixture
def server(hosted_server: HostedServer) -> HostedServer:
    hosted_server.fail_next(503, 0)  # no failures left over from another test
    return hosted_server


@pytest.fixture(scope="module")
async def speech_audio(speech_video: SpeechVideo) -> np.ndarray:
    return await read_audio(str(speech_video.path), start_sec=5.0, duration_sec=15.0)


def test_endpoint_url_forms() -> None:
    assert transcriptions_url("https://api.example.com/v1") == "https://api.example.com/v1/audio/transcriptions"
    assert transcriptions_url("http://10.0.0.5:8000/") == "http://10.0.0.5:8000/v1/audio/transcriptions"
    assert transcriptions_url("http://h/x/audio/transcriptions") == "http://h/x/audio/transcriptions"
    with pytest.raises(ValueError, match="ASR_HOSTED_URL"):
        load_settings({"ASR_HOSTED_URL": "ftp://example.com"})


def test_answers_with_words_only_inside_segments_and_language_names() -> None:
    """Servers differ: words at the top or per segment, the language as a name or a code, times past the end."""
    answer = msgspec.json.decode(json.dumps({
        "language": "German", "text": "hallo welt",
        "segments": [{"start": 0.0, "end": 3.0, "avg_logprob": -0.5,
                      "words": [{"word": " welt", "start": 1.2, "end": 3.4},
                                {"word": " hallo", "start": 0.1, "end": 1}]}],
    }), type=_HostedAnswer)
    words = words_of(answer, audio_sec=3.0)
    assert [(w.word, w.start, w.end) for w in words] == [("hallo", 0.1, 1.0), ("welt", 1.2, 3.0)]
    assert all(abs(w.probability - 0.6065) < 1e-3 for w in words)
    assert language_code(answer.language) == "de" and language_code("en") == "en" and language_code("elvish") == ""


async def test_client_sends_only_the_clip_audio_compressed_and_reads_words(
    server: HostedServer, speech_audio: np.ndarray, speech_video: SpeechVideo
) -> None:
    before = len(server.requests())
    client = HostedAsr(load_settings({}, asr_hosted_url=f"{server.url}/v1", asr_hosted_key=KEY))
    transcript = await client.transcribe(speech_audio, None)
    assert transcript.engine == "hosted" and transcript.language == "en"  # "english" in the answer
    heard = " ".join(w.word for w in transcript.words)
    assert word_error_rate(speech_video.text, heard) <= 0.15, heard
    assert all(0 <= w.start <= w.end <= 15.0 and 0 < w.probability <= 1 for w in transcript.words)
    [sent] = server.requests()[before:]
    assert sent["content_type"] == "audio/flac" and sent["filename"] == "clip.flac"
    assert abs(sent["duration_sec"] - len(speech_audio) / SAMPLE_RATE_HZ) < 0.1  # the clip's 15 s, no more
    assert sent["bytes"] < len(speech_audio) * 2 * 0.8  # compressed below 16-bit PCM
    assert sent["form"]["response_format"] == ["verbose_json"] and "word" in sent["form"]["timestamp_granularities[]"]
    assert sent["form"]["model"] == ["whisper-1"] and "language" not in sent["form"]

    opus = HostedAsr(load_settings({}, asr_hosted_url=server.url, asr_hosted_key=KEY, asr_hosted_audio_format="opus"))
    forced = await opus.transcribe(speech_audio, "en")
    assert word_error_rate(speech_video.text, " ".join(w.word for w in forced.words)) <= 0.15
    last = server.requests()[-1]
    assert last["content_type"] == "audio/ogg" and last["bytes"] < sent["bytes"] / 3
    assert last["form"]["language"] == ["en"]


async def test_wrong_key_and_server_errors_have_stable_codes(server: HostedServer, speech_audio: np.ndarray) -> None:
    wrong = HostedAsr(load_settings({}, asr_hosted_url=server.url, asr_hosted_key="not-the-key-at-all"))
    with pytest.raises(HostedAsrRefused) as refused:
        await wrong.transcribe(speech_audio[:SAMPLE_RATE_HZ], "en")
    assert refused.value.code == "asr_hosted_refused" and "401" in refused.value.message
    server.fail_next(503, 1)
    right = HostedAsr(load_settings({}, asr_hosted_url=server.url, asr_hosted_key=KEY))
    with pytest.raises(HostedAsrUnavailable) as unavailable:
        await right.transcribe(speech_audio[:SAMPLE_RATE_HZ], "en")
    assert unavailable.value.code == "asr_hosted_unavailable" and "503" in unavailable.value.message
    gone = HostedAsr(load_settings({}, asr_hosted_url="http://127.0.0.1:9", asr_hosted_key=KEY))
    with pytest.raises(HostedAsrUnavailable):
        await gone.transcribe(speech_audio[:SAMPLE_RATE_HZ], "en")


async def _queue_transcribe_messages(res: Resources, count: int) -> None:
    """Messages waiting on the transcribe consumer (nobody pulls them here): the queue of a burst."""
    for i in range(count):
        await res.js.publish(res.subjects.stage(TRANSCRIBE, "normal"), f'{{"queued": {i}}}'.encode())


@pytest.mark.settings(asr_model="tiny.en", asr_beam_size=1, asr_hosted_burst_pending=2)
async def test_burst_goes_to_the_hosted_api_and_a_failing_one_falls_back_to_local(
    resources: Resources, hosted_server: HostedServer, speech_audio: np.ndarray, speech_video: SpeechVideo,
) -> None:
    server = hosted_server
    server.fail_next(503, 0)
    settings = msgspec.structs.replace(resources.settings, asr_hosted_url=server.url, asr_hosted_key=KEY)
    resources = dataclasses.replace(resources, settings=settings)
    engine = engine_for(settings)
    routing._pending_seen.clear()
    calm = await routing.transcribe(resources, engine, speech_audio, "auto", lambda _: None)
    assert calm.engine == "faster-whisper"  # nothing queued: local

    await _queue_transcribe_messages(resources, 3)  # 3 waiting > ASR_HOSTED_BURST_PENDING 2
    routing._pending_seen.clear()
    before = len(server.requests())
    burst = await routing.transcribe(resources, engine, speech_audio, "auto", lambda _: None)
    assert burst.engine == "hosted" and len(server.requests()) == before + 1
    assert word_error_rate(speech_video.text, " ".join(w.word for w in burst.words)) <= 0.15

    server.fail_next(503, 1)  # the hosted API is down during the burst: the clip is transcribed here after all
    routing._pending_seen.clear()
    fallback = await routing.transcribe(resources, engine, speech_audio, "auto", lambda _: None)
    assert fallback.engine == "faster-whisper" and len(server.requests()) == before + 2
    assert word_error_rate(speech_video.text, " ".join(w.word for w in fallback.words)) <= 0.15
    await resources.js.purge_stream(settings.nats_stream)


def _oom_everywhere(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Local inference fails for lack of memory at the library boundary: the batched GPU call at every batch
    size and the CPU model (CTranslate2 raises MemoryError for std::bad_alloc)."""
    seen: list[str] = []

    def batched(self, audio, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(f"gpu:{kwargs['batch_size']}")
        raise RuntimeError(OOM)

    def on_cpu(self, audio, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append("cpu")
        raise MemoryError("std::bad_alloc")

    monkeypatch.setattr(BatchedInferencePipeline, "transcribe", batched)
    monkeypatch.setattr(WhisperModel, "transcribe", on_cpu)
    return seen


async def test_out_of_memory_after_the_batch_halving_is_a_stable_error(
    speech_audio: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = engine_for(load_settings({}, asr_model="tiny.en", asr_beam_size=1))
    seen = _oom_everywhere(monkeypatch)
    gpu = AsrEngine(tiny.settings, tiny.ref, "cuda", tiny.model)  # the CUDA code path, its OOM fallback
    gpu._cpu_model = tiny.model
    with pytest.raises(AsrOutOfMemory) as failed:
        await gpu.transcribe(speech_audio, "en")
    assert seen == ["gpu:8", "gpu:4", "gpu:2", "gpu:1", "cpu"] and failed.value.code == "asr_out_of_memory"
    with pytest.raises(AsrOutOfMemory):
        await tiny.transcribe(speech_audio, "en")  # the CPU engine too


@pytest.mark.settings(asr_model="tiny.en", asr_beam_size=1, max_attempts=2)
async def test_out_of_memory_sends_the_job_to_the_hosted_api_and_the_job_says_so(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, hosted_server: HostedServer,
    speech_video: SpeechVideo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = hosted_server
    server.fail_next(503, 0)
    hosted = msgspec.structs.replace(resources.settings, asr_hosted_url=server.url, asr_hosted_key=KEY)
    monkeypatch.setattr(resources, "settings", hosted)  # what the transcriber worker reads
    _oom_everywhere(monkeypatch)
    workers.start()
    key = await upload(client, speech_video.path)
    before = len(server.requests())

    job = await _run_job(client, key)
    await _check_subtitles(job, speech_video, tmp_path)
    assert job["result"]["subtitles"] == {"engine": "hosted", "model": "whisper-1", "language": "en"}
    [sent] = server.requests()[before:]
    clip_sec = job["result"]["durationSec"]
    assert abs(sent["duration_sec"] - clip_sec) < 0.2  # the clip's audio segment only, not the source's 20 s
    assert job["result"]["actualStartSec"] <= START_SEC

    server.fail_next(503, 1)  # down once: the attempt fails with its code, the retry gets through
    retried = await _run_job(client, key, end_sec=12.0)
    assert retried["status"] == "done" and retried["attempts"] == 2, retried
    assert retried["result"]["subtitles"]["engine"] == "hosted"

    server.fail_next(503, 10)  # down for good: the job fails with the hosted API's stable code
    failed = await _run_job(client, key, end_sec=11.0)
    assert (failed["status"], failed["errorCode"]) == ("failed", "asr_hosted_unavailable"), failed
