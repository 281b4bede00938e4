"""The speech engine with the real shipped models: assembling `base` once, CPU by default, language rules,
and the GPU out-of-memory fallback driven on CPU by failing the batched call at its boundary."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
from faster_whisper import BatchedInferencePipeline

from shared.asr import engine as engine_mod
from shared.asr.audio import SAMPLE_RATE_HZ, read_audio
from shared.asr.engine import AsrEngine, choose_device, is_oom
from shared.asr.models import BASE_MODEL_BYTES, BASE_PART1, BASE_PART2, _packaged_file, assemble_base
from shared.asr.resource import engine_for
from shared.errors import LanguageUnknown, LanguageUnsupported, ModelUnavailable
from shared.settings import load_settings
from tests.speech import SpeechVideo, word_error_rate

OOM = "CUDA failed with error out of memory"
HAS_CUDA = ctranslate2.get_cuda_device_count() > 0


def _sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_base_model_is_assembled_once_by_racing_processes(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        folders = list(pool.map(assemble_base, [tmp_path, tmp_path]))
    assert folders[0] == folders[1] == tmp_path / "whisper-base"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whisper-base"]  # no temporary folder left behind
    model = folders[0] / "model.bin"
    assert model.stat().st_size == BASE_MODEL_BYTES
    parts = [_packaged_file(spec[0], spec[1])[0] for spec in (BASE_PART1, BASE_PART2)]
    assert _sha256(model) == _sha256(*parts)
    assert {p.name for p in folders[0].iterdir()} == {"model.bin", "config.json", "tokenizer.json", "vocabulary.json"}
    mtime = model.stat().st_mtime_ns
    assert assemble_base(tmp_path) == folders[0] and model.stat().st_mtime_ns == mtime  # not rebuilt


def test_unwritable_models_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(ModelUnavailable, match="clipjet models"):
        assemble_base(blocked / "models")


@pytest.fixture(scope="module")
def tiny_engine() -> AsrEngine:
    return engine_for(load_settings({}, asr_model="tiny.en", asr_beam_size=1))


@pytest.fixture(scope="module")
async def speech_audio(speech_video: SpeechVideo) -> np.ndarray:
    return await read_audio(str(speech_video.path), start_sec=5.0, duration_sec=15.0)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
def test_cpu_is_chosen_without_a_gpu(tiny_engine: AsrEngine) -> None:
    assert choose_device("auto") == "cpu"
    assert tiny_engine.device == "cpu" and tiny_engine.model.model.device == "cpu"
    assert tiny_engine.model.model.compute_type.startswith("int8")


def test_english_only_model_refuses_other_languages(tiny_engine: AsrEngine) -> None:
    assert not tiny_engine.multilingual
    assert tiny_engine.language_for("auto") == "en" and tiny_engine.language_for("EN") == "en"
    with pytest.raises(LanguageUnsupported) as refused:
        tiny_engine.language_for("de")
    assert refused.value.code == "language_unsupported" and "English-only" in refused.value.message
    with pytest.raises(LanguageUnknown):
        tiny_engine.language_for("klingon")


async def test_gpu_out_of_memory_halves_the_batch_then_falls_back_to_cpu(
    tiny_engine: AsrEngine, speech_audio: np.ndarray, speech_video: SpeechVideo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's CUDA path with the real model (on CPU): the batched call fails like a GPU out of memory
    for the batch sizes we choose, at the function boundary, and otherwise runs for real."""
    real = BatchedInferencePipeline.transcribe
    tried: list[int] = []
    fits_up_to = {"batch": 2}

    def batched(self, audio, *args, **kwargs):  # type: ignore[no-untyped-def]
        tried.append(kwargs["batch_size"])
        if kwargs["batch_size"] > fits_up_to["batch"]:
            raise RuntimeError(OOM)
        return real(self, audio, *args, **kwargs)

    monkeypatch.setattr(BatchedInferencePipeline, "transcribe", batched)
    gpu = AsrEngine(tiny_engine.settings, tiny_engine.ref, "cuda", tiny_engine.model)  # the CUDA code path

    transcript = await gpu.transcribe(speech_audio, "auto")
    assert tried == [8, 4, 2] and transcript.device == "cuda"
    assert word_error_rate(speech_video.text, " ".join(w.word for w in transcript.words)) <= 0.15

    tried.clear()
    fits_up_to["batch"] = 0  # nothing fits on the "GPU": the clip runs on a CPU copy of the model
    transcript = await gpu.transcribe(speech_audio, "auto")
    assert tried == [8, 4, 2, 1] and transcript.device == "cpu"
    assert word_error_rate(speech_video.text, " ".join(w.word for w in transcript.words)) <= 0.15


def test_only_out_of_memory_errors_are_retried() -> None:
    assert is_oom(RuntimeError(OOM)) and not is_oom(RuntimeError("invalid argument"))
    calls: list[int] = []

    def broken(batch: int) -> engine_mod.Transcript:
        calls.append(batch)
        raise RuntimeError("invalid argument")

    with pytest.raises(RuntimeError, match="invalid argument"):
        engine_mod.run_with_oom_fallback(broken, 8, lambda: pytest.fail("no CPU fallback for other errors"))
    assert calls == [8]


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")
async def test_gpu_batched_transcription(speech_audio: np.ndarray, speech_video: SpeechVideo) -> None:
    engine = AsrEngine.load(load_settings({}, asr_model="base", asr_device="cuda"))
    assert engine.device == "cuda" and engine.model.model.compute_type in ("float16", "int8_float16")
    transcript = await engine.transcribe(speech_audio, "auto")
    assert transcript.device == "cuda" and transcript.language == "en"
    assert word_error_rate(speech_video.text, " ".join(w.word for w in transcript.words)) <= 0.15
    assert len(speech_audio) / SAMPLE_RATE_HZ > transcript.words[-1].end


async def test_concurrent_clips_share_one_batched_call(
    tiny_engine: AsrEngine, speech_audio: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU path's cross-job batching, run with the real model on CPU: three clips queued together go
    through one batched call, and each gets its own words back, timed from its own first sample."""
    real = BatchedInferencePipeline.transcribe
    calls: list[int] = []

    def batched(self, audio, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(kwargs["clip_timestamps"]))
        return real(self, audio, *args, **kwargs)

    monkeypatch.setattr(BatchedInferencePipeline, "transcribe", batched)
    gpu = AsrEngine(tiny_engine.settings, tiny_engine.ref, "cuda", tiny_engine.model)
    alone = await tiny_engine.transcribe(speech_audio, "en")
    pads_sec = (0.0, 1.0, 2.5)  # the same speech, each clip with more silence before it
    clips = [np.concatenate([np.zeros(int(p * SAMPLE_RATE_HZ), dtype=np.float32), speech_audio]) for p in pads_sec]
    results = await asyncio.gather(*(gpu.transcribe(clip, "auto") for clip in clips))
    assert gpu.batcher.batches == [3] and len(calls) == 1 and calls[0] >= 3
    for pad, transcript in zip(pads_sec, results, strict=True):
        assert transcript.device == "cuda" and transcript.language == "en"
        assert abs(transcript.words[0].start - (alone.words[0].start + pad)) < 0.5
        assert word_error_rate(" ".join(w.word for w in alone.words), " ".join(w.word for w in transcript.words)) < 0.1
