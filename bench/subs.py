"""Subtitles: a 30 s clip with subtitles POST → done on CPU, and the transcribe stage against bare faster-whisper.

Source: 60 s of 1280x720 30 fps H.264 + AAC with espeak-ng reading SPEECH_TEXT from 2 s on (made here, see
shared/media/speech.py), uploaded once. For each shipped model a stack of its own (every stage its own process)
runs `runs` jobs with `subs.enabled`, each a different 30 s range (no request repeats, so none is reused).
After each job, in this process: download the finished clip, then bare faster-whisper (same model folder,
same settings: compute type, beam, threads, word timestamps, VAD) on the clip's audio decoded by the same ffmpeg
pipe. The transcriber's time is its stage_started → stage_finished span in job_events (it includes reading the
audio from S3 and writing the three files); the bare time is audio decode + transcription.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.copy_path import UPLOAD_KEY, JobRunner, upload_source
from bench.stack import bench_stack
from shared.asr.audio import SAMPLE_RATE_HZ, read_audio
from shared.asr.engine import collect, compute_type_for, transcribe_options
from shared.asr.models import resolve_model
from shared.media.speech import make_speech_video
from shared.settings import Settings

MODELS = ("base", "tiny.en")
CLIP_SEC = 30.0
SOURCE_SEC = 60.0
SPEECH_OFFSET_SEC = 2.0
STARTS_SEC = (3.3, 5.1, 7.9, 9.6, 11.2, 13.7, 15.4, 17.8, 19.9, 21.5)  # not on keyframes; each run its own range
SPEECH_TEXT = (
    "Good morning everyone, and welcome to the weekly meeting of the garden club.",
    "Today we will talk about the new library, the budget for next year, and 3 small changes to the website.",
    "First, the library will open on Monday at 9 in the morning, and it will close at 6 in the evening.",
    "Second, the budget is larger than last year, because more people joined the club in the spring.",
    "Finally, the website will have a new page for photos, a calendar, and a list of our favourite plants.",
    "Thank you all for coming, and please stay for coffee and cake after the meeting.",
)
STAGE_SPAN = """
SELECT max(ts) FILTER (WHERE type = 'stage_finished' AND data->>'stage' = 'transcribe')
     - max(ts) FILTER (WHERE type = 'stage_started' AND data->>'stage' = 'transcribe') AS span
FROM job_events WHERE job_id = $1
"""


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bare_model(settings: Settings) -> Any:
    from faster_whisper import WhisperModel

    ref = resolve_model(settings.asr_model, settings.asr_models_dir)
    return WhisperModel(str(ref.path), device="cpu", compute_type=compute_type_for("cpu", settings.asr_compute_type),
                        cpu_threads=settings.asr_cpu_threads, local_files_only=True)


async def bare_transcribe(model: Any, settings: Settings, clip: Path) -> tuple[float, int]:
    """Seconds for ffmpeg → numpy → faster-whisper on the clip, and the words it found."""
    began = time.perf_counter()
    audio = await read_audio(str(clip), start_sec=0.0, duration_sec=CLIP_SEC + 1)
    options = transcribe_options(settings)
    transcript = await asyncio.to_thread(lambda: collect(model.transcribe(audio, **options), "cpu"))
    assert len(audio) > SAMPLE_RATE_HZ
    return time.perf_counter() - began, len(transcript.words)


async def one_model(name: str, source: Path, work: Path, runs: int) -> dict[str, object]:
    with bench_stack(work / f"stack-{name}", asr_model=name) as stack:
        settings = stack.settings
        await upload_source(stack, source)
        model = await asyncio.to_thread(bare_model, settings)
        db = await asyncpg.connect(settings.database_url, server_settings={"search_path": settings.db_schema})
        ends, stage, bare = [], [], []
        try:
            async with JobRunner(stack) as runner, httpx.AsyncClient(base_url=stack.base_url) as http:
                for i in range(runs + 1):  # the first is a warm-up
                    start = STARTS_SEC[i % len(STARTS_SEC)]
                    job_id, seconds = await runner.run_job(start, start + CLIP_SEC, "fast", subs={"enabled": True})
                    view = (await http.get(f"/api/jobs/{job_id}")).json()
                    clip = work / f"{name}-{i}.mp4"
                    clip.write_bytes((await http.get(view["urls"]["video"])).content)
                    words = len((await http.get(view["urls"]["words"])).json())
                    span = (await db.fetchval(STAGE_SPAN, uuid.UUID(job_id))).total_seconds()
                    bare_sec, bare_words = await bare_transcribe(model, settings, clip)
                    if i == 0:
                        continue
                    ends.append(seconds)
                    stage.append(span)
                    bare.append(bare_sec)
                    print(f"subs {name}: job {seconds:.2f} s, transcribe stage {span:.2f} s, bare {bare_sec:.2f} s, "
                          f"words {words}/{bare_words}", flush=True)
            transcriber = next(c for c in stack.children if c.name == "transcribe")
            idle_rss = rss_mb(transcriber.proc.pid)
        finally:
            await db.close()
    stage_median, bare_median = statistics.median(stage), statistics.median(bare)
    return {
        "model": name, "runs": runs, "post_to_done_sec": ends, "post_to_done_median": statistics.median(ends),
        "post_to_done_max": max(ends), "transcribe_stage_median": stage_median, "bare_median": bare_median,
        "stage_over_bare": stage_median / bare_median, "real_time_factor_stage": stage_median / CLIP_SEC,
        "speed_x_real_time_bare": CLIP_SEC / bare_median, "transcriber_idle_rss_mb": round(idle_rss, 1),
    }


async def subs_benchmarks(data: Path, runs: int) -> dict[str, object]:
    data.mkdir(parents=True, exist_ok=True)
    video = make_speech_video(data / "speech-60s-720p.mp4", SPEECH_TEXT, offset_sec=SPEECH_OFFSET_SEC, gap_sec=0.6,
                              seconds=SOURCE_SEC, size="1280x720")
    work = data / "subs-work"
    work.mkdir(exist_ok=True)
    return {"upload_key": UPLOAD_KEY, "models": [await one_model(m, video.path, work, runs) for m in MODELS]}
