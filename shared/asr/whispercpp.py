"""whisper.cpp behind the same interface as the faster-whisper engine (ASR_ENGINE=whisper.cpp).

The model is the one the project ships, converted once to ggml (shared/asr/ggml.py). Speech is found with the
Silero VAD faster-whisper ships, as on the faster-whisper path: each span (at most one 30 s Whisper window,
shared/asr/batching.py) is decoded on its own and its times shifted back, so silence is never decoded.
`auto` detects the language once, on the first speech span, and decodes every span in it (with whisper.cpp's
`translate` flag when the job asks for English: subs.translate). Word times come
from whisper.cpp's token timestamps (a word = the tokens from one starting with a space to the next).
CPU only (the registry's pywhispercpp wheel is built without CUDA); one clip at a time per process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shared.asr.audio import SAMPLE_RATE_HZ
from shared.asr.base import ENGLISH, TRANSLATE, LocalEngine, Task, Transcript, TranscriptionStopped, release_memory
from shared.asr.batching import speech_spans
from shared.asr.ggml import ggml_model
from shared.asr.models import ModelRef, resolve_model
from shared.runtime.logs import get_logger
from shared.settings import Settings
from shared.subtitles.words import Word

log = get_logger("asr")
WHISPER_CPP = "whisper.cpp"
TICKS_PER_SEC = 100  # whisper.cpp times are in 10 ms steps
GREEDY, BEAM_SEARCH = 0, 1  # pywhispercpp's params_sampling_strategy


def decode_options(settings: Settings) -> dict[str, Any]:
    """whisper_full_params for a clip: token timestamps on, no console output, beam as ASR_BEAM_SIZE."""
    options: dict[str, Any] = {
        "n_threads": settings.asr_cpu_threads, "token_timestamps": True, "print_progress": False,
        "print_realtime": False, "print_timestamps": False, "no_context": True, "suppress_blank": True,
    }
    if settings.asr_beam_size > 1:
        options["beam_search"] = {"beam_size": settings.asr_beam_size, "patience": -1.0}
    return options


class WhisperCppEngine(LocalEngine):
    """The process's whisper.cpp model. Create with `load()` (off the event loop); `transcribe` is async."""

    name = WHISPER_CPP
    device = "cpu"

    def __init__(self, settings: Settings, ref: ModelRef, ggml_path: Path, model: Any) -> None:
        import _pywhispercpp as pw

        self.settings = settings
        self.ref = ref
        self.ggml_path = ggml_path
        self.model = model
        self.multilingual = bool(pw.whisper_is_multilingual(model._ctx))
        self._lock = asyncio.Lock()  # one whisper.cpp context: one clip at a time

    @classmethod
    def load(cls, settings: Settings) -> WhisperCppEngine:
        from pywhispercpp.model import Model

        if settings.asr_device == "cuda":
            log.warning("asr_whispercpp_cpu_only", note="ASR_DEVICE=cuda ignored: the pywhispercpp wheel is CPU-only")
        ref = resolve_model(settings.asr_model, settings.asr_models_dir)
        path = ggml_model(ref.path, ref.name, settings.asr_models_dir, settings.asr_whispercpp_weights)
        strategy = BEAM_SEARCH if settings.asr_beam_size > 1 else GREEDY
        model = Model(str(path), params_sampling_strategy=strategy, redirect_whispercpp_logs_to=None,
                      **decode_options(settings))
        engine = cls(settings, ref, path, model)
        engine.log_loaded(str(path))
        return engine

    async def _transcribe(
        self, audio: np.ndarray, language: str | None, task: Task, on_progress: Callable[[float], None] | None
    ) -> Transcript:
        return await self._in_thread(
            lambda report, stop: self._transcribe_sync(audio, language, report, stop, task), on_progress)

    def _transcribe_sync(
        self, audio: np.ndarray, language: str | None, report: Callable[[float], None], stop: threading.Event,
        task: Task,
    ) -> Transcript:
        spans = speech_spans(audio, self.settings.asr_vad_min_silence_ms, self.settings.asr_vad_speech_pad_ms)
        try:
            if language is None:
                first = audio[spans[0][0]:spans[0][1]] if spans else audio[: 30 * SAMPLE_RATE_HZ]
                language = self._detect_language(first) if len(first) else ENGLISH
            words: list[Word] = []
            for start, end in spans:
                self._decode(audio[start:end], language, task, stop)
                words += self._words(start / SAMPLE_RATE_HZ)
                report(min(1.0, end / max(1, len(audio))))
            return Transcript(language=language, words=words, device="cpu", engine=WHISPER_CPP)
        finally:
            release_memory()

    def _decode(self, chunk: np.ndarray, language: str, task: Task, stop: threading.Event) -> None:
        """whisper_full on one speech span (`translate`: into English); a failure is an error, not an empty
        transcript."""
        import _pywhispercpp as pw

        self.model._set_params({"language": language, "translate": task == TRANSLATE})
        pw.assign_abort_callback(self.model._params, stop.is_set)
        code = pw.whisper_full(self.model._ctx, self.model._params, chunk, chunk.size)
        if stop.is_set():
            raise TranscriptionStopped("the job's transcription was canceled")
        if code != 0:
            raise RuntimeError(f"whisper.cpp could not transcribe a speech span (whisper_full returned {code})")

    def _detect_language(self, audio: np.ndarray) -> str:
        (language, _), _ = self.model.auto_detect_language(audio, n_threads=self.settings.asr_cpu_threads)
        return str(language)

    def _words(self, offset_sec: float) -> list[Word]:
        """The last decode's tokens grouped into words, times shifted by `offset_sec`."""
        import _pywhispercpp as pw

        ctx = self.model._ctx
        eot = pw.whisper_token_eot(ctx)
        words: list[Word] = []
        pieces: list[tuple[bytes, float, float, float]] = []  # one word's tokens: bytes, t0, t1, p

        def flush() -> None:
            text = b"".join(p[0] for p in pieces).decode("utf-8", errors="replace").strip()
            if text:
                probability = float(np.mean([p[3] for p in pieces]))
                words.append(Word(text, round(offset_sec + pieces[0][1], 3), round(offset_sec + pieces[-1][2], 3),
                                  round(probability, 4)))
            pieces.clear()

        for segment in range(pw.whisper_full_n_segments(ctx)):
            for index in range(pw.whisper_full_n_tokens(ctx, segment)):
                data = pw.whisper_full_get_token_data(ctx, segment, index)
                if data.id >= eot:
                    continue
                raw = pw.whisper_token_to_bytes(ctx, data.id)
                raw = raw if isinstance(raw, bytes) else str(raw).encode()
                if raw.startswith(b" ") and pieces:
                    flush()
                pieces.append((raw, data.t0 / TICKS_PER_SEC, data.t1 / TICKS_PER_SEC, float(data.p)))
            flush()  # a segment ends a word
        return words
