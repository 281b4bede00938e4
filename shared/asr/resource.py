"""The transcriber's per-process resource: the speech model, loaded once when the worker starts.

Loaded models are kept per process by their settings, so a process that starts the transcribe worker again
(tests, the benchmark's in-process reference) reuses the one already in memory instead of loading it twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from shared.asr.engine import AsrEngine
from shared.runtime.resources import Resources
from shared.settings import Settings

_loaded: dict[tuple[object, ...], Any] = {}  # AsrEngine or WhisperCppEngine
_load_lock = threading.Lock()


def _key(settings: Settings) -> tuple[object, ...]:
    return (settings.asr_engine, settings.asr_whispercpp_weights, settings.asr_model, str(settings.asr_models_dir),
            settings.asr_device, settings.asr_compute_type, settings.asr_cpu_threads, settings.asr_beam_size,
            settings.asr_gpu_batch, settings.asr_gpu_batch_wait_ms, settings.asr_vad_min_silence_ms,
            settings.asr_vad_speech_pad_ms)


def engine_for(settings: Settings) -> Any:
    """The process's engine for these settings, as ASR_ENGINE names it (loading it on first use; blocking).

    Both are `shared.asr.base.LocalEngine`s: `name`, `ref`, `device`, `multilingual`, `language_for`, `task_for`,
    `detect_language` and `transcribe`."""
    with _load_lock:
        key = _key(settings)
        if key not in _loaded:
            if settings.asr_engine == "whisper.cpp":
                from shared.asr.whispercpp import WhisperCppEngine

                _loaded[key] = WhisperCppEngine.load(settings)
            else:
                _loaded[key] = AsrEngine.load(settings)
        return _loaded[key]


@asynccontextmanager
async def open_asr(res: Resources) -> AsyncIterator[Any]:
    """StageSpec.open_local of the transcriber: the model is in memory before the first message is pulled."""
    if res.settings.asr_hosted_url:
        from shared.asr.hosted import warn_if_key_in_clear

        warn_if_key_in_clear(res.settings)
    yield await asyncio.to_thread(engine_for, res.settings)
