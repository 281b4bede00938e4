"""Transcriber: the clip's audio → words (the local engine, or the hosted API: routing.py; in English when
subs.translate asks) → SRT, WebVTT and words JSON in the job's staging (its result files: SUBTITLE_OUTPUTS); the
message says which engine made them, in which language, and when translated the language spoken."""

from __future__ import annotations

import time

import msgspec

from shared.asr.audio import read_audio
from shared.asr.hosted import HOSTED
from shared.errors import Permanent
from shared.jobs.contracts import StageMessage, SubtitlesMade
from shared.jobs.outputs import forward_outputs, stored_earlier
from shared.jobs.pipeline import TRANSCRIBE
from shared.media.inputs import staged_demuxer
from shared.runtime import tracing
from shared.runtime.metrics import record_asr
from shared.runtime.worker import StageDeps
from shared.settings import Settings
from shared.storage.s3 import ObjectInfo
from shared.subtitles.cues import CueRules, build_cues
from shared.subtitles.formats import to_srt, to_vtt, to_words_json
from shared.subtitles.outputs import SUBTITLE_OUTPUTS

from . import routing

READ_URL_TTL_SEC = 3600  # lifetime of the signed URL ffmpeg reads the clip's audio through, s
AUDIO_SHARE = 0.1  # part of this stage's progress spent reading the audio
SOURCE_LANGUAGE_KEY = "source-language"  # object metadata of translated subtitles: the language spoken


def cue_rules(settings: Settings) -> CueRules:
    return CueRules(
        max_line_chars=settings.subs_max_line_chars, max_lines=settings.subs_max_lines,
        min_sec=settings.subs_min_cue_sec, max_sec=settings.subs_max_cue_sec, pause_sec=settings.subs_pause_sec,
    )


async def handle(task: StageMessage, deps: StageDeps) -> StageMessage:
    """Transcribe the clip (the trimmed clip from 0, or on the re-encode route the staged source from
    startSec) and store its subtitles; a redelivered message whose outputs all exist reuses them."""
    storage = deps.res.storage
    existing = await stored_earlier(storage, task.job.id, SUBTITLE_OUTPUTS)
    if existing is not None:
        return _forward(task, existing, _made(existing["srt"].metadata))

    media_key, start, duration = _audio_span(task)
    url = await storage.internal_url(media_key, READ_URL_TTL_SEC)
    fmt = staged_demuxer(media_key, task.job.id, task.plan.container if task.plan else "")
    audio = await read_audio(url, start_sec=start, duration_sec=duration, fmt=fmt)
    deps.progress.set(AUDIO_SHARE)
    engine = deps.local  # the local engine (ASR_ENGINE), loaded when the worker started
    started = time.perf_counter()
    with tracing.child_span("transcribe", **{"clipjet.audio_sec": duration}):
        transcript = await routing.transcribe(
            deps.res, engine, audio, task.job.subs.lang,
            lambda p: deps.progress.set(AUDIO_SHARE + (0.9 - AUDIO_SHARE) * p),
            translate=task.job.subs.translate is not None,
        )
    model = deps.res.settings.asr_hosted_model if transcript.engine == HOSTED else engine.ref.name
    record_asr(transcript.engine, model, duration, time.perf_counter() - started)
    cues = build_cues(transcript.words, cue_rules(deps.res.settings), clip_end=duration)
    bodies = {
        "srt": to_srt(cues).encode(), "vtt": to_vtt(cues).encode(), "words": to_words_json(transcript.words),
    }
    stored: dict[str, ObjectInfo] = {}
    for output in SUBTITLE_OUTPUTS:
        path = deps.scratch / output.filename
        path.write_bytes(bodies[output.role])
        metadata = {"language": transcript.translated_to or transcript.language, "model": model,
                    "device": transcript.device, "engine": transcript.engine}
        if transcript.translated_to:
            metadata[SOURCE_LANGUAGE_KEY] = transcript.language
        stored[output.role] = await output.store(storage, task.job.id, path, metadata)
    return _forward(task, stored, _made(stored["srt"].metadata))


def _audio_span(task: StageMessage) -> tuple[str, float, float]:
    """(object key, start, duration) of the audio the subtitles are timed against."""
    video, result, plan = task.artifact("video"), task.result, task.plan
    if video is not None and result is not None:
        return video.key, 0.0, result.duration_sec
    source = task.artifact("source")
    if source is None or plan is None:
        raise Permanent("the transcribe stage needs a clip or the staged source and plan", code="invalid_message")
    start = task.job.start_sec - plan.staged_offset_sec
    return source.key, max(0.0, start), task.job.end_sec - task.job.start_sec


def _made(metadata: dict[str, str]) -> SubtitlesMade | None:
    """Who made subtitles stored by an earlier delivery (from their object metadata)."""
    engine = metadata.get("engine", "faster-whisper")
    if engine not in ("faster-whisper", "whisper.cpp", "hosted"):
        return None
    return SubtitlesMade(engine=engine, model=metadata.get("model", ""),  # type: ignore[arg-type]
                         language=metadata.get("language", ""), source_language=metadata.get(SOURCE_LANGUAGE_KEY))


def _forward(task: StageMessage, outputs: dict[str, ObjectInfo], made: SubtitlesMade | None) -> StageMessage:
    following = forward_outputs(task, TRANSCRIBE, outputs, SUBTITLE_OUTPUTS)
    return msgspec.structs.replace(following, subtitles=made)
