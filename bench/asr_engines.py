"""Speech engines side by side on the same audio: faster-whisper (CTranslate2 int8) and whisper.cpp (the same
shipped model converted to ggml, F16 or Q8_0), CPU, same beam, same threads, same Silero VAD spans.

Audio: espeak-ng reading the subtitle benchmark's text (bench/subs.py SPEECH_TEXT), decoded by the project's
ffmpeg pipe. Each engine and model runs in a fresh process of its own (so its RSS is its own): load, one
warm-up clip, then `runs` timed transcriptions; whisper.cpp's one-time ggml conversion runs (timed) in the
parent first. whisper.cpp's threads spin while waiting: on an oversubscribed CPU it slows far more than
CTranslate2 does, so run this on a quiet machine.
Reported: real-time factor (audio seconds per second of transcription, "x real time"), WER against the known
text (numbers normalised as in the tests), peak RSS (VmHWM) and RSS after the runs.

    PYTHONPATH=$PWD .venv/bin/python -m bench.asr_engines --models tiny.en base --beam 1 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENGINES = ("faster-whisper", "whisper.cpp", "whisper.cpp:q8_0")  # engine[:ggml weights]
DATA = Path(".data/bench")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _child(engine_name: str, model: str, beam: int, threads: int, runs: int, audio_path: Path,
                 models_dir: Path) -> dict[str, Any]:
    import numpy as np

    from bench.subs import SPEECH_TEXT
    from shared.asr.audio import SAMPLE_RATE_HZ
    from shared.asr.resource import engine_for
    from shared.settings import load_settings
    from tests.speech import word_error_rate

    engine_name, _, weights = engine_name.partition(":")
    settings = load_settings({}, asr_engine=engine_name, asr_whispercpp_weights=weights or "f16", asr_model=model,
                             asr_beam_size=beam, asr_device="cpu", asr_cpu_threads=threads,
                             asr_models_dir=str(models_dir))
    began = time.perf_counter()
    engine = engine_for(settings)
    load_sec = time.perf_counter() - began
    audio = np.fromfile(audio_path, dtype=np.float32)
    audio_sec = len(audio) / SAMPLE_RATE_HZ
    await engine.transcribe(audio[: 10 * SAMPLE_RATE_HZ], "en")  # warm-up
    times, wers = [], []
    for _ in range(runs):
        began = time.perf_counter()
        transcript = await engine.transcribe(audio, "en")
        times.append(time.perf_counter() - began)
        wers.append(word_error_rate(" ".join(SPEECH_TEXT), " ".join(w.word for w in transcript.words)))
    return {
        "engine": f"{engine_name} {weights}".strip(), "model": model, "beam": beam, "threads": threads,
        "audio_sec": round(audio_sec, 1),
        "load_sec": round(load_sec, 2),
        "median_sec": round(statistics.median(times), 2), "x_real_time": round(audio_sec / statistics.median(times), 2),
        "wer": round(statistics.median(wers), 4), "peak_rss_mb": round(_status_mb("VmHWM")),
        "rss_after_mb": round(_status_mb("VmRSS")), "runs": runs,
    }


def convert(engine: str, model: str, models_dir: Path) -> float:
    """The one-time ggml conversion, in this (parent) process so the engine's own RSS excludes it; seconds."""
    name, _, weights = engine.partition(":")
    if name != "whisper.cpp":
        return 0.0
    from shared.asr.ggml import ggml_model
    from shared.asr.models import resolve_model

    ref = resolve_model(model, models_dir)
    began = time.perf_counter()
    ggml_model(ref.path, ref.name, models_dir, weights or "f16")
    return time.perf_counter() - began


def make_audio(folder: Path) -> Path:
    """The benchmark's speech as 16 kHz mono float32 (once)."""
    import numpy as np

    from bench.subs import SPEECH_TEXT
    from shared.asr.audio import read_audio
    from shared.media.speech import make_speech_video

    target = folder / "speech.f32"
    if not target.is_file():
        video = make_speech_video(folder / "speech.mp4", SPEECH_TEXT, offset_sec=1.0, gap_sec=1.0, seconds=60,
                                  size="320x180")
        audio = asyncio.run(read_audio(str(video.path), start_sec=0.0, duration_sec=60.0))
        np.asarray(audio, dtype=np.float32).tofile(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--audio", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--models-dir", type=Path, default=DATA / "asr-models")
    args = parser.parse_args()
    if args.child:
        row = asyncio.run(_child(args.child[0], args.child[1], args.beam, args.threads, args.runs, args.audio,
                                 args.models_dir))
        print(json.dumps(row), flush=True)
        return
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA) as work:
        audio = make_audio(Path(work))
        rows = []
        for model in args.models:
            for engine in args.engines:
                convert_sec = convert(engine, model, args.models_dir)
                out = subprocess.run(
                    [sys.executable, "-m", "bench.asr_engines", "--child", engine, model, "--beam", str(args.beam),
                     "--threads", str(args.threads), "--runs", str(args.runs), "--audio", str(audio),
                     "--models-dir", str(args.models_dir)],
                    capture_output=True, text=True, check=True,
                ).stdout
                rows.append({**json.loads(out.strip().splitlines()[-1]), "convert_sec": round(convert_sec, 2)})
                print(json.dumps(rows[-1]), flush=True)
    print("\n| engine | model | beam | threads | audio s | x real time | WER | peak RSS MB | load s | ggml convert s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['model']} | {r['beam']} | {r['threads']} | {r['audio_sec']} | {r['x_real_time']} "
              f"| {r['wer']:.1%} | {r['peak_rss_mb']} | {r['load_sec']} | {r['convert_sec'] or '-'} |")


if __name__ == "__main__":
    main()
