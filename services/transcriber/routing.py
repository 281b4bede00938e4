"""Which engine transcribes a clip: the local one, or the hosted API (ASR_HOSTED_URL) when one is configured
and either the transcriber's queue is over ASR_HOSTED_BURST_PENDING (a burst: the hosted API takes the
overflow; if it fails, the clip runs locally after all) or local inference ran out of memory after the batch
halving and the CPU fallback (then a failing hosted API fails the attempt with its own stable code and the
message is retried: nothing is lost).

`translate` (subs.translate): the same rules (an English-only local model refuses it whichever engine would run);
the hosted translations endpoint says no source language, so the local model detects it first (when subs.lang
is auto)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from shared.asr.base import TRANSLATE, Transcript
from shared.asr.hosted import HostedAsr
from shared.errors import AsrOutOfMemory, HostedAsrRefused, HostedAsrUnavailable
from shared.jobs.contracts import PRIORITIES
from shared.jobs.pipeline import TRANSCRIBE
from shared.runtime import bus
from shared.runtime.logs import get_logger
from shared.runtime.resources import Resources
from shared.settings import Settings

log = get_logger("transcriber")
PENDING_CHECK_SEC = 1.0  # the queue depth is looked up at most this often per process
_hosted: dict[tuple[object, ...], HostedAsr] = {}
_pending_seen: dict[str, tuple[float, int]] = {}  # stream → (monotonic time, pending)


def hosted_for(settings: Settings) -> HostedAsr | None:
    """The process's hosted-API client, or None without ASR_HOSTED_URL."""
    if not settings.asr_hosted_url:
        return None
    key = (settings.asr_hosted_url, settings.asr_hosted_key, settings.asr_hosted_model,
           settings.asr_hosted_audio_format, settings.asr_hosted_max_upload_mb, settings.asr_hosted_timeout_sec,
           settings.asr_hosted_max_reply_mb)
    if key not in _hosted:
        _hosted[key] = HostedAsr(settings)
    return _hosted[key]


async def transcribe_pending(res: Resources) -> int:
    """Transcribe messages not yet handed to any worker, over every priority (cached PENDING_CHECK_SEC)."""
    stream = res.settings.nats_stream
    seen = _pending_seen.get(stream)
    if seen is not None and time.monotonic() - seen[0] < PENDING_CHECK_SEC:
        return seen[1]
    pending = 0
    for priority in PRIORITIES:
        info = await res.js.consumer_info(stream, bus.consumer_name(TRANSCRIBE, priority))
        pending += info.num_pending
    _pending_seen[stream] = (time.monotonic(), pending)
    return pending


async def is_burst(res: Resources) -> bool:
    """Over ASR_HOSTED_BURST_PENDING; a queue depth NATS cannot tell now counts as no burst (the clip runs here)."""
    threshold = res.settings.asr_hosted_burst_pending
    if threshold <= 0:
        return False
    try:
        return await transcribe_pending(res) > threshold
    except Exception as exc:  # a NATS hiccup must not fail the clip: it is transcribed locally
        log.warning("asr_burst_check_failed", error=repr(exc)[:200])
        return False


async def transcribe(
    res: Resources, engine: Any, audio: np.ndarray, lang: str, on_progress: Callable[[float], None], *,
    translate: bool = False,
) -> Transcript:
    """The clip's transcript from the engine the rules above pick (`engine`: the local one); `translate`: the
    words in English, the transcript's language the one spoken."""
    language = engine.language_for(lang)  # the same language rules whichever engine runs
    translate = translate and engine.task_for(translate, lang) == TRANSLATE  # English into English: transcribed
    hosted = hosted_for(res.settings)
    if hosted is not None and await is_burst(res):
        try:
            return await _on_hosted(hosted, engine, audio, language, translate)
        except (HostedAsrUnavailable, HostedAsrRefused) as exc:
            log.warning("asr_hosted_burst_failed_running_locally", code=exc.code, error=exc.message)
    try:
        return await engine.transcribe(audio, lang, on_progress, translate=translate)
    except AsrOutOfMemory as exc:
        if hosted is None:
            raise
        log.warning("asr_out_of_memory_to_hosted", error=exc.message)
        return await _on_hosted(hosted, engine, audio, language, translate)


async def _on_hosted(
    hosted: HostedAsr, engine: Any, audio: np.ndarray, language: str | None, translate: bool
) -> Transcript:
    if translate and language is None:  # the translations endpoint answers "english" whatever was spoken
        try:
            language = await engine.detect_language(audio)
        except Exception as exc:  # e.g. out of memory again: the translation still comes, its source unnamed
            log.warning("asr_source_language_unknown", error=repr(exc)[:200])
    return await hosted.transcribe(audio, language, translate=translate)
