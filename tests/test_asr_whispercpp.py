"""ASR_ENGINE=whisper.cpp with the project's own shipped models converted to ggml: the conversion, the words
and their times against the known speech, language detection and forcing, and the same language rules."""

from __future__ import annotations

import asyncio
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from shared.asr.audio import SAMPLE_RATE_HZ, read_audio
from shared.asr.ggml import GGML_MAGIC, ggml_model, hyper_parameters, read_ct2
from shared.asr.models import resolve_model
from shared.asr.resource import engine_for
from shared.asr.whispercpp import WhisperCppEngine
from shared.errors import LanguageUnknown, LanguageUnsupported, ModelUnavailable
from shared.settings import load_settings
from tests.speech import SpeechVideo, word_error_rate

CLIP_START_SEC = 5.0
GERMAN = "Guten Morgen zusammen, und willkommen zum Treffen des Gartenvereins."


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny_cpp(models_dir: Path) -> WhisperCppEngine:
    return engine_for(load_settings({}, asr_engine="whisper.cpp", asr_model="tiny.en", asr_beam_size=1,
                                    asr_models_dir=str(models_dir)))


@pytest.fixture(scope="module")
async def speech_audio(speech_video: SpeechVideo) -> np.ndarray:
    return await read_audio(str(speech_video.path), start_sec=CLIP_START_SEC, duration_sec=15.0)


def test_engine_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="ASR_ENGINE"):
        load_settings({"ASR_ENGINE": "whisper-cpp"})
    assert load_settings({"ASR_ENGINE": "whisper.cpp"}).asr_engine == "whisper.cpp"


def test_shipped_model_is_converted_once_to_ggml(tiny_cpp: WhisperCppEngine, models_dir: Path) -> None:
    path = tiny_cpp.ggml_path
    names = [p.name for p in models_dir.iterdir()]
    assert path.parent == models_dir and "ggml-tiny.en.bin" in names
    assert not [name for name in names if name.startswith(".")]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the service user when another user converted it
    ct2 = read_ct2(tiny_cpp.ref.path / "model.bin")
    with path.open("rb") as handle:
        magic, *params = struct.unpack("12i", handle.read(48))
    assert magic == GGML_MAGIC and params == hyper_parameters(ct2)
    assert params[:5] == [51864, 1500, 384, 6, 4]  # tiny.en: vocabulary, audio ctx, width, heads, layers
    mtime = path.stat().st_mtime_ns
    assert ggml_model(tiny_cpp.ref.path, "tiny.en", models_dir) == path and path.stat().st_mtime_ns == mtime


def test_an_unwritable_models_folder_names_the_fix(tiny_cpp: WhisperCppEngine, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_bytes(b"")  # a folder under a file cannot be made, even by root
    with pytest.raises(ModelUnavailable, match=r"run `ASR_ENGINE=whisper\.cpp ASR_WHISPERCPP_WEIGHTS=q8_0 clipjet "
                                               r"models` where that folder is writable"):
        ggml_model(tiny_cpp.ref.path, "tiny.en", blocked / "models", "q8_0")


async def test_transcribes_the_speech_with_word_times(
    tiny_cpp: WhisperCppEngine, speech_audio: np.ndarray, speech_video: SpeechVideo
) -> None:
    progress: list[float] = []
    transcript = await tiny_cpp.transcribe(speech_audio, "auto", progress.append)
    assert transcript.engine == "whisper.cpp" and transcript.device == "cpu" and transcript.language == "en"
    heard = " ".join(w.word for w in transcript.words)
    assert word_error_rate(speech_video.text, heard) <= 0.15, heard
    starts = [w.start for w in transcript.words]
    assert starts == sorted(starts) and all(w.end >= w.start for w in transcript.words)
    first_start = speech_video.spans[0][0] - CLIP_START_SEC
    silence = (speech_video.spans[0][1] - CLIP_START_SEC, speech_video.spans[1][0] - CLIP_START_SEC)
    assert abs(transcript.words[0].start - first_start) < 0.6  # times are the clip's: the speech starts 1 s in
    assert not any(silence[0] + 0.3 < w.start < silence[1] - 0.3 for w in transcript.words)  # none in the pause
    assert len(speech_audio) / SAMPLE_RATE_HZ > transcript.words[-1].end
    assert progress and progress[-1] <= 1.0 and progress == sorted(progress)


async def test_q8_0_weights_are_half_the_size_and_transcribe_as_well(
    tiny_cpp: WhisperCppEngine, models_dir: Path, speech_audio: np.ndarray, speech_video: SpeechVideo
) -> None:
    engine = engine_for(load_settings({}, asr_engine="whisper.cpp", asr_model="tiny.en", asr_beam_size=1,
                                      asr_whispercpp_weights="q8_0", asr_models_dir=str(models_dir)))
    assert engine.ggml_path.name == "ggml-tiny.en-q8_0.bin"
    assert engine.ggml_path.stat().st_size < 0.6 * tiny_cpp.ggml_path.stat().st_size
    transcript = await engine.transcribe(speech_audio, "en")
    assert word_error_rate(speech_video.text, " ".join(w.word for w in transcript.words)) <= 0.15


async def test_silence_gives_no_words(tiny_cpp: WhisperCppEngine) -> None:
    transcript = await tiny_cpp.transcribe(np.zeros(5 * SAMPLE_RATE_HZ, dtype=np.float32), "en")
    assert transcript.words == [] and transcript.language == "en"


def test_english_only_model_refuses_other_languages(tiny_cpp: WhisperCppEngine) -> None:
    assert not tiny_cpp.multilingual
    assert tiny_cpp.language_for("auto") == "en"
    with pytest.raises(LanguageUnsupported):
        tiny_cpp.language_for("de")
    with pytest.raises(LanguageUnknown):
        tiny_cpp.language_for("klingon")


@pytest.mark.timeout(600)  # converts and runs the 145 MB base model on a shared CPU
async def test_multilingual_model_detects_and_forces_languages(
    models_dir: Path, speech_audio: np.ndarray, speech_video: SpeechVideo, tmp_path: Path
) -> None:
    engine = engine_for(load_settings({}, asr_engine="whisper.cpp", asr_model="base", asr_beam_size=1,
                                      asr_models_dir=str(models_dir)))
    assert engine.multilingual and resolve_model("base", models_dir).path == engine.ref.path
    first_sentence = speech_audio[: int((speech_video.spans[0][1] - CLIP_START_SEC + 0.5) * SAMPLE_RATE_HZ)]
    detected = await engine.transcribe(first_sentence, "auto")
    assert detected.language == "en"
    assert word_error_rate(speech_video.sentences[0], " ".join(w.word for w in detected.words)) <= 0.15
    wav = tmp_path / "de.wav"
    await asyncio.to_thread(subprocess.run, ["espeak-ng", "-v", "de", "-s", "140", "-w", str(wav), GERMAN], check=True)
    german = await read_audio(str(wav), start_sec=0.0, duration_sec=30.0)
    heard = await engine.transcribe(german, "auto")
    assert heard.language == "de" and word_error_rate(GERMAN, " ".join(w.word for w in heard.words)) <= 0.4
    forced = await engine.transcribe(german, "de")
    assert forced.language == "de" and forced.words
