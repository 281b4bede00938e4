"""Real speech made on this machine (Debian espeak-ng) in a generated video: the subtitle tests' and benchmarks'
media. espeak-ng reads known sentences, placed at a known offset with known silences between them."""

from __future__ import annotations

import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOOL_TIMEOUT_SEC = 120
AUDIO_RATE_HZ = 48_000
ONSET_LEVEL = 0.02  # |sample| above this (full scale 1.0) counts as speech
VOICE, WORDS_PER_MIN = "en-us", 150
SPEECH_SENTENCES = (
    "Good morning everyone, and welcome to the weekly meeting of the garden club.",
    "Today we will talk about the new library, the budget for next year, and 3 small changes to the website.",
)


@dataclass(frozen=True)
class SpeechVideo:
    """A generated video with speech: where each sentence's sound starts and ends, in source seconds."""

    path: Path
    sentences: tuple[str, ...]
    spans: tuple[tuple[float, float], ...]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def _speak(text: str, path: Path, voice: str = VOICE) -> tuple[float, float]:
    """espeak-ng → WAV; returns (first sound, last sound) in seconds."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(WORDS_PER_MIN), "-w", str(path), text],
                   check=True, capture_output=True, timeout=TOOL_TIMEOUT_SEC)
    with wave.open(str(path)) as wav:
        rate, frames = wav.getframerate(), wav.readframes(wav.getnframes())
    samples = np.abs(np.frombuffer(frames, dtype=np.int16).astype(np.float32) / 32768)
    loud = np.flatnonzero(samples > ONSET_LEVEL)
    return float(loud[0] / rate), float(loud[-1] / rate)


def make_speech_video(
    path: Path, sentences: tuple[str, ...], *, offset_sec: float, gap_sec: float, seconds: float,
    size: str = "320x180", voice: str = VOICE,
) -> SpeechVideo:
    """H.264 (keyframe every 2 s, 30 fps) + AAC: silence, then each sentence `gap_sec` after the previous,
    read by the espeak-ng `voice` (e.g. "es" for Spanish)."""
    inputs: list[str] = []
    chains: list[str] = []
    spans: list[tuple[float, float]] = []
    at = offset_sec
    for i, sentence in enumerate(sentences):
        wav = path.with_name(f"{path.stem}-{i}.wav")
        first, last = _speak(sentence, wav, voice)
        inputs += ["-i", str(wav)]
        chains.append(f"[{i + 1}:a]aresample={AUDIO_RATE_HZ},adelay={round(at * 1000)}:all=1[s{i}]")
        spans.append((round(at + first, 3), round(at + last, 3)))
        at += last + gap_sec
    mix = "".join(f"[s{i}]" for i in range(len(sentences)))
    graph = ";".join([*chains, f"{mix}amix=inputs={len(sentences)}:normalize=0,apad,atrim=0:{seconds}[a]"])
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30:duration={seconds}",
         *inputs, "-filter_complex", graph, "-map", "0:v", "-map", "[a]", "-c:v", "libx264", "-preset", "ultrafast",
         "-pix_fmt", "yuv420p", "-g", "60", "-keyint_min", "60", "-sc_threshold", "0", "-bf", "0",
         "-c:a", "aac", "-b:a", "96k", "-ar", str(AUDIO_RATE_HZ), "-movflags", "+faststart", str(path)],
        check=True, capture_output=True, timeout=TOOL_TIMEOUT_SEC,
    )
    return SpeechVideo(path, sentences, tuple(spans))
