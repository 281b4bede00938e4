"""faster-whisper behind one object per process: the model loads once, each clip's audio is transcribed with
word timestamps and the Silero VAD that faster-whisper ships.

CPU (default): int8, one clip at a time (CTranslate2 already uses ASR_CPU_THREADS cores for one clip).
CUDA (when present, or ASR_DEVICE=cuda): float16 (or ASR_COMPUTE_TYPE, e.g. int8_float16) through
`BatchedInferencePipeline`; clips of concurrent jobs are batched together (shared/asr/batching.py),
ASR_GPU_BATCH speech chunks per forward pass; on GPU out-of-memory the batch is halved and retried down to 1,
then the clips run on a CPU copy of the model: no job is lost.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from shared.asr.audio import SAMPLE_RATE_HZ
from shared.asr.base import (
    AUTO,
    ENGLISH,
    FASTER_WHISPER,
    TRANSCRIBE,
    LocalEngine,
    Task,
    Transcript,
    TranscriptionStopped,
    is_oom,
    language_for,
    out_of_memory,
    release_memory,
)
from shared.asr.batching import CrossJobBatcher, lay_out
from shared.asr.models import ModelRef, resolve_model
from shared.runtime.logs import get_logger
from shared.settings import Settings
from shared.subtitles.words import Word

__all__ = [  # the engine-neutral names stay importable from here
    "AUTO", "ENGLISH", "FASTER_WHISPER", "AsrEngine", "Transcript", "TranscriptionStopped", "collect", "is_oom",
    "language_for", "out_of_memory", "release_memory",
]
log = get_logger("asr")
CPU_COMPUTE_TYPE = "int8"
CUDA_COMPUTE_TYPE = "float16"
R = TypeVar("R")


def choose_device(setting: str) -> str:
    """`cpu`, `cuda`, or for `auto` CUDA when CTranslate2 sees a CUDA device, else CPU."""
    if setting in ("cpu", "cuda"):
        return setting
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def compute_type_for(device: str, setting: str) -> str:
    if setting != AUTO:
        return setting
    return CUDA_COMPUTE_TYPE if device == "cuda" else CPU_COMPUTE_TYPE


def transcribe_options(settings: Settings) -> dict[str, Any]:
    """faster-whisper `transcribe` options: beam, word timestamps, and the Silero VAD it ships."""
    return {
        "beam_size": settings.asr_beam_size, "word_timestamps": True, "vad_filter": True,
        "vad_parameters": {"min_silence_duration_ms": settings.asr_vad_min_silence_ms,
                           "speech_pad_ms": settings.asr_vad_speech_pad_ms},
    }


def run_with_oom_fallback(
    run_batched: Callable[[int], R], batch: int, run_on_cpu: Callable[[], R]
) -> tuple[R, list[int]]:
    """`run_batched(batch)`; on out-of-memory halve the batch and retry down to 1, then `run_on_cpu()`.

    Returns the transcript and the batch sizes that failed (for logs and tests). Other errors propagate.
    """
    failed: list[int] = []
    size = max(1, batch)
    while True:
        try:
            return run_batched(size), failed
        except (RuntimeError, MemoryError) as exc:
            if not is_oom(exc):
                raise
            failed.append(size)
            log.warning("asr_gpu_oom", batch=size, error=str(exc)[:200])
            if size == 1:
                return run_on_cpu(), failed
            size //= 2


class AsrEngine(LocalEngine):
    """The process's faster-whisper model. Create with `load()` (off the event loop); `transcribe` is async.

    Out of memory where nothing smaller is left to try raises AsrOutOfMemory (the transcriber may then hand
    the clip to the hosted API)."""

    name = FASTER_WHISPER

    def __init__(self, settings: Settings, ref: ModelRef, device: str, model: Any) -> None:
        self.settings = settings
        self.ref = ref
        self.multilingual = bool(model.model.is_multilingual)  # English-only models (*.en) say False
        self.device = device
        self.model = model
        self._lock = asyncio.Lock()  # one clip at a time per model: CTranslate2 already uses every thread given
        self._cpu_model: Any = None
        self._cpu_lock = threading.Lock()
        self.batcher: CrossJobBatcher[Transcript] = CrossJobBatcher(
            self._run_batch, settings.asr_gpu_batch, settings.asr_gpu_batch_wait_ms / 1000
        )

    @classmethod
    def load(cls, settings: Settings) -> AsrEngine:
        from faster_whisper import WhisperModel

        ref = resolve_model(settings.asr_model, settings.asr_models_dir)
        device = choose_device(settings.asr_device)
        model = WhisperModel(
            str(ref.path), device=device, compute_type=compute_type_for(device, settings.asr_compute_type),
            cpu_threads=settings.asr_cpu_threads, local_files_only=True,
        )
        engine = cls(settings, ref, device, model)
        engine.log_loaded(str(ref.path))
        return engine

    async def _transcribe(
        self, audio: np.ndarray, language: str | None, task: Task, on_progress: Callable[[float], None] | None
    ) -> Transcript:
        if self.device == "cuda":  # with other jobs' clips; progress is reported when the batch is done
            if language is None:
                language = await asyncio.to_thread(self._detect_language, audio)
            return await self.batcher.transcribe(audio, language, task)
        return await self._in_thread(lambda report, _: self._transcribe_sync(audio, language, report, task),
                                     on_progress)

    def _options(self) -> dict[str, Any]:
        return transcribe_options(self.settings)

    def _transcribe_sync(
        self, audio: np.ndarray, language: str | None, on_progress: Callable[[float], None] | None,
        task: Task = TRANSCRIBE,
    ) -> Transcript:
        try:
            return collect(self.model.transcribe(audio, language=language, task=task, **self._options()), "cpu",
                           on_progress)
        finally:
            release_memory()

    def _detect_language(self, audio: np.ndarray) -> str:
        language, _, _ = self.model.detect_language(audio=audio, vad_filter=True)
        return str(language)

    def _run_batch(self, audios: list[np.ndarray], language: str, task: Task = TRANSCRIBE) -> list[Transcript]:
        """Several clips in one language and task: their speech chunks through the GPU together (batching.py)."""
        from faster_whisper import BatchedInferencePipeline

        layout = lay_out(audios, self.settings.asr_vad_min_silence_ms, self.settings.asr_vad_speech_pad_ms)
        if not layout.clips:
            return [Transcript(language, [], self.device) for _ in audios]
        pipeline = BatchedInferencePipeline(self.model)

        def on_gpu(batch: int) -> list[Transcript]:
            joined = collect(pipeline.transcribe(
                layout.audio, language=language, task=task, batch_size=batch, clip_timestamps=layout.clips,
                beam_size=self.settings.asr_beam_size, word_timestamps=True,
            ), "cuda")
            return [Transcript(language, words, "cuda") for words in layout.split(joined.words)]

        def on_cpu() -> list[Transcript]:
            model = self.cpu_model()
            return [collect(model.transcribe(a, language=language, task=task, **self._options()), "cpu")
                    for a in audios]

        try:
            transcripts, failed = run_with_oom_fallback(on_gpu, self.settings.asr_gpu_batch, on_cpu)
        finally:
            release_memory()
        log.info("asr_batch", jobs=len(audios), chunks=len(layout.clips), oom_batches=failed, task=task)
        return transcripts

    def cpu_model(self) -> Any:
        """A CPU copy of the model, loaded on the first GPU out-of-memory that batch 1 could not avoid."""
        from faster_whisper import WhisperModel

        with self._cpu_lock:
            if self._cpu_model is None:
                self._cpu_model = WhisperModel(
                    str(self.ref.path), device="cpu", compute_type=CPU_COMPUTE_TYPE,
                    cpu_threads=self.settings.asr_cpu_threads, local_files_only=True,
                )
            return self._cpu_model


def collect(result: tuple[Any, Any], device: str, on_progress: Callable[[float], None] | None = None) -> Transcript:
    """Run faster-whisper's lazy segment generator to the end; words as plain floats."""
    segments, info = result
    duration = max(float(info.duration), 1.0 / SAMPLE_RATE_HZ)
    words: list[Word] = []
    for segment in segments:
        for w in segment.words or []:
            text = w.word.strip()
            if text:
                start, end, probability = round(float(w.start), 3), round(float(w.end), 3), float(w.probability)
                words.append(Word(text, start, end, round(probability, 4)))
        if on_progress is not None:
            on_progress(min(1.0, float(segment.end) / duration))
    return Transcript(language=str(info.language), words=words, device=device)
