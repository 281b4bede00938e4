"""A canceled CPU transcription stops its thread at the next segment, not at the end of the clip: a thread
cannot be killed, so the engine tells it to stop (shared/asr/engine.py)."""

from __future__ import annotations

import asyncio
import sys
import time

import numpy as np
import pytest

from shared.asr.audio import read_audio
from shared.asr.engine import AsrEngine
from shared.asr.resource import engine_for
from shared.settings import load_settings
from tests.speech import SpeechVideo

REPEATS = 6  # the 15 s of speech, 6 times: 90 s of audio, several decoding windows
WAIT_SEC = 120.0


@pytest.fixture(scope="module")
def tiny_engine() -> AsrEngine:
    return engine_for(load_settings({}, asr_model="tiny.en", asr_beam_size=1, asr_device="cpu"))


def transcribing() -> bool:
    """Whether some thread of this process is inside the engine's transcription now."""
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code.co_name == "_transcribe_sync":
                return True
            frame = frame.f_back
    return False


async def test_a_canceled_transcription_stops_its_thread(tiny_engine: AsrEngine, speech_video: SpeechVideo) -> None:
    audio = np.tile(await read_audio(str(speech_video.path), start_sec=5.0, duration_sec=15.0), REPEATS)
    first, loop = asyncio.Event(), asyncio.get_running_loop()
    reported: list[float] = []  # when the thread reported progress (after each decoded segment)

    def on_progress(_: float) -> None:  # called in the transcription's thread
        reported.append(time.monotonic())
        loop.call_soon_threadsafe(first.set)

    work = asyncio.create_task(tiny_engine.transcribe(audio, "en", on_progress))
    async with asyncio.timeout(WAIT_SEC):
        await first.wait()  # the first window's segments are out: the thread is decoding the next
    work.cancel()
    canceled = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await work
    async with asyncio.timeout(WAIT_SEC):
        while True:
            if not transcribing():
                break
            await asyncio.sleep(0.05)
    later = [round(t - canceled, 2) for t in reported if t > canceled]
    print(f"thread gone {time.monotonic() - canceled:.2f} s after the cancel; progress after it: {later}")
    assert later == []  # it stopped at its next segment, not at the end of the clip
