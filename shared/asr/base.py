"""What every local speech engine shares (faster-whisper: engine.py, whisper.cpp: whispercpp.py): the transcript,
the language and translation rules, the model-load log line, and the transcribe prelude (one clip at a time in a
worker thread that a canceled job stops at its next progress report; out of memory → AsrOutOfMemory).

A subclass sets `name`, `device`, `settings`, `ref`, `multilingual` and `_lock`, and implements `_transcribe`
(async: the clip in a language and task) and `_detect_language` (blocking).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

from shared.asr.languages import shown
from shared.asr.models import ModelRef
from shared.errors import AsrOutOfMemory, LanguageUnknown, LanguageUnsupported, ModelCannotTranslate
from shared.runtime.logs import get_logger
from shared.settings import Settings
from shared.subtitles.words import Word

log = get_logger("asr")
AUTO = "auto"
ENGLISH = "en"
FASTER_WHISPER = "faster-whisper"
OOM_MARKERS = ("out of memory", "cuda_error_out_of_memory", "cublas_status_alloc_failed")
Task = Literal["transcribe", "translate"]  # Whisper's tasks; translate always gives English
TRANSCRIBE: Task = "transcribe"
TRANSLATE: Task = "translate"
R = TypeVar("R")


class TranscriptionStopped(Exception):
    """Raised inside the transcription thread once its job was canceled (or its worker stopped)."""


@dataclass(frozen=True)
class Transcript:
    """The words of one clip and the language spoken in it (detected, or as asked).

    `translated_to`: the language of the words when they were translated (Whisper's translate task: "en"),
    else ""."""

    language: str
    words: list[Word]
    device: str  # where it ran: "cpu" or "cuda"
    engine: str = FASTER_WHISPER  # which engine made it: faster-whisper | whisper.cpp | hosted
    translated_to: str = ""


def release_memory() -> None:
    """Hand freed heap back to the OS after a clip (glibc keeps ~100 MB of a transcription's buffers
    otherwise, and the idle transcriber is meant to stay under 400 MB). A no-op where malloc_trim is absent."""
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:
        trim(0)


def is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and any(marker in text for marker in OOM_MARKERS))


def out_of_memory(exc: BaseException) -> AsrOutOfMemory:
    return AsrOutOfMemory(f"speech recognition ran out of memory: {str(exc)[:200] or type(exc).__name__}")


def language_for(lang: str, multilingual: bool, model_name: str) -> str | None:
    """The language to decode in (None: detect), or a Permanent error for one the model cannot do."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    wanted = (lang or AUTO).strip().lower()
    if wanted == AUTO:
        return None if multilingual else ENGLISH
    if wanted not in _LANGUAGE_CODES:
        raise LanguageUnknown(f"lang {shown(lang)} is not a Whisper language code (e.g. en, de, fr) nor 'auto'")
    if wanted != ENGLISH and not multilingual:
        raise LanguageUnsupported(
            f"the configured speech model ({model_name}) is English-only and cannot transcribe {wanted!r}; "
            f"ask for lang 'en' or 'auto', or run the transcriber with a multilingual ASR_MODEL (e.g. base)"
        )
    return wanted


def task_for(translate: bool, multilingual: bool, model_name: str, lang: str = AUTO) -> Task:
    """Whisper's task for a clip (`subs.translate` set: translate into English), or a Permanent error when the
    model is English-only (tiny.en and every *.en model lack the translate task) and the clip is not said to be
    English already (`lang` "en": English into English is a transcription, which such a model does)."""
    if not translate:
        return TRANSCRIBE
    if not multilingual and lang.strip().lower() == ENGLISH:
        return TRANSCRIBE
    if not multilingual:
        raise ModelCannotTranslate(
            f"the configured speech model ({model_name}) is English-only and cannot translate; leave "
            f"subs.translate out, or run the transcriber with a multilingual ASR_MODEL (e.g. base)"
        )
    return TRANSLATE


class LocalEngine:
    """The process's local speech model (one per process: shared/asr/resource.py). `transcribe` is async."""

    name: str
    device: str
    settings: Settings
    ref: ModelRef
    multilingual: bool
    _lock: asyncio.Lock  # one clip at a time per model

    def log_loaded(self, path: str) -> None:
        log.info("asr_model_loaded", engine=self.name, model=self.ref.name, path=path, device=self.device,
                 multilingual=self.multilingual)

    def language_for(self, lang: str) -> str | None:
        return language_for(lang, self.multilingual, self.ref.name)

    def task_for(self, translate: bool, lang: str = AUTO) -> Task:
        return task_for(translate, self.multilingual, self.ref.name, lang)

    async def transcribe(
        self, audio: np.ndarray, lang: str, on_progress: Callable[[float], None] | None = None, *,
        translate: bool = False,
    ) -> Transcript:
        """Words of `audio` (16 kHz mono float32) with times from its first sample; `translate`: in English."""
        language, task = self.language_for(lang), self.task_for(translate, lang)
        try:
            transcript = await self._transcribe(audio, language, task, on_progress)
        except (RuntimeError, MemoryError) as exc:
            if is_oom(exc):
                raise out_of_memory(exc) from exc
            raise
        if task == TRANSLATE:
            return Transcript(transcript.language, transcript.words, transcript.device, transcript.engine, ENGLISH)
        return transcript

    async def detect_language(self, audio: np.ndarray) -> str:
        """The language spoken in `audio` (its first 30 s of speech)."""
        async with self._lock:
            return await asyncio.to_thread(self._detect_language, audio)

    async def _transcribe(
        self, audio: np.ndarray, language: str | None, task: Task, on_progress: Callable[[float], None] | None
    ) -> Transcript:
        raise NotImplementedError

    def _detect_language(self, audio: np.ndarray) -> str:
        raise NotImplementedError

    async def _in_thread(
        self, work: Callable[[Callable[[float], None], threading.Event], R],
        on_progress: Callable[[float], None] | None,
    ) -> R:
        """`work(report, stop)` in a thread, one at a time; a canceled job sets `stop` and `report` then raises
        TranscriptionStopped in the thread (a thread cannot be killed: it stops at its next report)."""
        stop = threading.Event()

        def report(pct: float) -> None:
            if stop.is_set():
                raise TranscriptionStopped("the job's transcription was canceled")
            if on_progress is not None:
                on_progress(pct)

        async with self._lock:
            try:
                return await asyncio.to_thread(work, report, stop)
            except asyncio.CancelledError:
                stop.set()
                raise

