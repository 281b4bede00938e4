"""Batching short speech chunks of several jobs into the same GPU passes.

Clips that arrive at the transcriber together (within ASR_GPU_BATCH_WAIT_MS of the first, same language and
task: transcribe or translate) are laid end to end in one audio array; each clip's own Silero VAD speech spans
(at most 30 s each: one Whisper window) become `clip_timestamps` of one `BatchedInferencePipeline.transcribe`
call, so ASR_GPU_BATCH chunks go through the model per forward pass whichever job they belong to. The words are
then handed back to their jobs with their times made relative to each job's own audio again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from shared.asr.audio import SAMPLE_RATE_HZ
from shared.subtitles.words import Word

WINDOW_SEC = 30.0  # Whisper's window: a speech span never exceeds it
R = TypeVar("R")


def speech_spans(audio: np.ndarray, min_silence_ms: int, speech_pad_ms: int) -> list[tuple[int, int]]:
    """Sample ranges of speech (Silero VAD), adjacent ones merged while the range stays within one window."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    found = get_speech_timestamps(audio, VadOptions(min_silence_duration_ms=min_silence_ms,
                                                    speech_pad_ms=speech_pad_ms, max_speech_duration_s=WINDOW_SEC))
    window = int(WINDOW_SEC * SAMPLE_RATE_HZ)
    spans: list[tuple[int, int]] = []
    for item in found:
        start, end = int(item["start"]), int(item["end"])
        if spans and end - spans[-1][0] <= window:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


@dataclass(frozen=True)
class Layout:
    """Where each job's audio sits in the joined array, and the speech chunks to transcribe (seconds)."""

    audio: np.ndarray
    offsets: list[int]  # first sample of each job
    clips: list[dict[str, float]]  # clip_timestamps for faster-whisper

    def split(self, words: list[Word]) -> list[list[Word]]:
        """Words of the joined audio → each job's words, times relative to that job's first sample."""
        per_job: list[list[Word]] = [[] for _ in self.offsets]
        bounds = [*self.offsets[1:], len(self.audio)]
        for word in words:
            at = word.start * SAMPLE_RATE_HZ
            job = next((i for i, end in enumerate(bounds) if at < end), len(bounds) - 1)
            shift = self.offsets[job] / SAMPLE_RATE_HZ
            per_job[job].append(Word(word.word, round(word.start - shift, 3), round(word.end - shift, 3),
                                     word.probability))
        return per_job


def lay_out(audios: list[np.ndarray], min_silence_ms: int, speech_pad_ms: int) -> Layout:
    offsets, clips, at = [], [], 0
    for audio in audios:
        offsets.append(at)
        clips += [{"start": (at + s) / SAMPLE_RATE_HZ, "end": (at + e) / SAMPLE_RATE_HZ}
                  for s, e in speech_spans(audio, min_silence_ms, speech_pad_ms)]
        at += len(audio)
    joined = np.concatenate(audios) if audios else np.zeros(0, dtype=np.float32)
    return Layout(joined, offsets, clips)


@dataclass(eq=False)
class _Request(Generic[R]):
    audio: np.ndarray
    language: str
    task: str
    done: asyncio.Future[R] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class CrossJobBatcher(Generic[R]):
    """Collects clips from concurrent jobs and transcribes those of one language and task in one batched call.

    `run(audios, language, task)` (blocking, run in a thread) returns each clip's result, in order.
    """

    def __init__(self, run: Callable[[list[np.ndarray], str, str], list[R]], max_jobs: int, wait_sec: float) -> None:
        self._run = run
        self._max_jobs = max(1, max_jobs)
        self._wait_sec = wait_sec
        self._pending: list[_Request[R]] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self.batches: list[int] = []  # jobs per call, for logs and tests

    async def transcribe(self, audio: np.ndarray, language: str, task: str = "transcribe") -> R:
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._serve())
        request: _Request[R] = _Request(audio, language, task)
        self._pending.append(request)
        self._wake.set()
        return await request.done

    async def _serve(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._wait_sec)  # let clips queued at the same moment join this batch
            while self._pending:
                self._pending = [r for r in self._pending if not r.done.done()]  # drop jobs handed back meanwhile
                if not self._pending:
                    break
                language, task = self._pending[0].language, self._pending[0].task
                batch = [r for r in self._pending if (r.language, r.task) == (language, task)][: self._max_jobs]
                self._pending = [r for r in self._pending if all(r is not b for b in batch)]
                self.batches.append(len(batch))
                try:
                    results = await asyncio.to_thread(self._run, [r.audio for r in batch], language, task)
                except Exception as exc:
                    for request in batch:
                        if not request.done.done():
                            request.done.set_exception(exc)
                    continue
                for request, result in zip(batch, results, strict=True):
                    if not request.done.done():
                        request.done.set_result(result)
